"""Anomaly-detection metrics for SD-MAD (image, multi-label and pixel level), as MONAI
``CumulativeIterationMetric`` subclasses."""

from .auroc import CategoryAUROCMetric, ImageAUROCMetric, average_ranks, binary_auroc, compute_auroc
from .multilabel_accuracy import (
    HammingScoreMetric,
    SubsetAccuracyMetric,
    compute_hamming_score,
    compute_subset_accuracy,
)
from .pixel_auroc import (
    PixelAUROCMetric,
    histogram_auroc,
    histogram_auroc_error_bound,
    histogram_average_precision,
    histogram_best_dice,
    pixel_histograms,
)

__all__ = [
    "CategoryAUROCMetric",
    "HammingScoreMetric",
    "ImageAUROCMetric",
    "PixelAUROCMetric",
    "SubsetAccuracyMetric",
    "average_ranks",
    "binary_auroc",
    "compute_auroc",
    "compute_hamming_score",
    "compute_subset_accuracy",
    "histogram_auroc",
    "histogram_auroc_error_bound",
    "histogram_average_precision",
    "histogram_best_dice",
    "pixel_histograms",
]
