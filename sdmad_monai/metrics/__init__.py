"""Multi-label anomaly-detection metrics (MONAI ``CumulativeIterationMetric`` subclasses) for SD-MAD."""

from .auroc import CategoryAUROCMetric, ImageAUROCMetric, average_ranks, binary_auroc, compute_auroc
from .multilabel_accuracy import (
    HammingScoreMetric,
    SubsetAccuracyMetric,
    compute_hamming_score,
    compute_subset_accuracy,
)

__all__ = [
    "CategoryAUROCMetric",
    "HammingScoreMetric",
    "ImageAUROCMetric",
    "SubsetAccuracyMetric",
    "average_ranks",
    "binary_auroc",
    "compute_auroc",
    "compute_hamming_score",
    "compute_subset_accuracy",
]
