"""Ignite handlers: thin wrappers of the SD-MAD metrics, the anchor-loss logger and the protocol report."""

from .anchor_loss import AnchorLossLogger
from .anomaly_maps import AnomalyMapOverlays, DetectionReport
from .auroc import CategoryAUROC, ImageAUROC
from .checkpoint_loader import DetectorCheckpointLoader
from .memory_bank import MemoryBankBuilder
from .multilabel_accuracy import HammingScore, SubsetAccuracy
from .pixel_auroc import PixelAUROC
from .progress import LossProgressBar
from .report import ProtocolReport, protocol_metric_handlers, protocol_metrics
from .resume import ResumeCheckpoint
from .utils import detector_output
from .volume_results import VolumeResultsWriter

__all__ = [
    "AnchorLossLogger",
    "AnomalyMapOverlays",
    "CategoryAUROC",
    "DetectionReport",
    "DetectorCheckpointLoader",
    "HammingScore",
    "ImageAUROC",
    "LossProgressBar",
    "MemoryBankBuilder",
    "PixelAUROC",
    "ProtocolReport",
    "ResumeCheckpoint",
    "SubsetAccuracy",
    "VolumeResultsWriter",
    "detector_output",
    "protocol_metric_handlers",
    "protocol_metrics",
]
