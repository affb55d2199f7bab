"""Ignite handlers: thin wrappers of the SD-MAD metrics, the anchor-loss logger and the protocol report."""

from .anchor_loss import AnchorLossLogger
from .auroc import CategoryAUROC, ImageAUROC
from .multilabel_accuracy import HammingScore, SubsetAccuracy
from .progress import LossProgressBar
from .report import ProtocolReport, protocol_metrics
from .resume import ResumeCheckpoint
from .utils import detector_output

__all__ = [
    "AnchorLossLogger",
    "CategoryAUROC",
    "HammingScore",
    "ImageAUROC",
    "LossProgressBar",
    "ProtocolReport",
    "ResumeCheckpoint",
    "SubsetAccuracy",
    "detector_output",
    "protocol_metrics",
]
