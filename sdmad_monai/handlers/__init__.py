"""Ignite handlers: thin wrappers of the SD-MAD metrics, the anchor-loss logger and the protocol report."""

from .anchor_loss import AnchorLossLogger
from .anomaly_maps import AnomalyMapOverlays, DetectionReport
from .auroc import CategoryAUROC, ImageAUROC
from .multilabel_accuracy import HammingScore, SubsetAccuracy
from .pixel_auroc import PixelAUROC
from .progress import LossProgressBar
from .report import ProtocolReport, protocol_metrics
from .resume import ResumeCheckpoint
from .utils import detector_output

__all__ = [
    "AnchorLossLogger",
    "AnomalyMapOverlays",
    "CategoryAUROC",
    "DetectionReport",
    "HammingScore",
    "ImageAUROC",
    "LossProgressBar",
    "PixelAUROC",
    "ProtocolReport",
    "ResumeCheckpoint",
    "SubsetAccuracy",
    "detector_output",
    "protocol_metrics",
]
