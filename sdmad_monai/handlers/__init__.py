"""Ignite event handlers (``monai.handlers.IgniteMetricHandler`` subclasses) for the SD-MAD metrics."""

from .auroc import CategoryAUROC, ImageAUROC
from .multilabel_accuracy import HammingScore, SubsetAccuracy

__all__ = ["CategoryAUROC", "HammingScore", "ImageAUROC", "SubsetAccuracy"]
