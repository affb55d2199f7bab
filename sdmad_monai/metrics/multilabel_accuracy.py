"""Thresholded multi-label accuracy metrics: Hamming score and subset (exact-match) accuracy.

Both take the binary per-category decisions of SD-MAD (Eq. 8) as ``y_pred`` and the multi-hot ground truth as
``y``, each ``[B, K]``. Only a tiny per-image result is buffered, so they stream over any number of images.
"""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from .utils import accumulated_buffer, as_binary_multilabel_pair

__all__ = ["HammingScoreMetric", "SubsetAccuracyMetric", "compute_hamming_score", "compute_subset_accuracy"]


def compute_hamming_score(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Element-wise correctness of binary multi-label predictions.

    Args:
        y_pred: binary predictions ``[B, K]`` (or ``[B]`` for ``K = 1``), values 0/1 or bool.
        y: binary multi-hot labels, same shape as ``y_pred``.

    Returns:
        Float tensor ``[B, K]``, 1 where the prediction equals the label and 0 elsewhere. Its mean over all
        ``B x K`` entries is the Hamming score, ``1 - hamming_loss``.

    Raises:
        ValueError: When the shapes differ or a tensor is not binary.
    """
    y_pred, y = as_binary_multilabel_pair(y_pred, y, "HammingScoreMetric")
    return (y_pred.bool() == y.bool()).float()


def compute_subset_accuracy(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact-match indicator of binary multi-label predictions (all ``K`` labels right).

    Args:
        y_pred: binary predictions ``[B, K]`` (or ``[B]`` for ``K = 1``), values 0/1 or bool.
        y: binary multi-hot labels, same shape as ``y_pred``.

    Returns:
        Float tensor ``[B, 1]``, 1 for images whose ``K`` predictions all equal the labels, else 0.

    Raises:
        ValueError: When the shapes differ or a tensor is not binary.
    """
    y_pred, y = as_binary_multilabel_pair(y_pred, y, "SubsetAccuracyMetric")
    return (y_pred.bool() == y.bool()).all(dim=1, keepdim=True).float()


class _ReducedMultiLabelMetric(CumulativeIterationMetric):
    """Shared ``aggregate`` for per-image buffers reduced with :func:`monai.metrics.utils.do_metric_reduction`."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered per-image values.

        Args:
            reduction: overrides ``self.reduction`` for this call, see ``__init__``.

        Returns:
            The reduced metric, and the count of not-NaN values when ``get_not_nans`` is True.

        Raises:
            ValueError: When nothing has been accumulated yet.
        """
        data = accumulated_buffer(self).to(torch.float64)
        reduction = reduction or self.reduction
        if MetricReduction(reduction) == MetricReduction.MEAN:
            # one float64 mean of the 0/1 values (MONAI's "mean" averages float32 row means): exact, so the result does
            # not depend on the order of the buffered rows (one process, or several gathered in rank order)
            valid = ~torch.isnan(data)
            not_nans = valid.sum().reshape(1).to(torch.float64)
            f = torch.where(not_nans > 0, data.nan_to_num(0.0).sum() / not_nans, torch.zeros_like(not_nans))
        else:
            f, not_nans = do_metric_reduction(data, reduction)
        return (f, not_nans) if self.get_not_nans else f


class HammingScoreMetric(_ReducedMultiLabelMetric):
    """Label-wise accuracy of binary multi-label predictions: ``1 - Hamming loss``.

    The mean over all ``N x K`` (image, category) entries of ``[y_pred == y]``, i.e.
    ``1 - sklearn.metrics.hamming_loss(y, y_pred)``. Each call buffers the ``[B, K]`` correctness matrix.
    ``y_pred`` and ``y`` can be ``batch-first`` ``[B, K]`` tensors or lists of ``channel-first`` ``[K]`` tensors.

    Example:

    .. code-block:: python

        metric = HammingScoreMetric()
        for batch in loader:
            metric(y_pred=binary_preds, y=batch["label"])  # [B, K] each
        score = metric.aggregate().item()
        per_category_accuracy = metric.aggregate(reduction="mean_batch")  # [K]
        metric.reset()

    Args:
        reduction: reduction over the buffered ``[N, K]`` correctness matrix, one of ``{"none", "mean", "sum",
            "mean_batch", "sum_batch", "mean_channel", "sum_channel"}``. ``"mean"`` (default) gives the Hamming
            score, ``"mean_batch"`` the per-category accuracy ``[K]``, ``"mean_channel"`` the per-image score ``[N]``.
        get_not_nans: whether ``aggregate`` also returns the number of not-NaN entries.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Return the ``[B, K]`` correctness of binary ``y_pred`` ``[B, K]`` against binary ``y`` ``[B, K]``."""
        if y is None:
            raise ValueError("HammingScoreMetric: ground truth `y` is required.")
        return compute_hamming_score(y_pred, y)


class SubsetAccuracyMetric(_ReducedMultiLabelMetric):
    """Exact-match ratio of binary multi-label predictions (subset accuracy).

    The fraction of images whose ``K`` binary predictions all equal their labels, i.e.
    ``sklearn.metrics.accuracy_score(y, y_pred)`` on multi-label indicator arrays. Each call buffers a ``[B, 1]``
    exact-match indicator. ``y_pred`` and ``y`` can be ``batch-first`` ``[B, K]`` tensors or lists of
    ``channel-first`` ``[K]`` tensors.

    Args:
        reduction: reduction over the buffered ``[N, 1]`` indicators, see :class:`HammingScoreMetric`.
            ``"mean"`` (default) gives the subset accuracy, ``"none"`` the per-image indicators.
        get_not_nans: whether ``aggregate`` also returns the number of not-NaN entries.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Return the ``[B, 1]`` exact-match indicator of binary ``y_pred`` ``[B, K]`` against ``y`` ``[B, K]``."""
        if y is None:
            raise ValueError("SubsetAccuracyMetric: ground truth `y` is required.")
        return compute_subset_accuracy(y_pred, y)
