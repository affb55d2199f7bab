"""Rank-based AUROC metrics for SD-MAD: per-category AUROC and normal-vs-abnormal image AUROC.

AUROC is computed in torch from the Mann-Whitney U statistic with average ranks for tied scores, which equals the
trapezoidal ROC area of :func:`sklearn.metrics.roc_auc_score`; scikit-learn is not needed at run time.
The metrics buffer only per-image scores and labels (``K`` floats each), never images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import Average, look_up_option

from .utils import accumulated_buffer, as_multilabel_pair, check_binary

__all__ = ["CategoryAUROCMetric", "ImageAUROCMetric", "average_ranks", "binary_auroc", "compute_auroc"]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their ranks (``scipy.stats.rankdata``).

    Args:
        x: scores ``[N]``.

    Returns:
        float64 ranks ``[N]`` on the device of ``x``.
    """
    sorted_x, order = torch.sort(x, stable=True)
    _, counts = torch.unique_consecutive(sorted_x, return_counts=True)
    ends = torch.cumsum(counts, dim=0).to(torch.float64)  # 1-based rank of the last member of each tie group
    group_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    ranks[order] = torch.repeat_interleave(group_rank, counts)
    return ranks


def binary_auroc(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AUROC of one binary problem, NaN when ``y`` holds a single class (no warning).

    ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, with ``R_pos`` the sum of the average ranks of
    the positive samples: the probability that a random positive scores above a random negative, ties counting 1/2.

    Args:
        y_pred: scores ``[N]``, higher means more likely positive.
        y: binary labels ``[N]`` (0/1 or bool), assumed already checked.

    Returns:
        A 0-d float64 tensor.
    """
    y = y.bool()
    n_pos = int(y.sum().item())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=y_pred.device)
    ranks = average_ranks(y_pred.to(torch.float64))
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _check_scores(y_pred: torch.Tensor, metric_name: str) -> None:
    if torch.isnan(y_pred).any():
        raise ValueError(f"{metric_name}: `y_pred` contains NaN scores, AUROC is undefined.")


def compute_auroc(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    average: Average | str = Average.MACRO,
    category_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Per-category (multi-label) AUROC with MONAI-style averaging.

    A category whose labels hold a single class has an undefined AUROC: it is set to NaN, a warning naming the
    category is issued, and it is left out of the ``"macro"`` / ``"weighted"`` averages (NaN if all are undefined).

    Args:
        y_pred: continuous scores ``[N, K]`` (or ``[N]`` for a single binary problem).
        y: binary multi-hot labels with the same shape as ``y_pred``.
        average: {``"macro"``, ``"weighted"``, ``"micro"``, ``"none"``}, defaults to ``"macro"``.

            - ``"macro"``: unweighted mean of the defined per-category AUROCs.
            - ``"weighted"``: mean of the defined per-category AUROCs weighted by their number of positives.
            - ``"micro"``: one AUROC over all ``N x K`` (score, label) pairs flattened.
            - ``"none"``: the per-category AUROCs ``[K]``.

        category_names: optional ``K`` names used in warnings; categories are named by index otherwise.

    Returns:
        float64 tensor, 0-d for an average, ``[K]`` for ``average="none"``.

    Raises:
        ValueError: When the shapes differ, ``y`` is not binary, ``y_pred`` has NaN, or ``average`` is unknown.
    """
    name = "compute_auroc"
    num = None if category_names is None else len(category_names)
    y_pred, y = as_multilabel_pair(y_pred, y, name, num_categories=num)
    check_binary(y, "y", name)
    _check_scores(y_pred, name)
    average = look_up_option(average, Average)
    y_pred = y_pred.detach().to(torch.float64)
    y = y.detach().bool()

    if average == Average.MICRO:
        auc = binary_auroc(y_pred.flatten(), y.flatten())
        if torch.isnan(auc):
            warnings.warn(
                "micro-averaged AUROC is undefined: all labels belong to one class, returning NaN.", stacklevel=2
            )
        return auc

    num_categories = y_pred.shape[1]
    aucs = torch.stack([binary_auroc(y_pred[:, k], y[:, k]) for k in range(num_categories)])
    for k in torch.nonzero(torch.isnan(aucs)).flatten().tolist():
        cat = f"'{category_names[k]}' (index {k})" if category_names is not None else f"index {k}"
        only = int(y[0, k].item()) if y.shape[0] > 0 else "no"
        warnings.warn(
            f"AUROC of category {cat} is undefined: its labels are all {only} over {y.shape[0]} images; "
            "returning NaN for it and leaving it out of the averages.",
            stacklevel=2,
        )
    if average == Average.NONE:
        return aucs
    valid = ~torch.isnan(aucs)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=aucs.device)
    if average == Average.MACRO:
        return aucs[valid].mean()
    # Average.WEIGHTED
    weights = y.sum(dim=0).to(torch.float64)[valid]
    return (aucs[valid] * weights).sum() / weights.sum()


class CategoryAUROCMetric(CumulativeIterationMetric):
    """Per-category AUROC of continuous multi-label anomaly scores (SD-MAD Eq. 7) and their mean.

    Each call buffers the ``[B, K]`` scores and labels; ``aggregate`` computes the AUROC of every category over all
    accumulated images with :func:`compute_auroc`. ``y_pred`` and ``y`` can be ``batch-first`` ``[B, K]``
    tensors or lists of ``channel-first`` ``[K]`` tensors.

    A category with a single class in the accumulated labels gets NaN with a warning naming it, and is excluded
    from the mean (the mean is NaN only when every category is undefined).

    Example:

    .. code-block:: python

        metric = CategoryAUROCMetric(category_names=["tumor", "edema", "hemorrhage"])
        for batch in loader:
            metric(y_pred=scores, y=batch["label"])  # [B, 3] each
        mean_auroc = metric.aggregate().item()
        per_category = metric.aggregate(average="none")  # tensor [3], ordered as category_names
        metric.reset()

    Args:
        average: {``"macro"``, ``"weighted"``, ``"micro"``, ``"none"``}, the default of ``aggregate``;
            ``"macro"`` (default) is the mean of the defined per-category AUROCs, ``"none"`` returns them all.
            See :func:`compute_auroc`.
        category_names: optional ``K`` category names, checked against ``K`` and used in warnings.
    """

    def __init__(self, average: Average | str = Average.MACRO, category_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.average = look_up_option(average, Average)
        self.category_names = None if category_names is None else list(category_names)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check and return ``(y_pred [B, K], y [B, K])`` for buffering."""
        name = self.__class__.__name__
        num = None if self.category_names is None else len(self.category_names)
        y_pred, y = as_multilabel_pair(y_pred, y, name, num_categories=num)
        check_binary(y, "y", name)
        _check_scores(y_pred, name)
        return (y_pred if y_pred.is_floating_point() else y_pred.float()), y.float()

    def aggregate(self, average: Average | str | None = None) -> torch.Tensor:
        """Compute the AUROC over the buffered scores and labels.

        Args:
            average: overrides ``self.average`` for this call, e.g. ``"none"`` for the per-category values ``[K]``.

        Returns:
            float64 tensor, 0-d for an average, ``[K]`` for ``average="none"``.

        Raises:
            ValueError: When nothing has been accumulated yet.
        """
        buffers = accumulated_buffer(self)
        y_pred, y = buffers
        return compute_auroc(y_pred, y, average=average or self.average, category_names=self.category_names)


class ImageAUROCMetric(CumulativeIterationMetric):
    """Normal-vs-abnormal AUROC of an image-level anomaly score.

    An image is abnormal when any of its ``K`` category labels is positive. Each call buffers one score and one
    binary label per image. ``y_pred`` and ``y`` can be ``batch-first`` tensors or lists of ``channel-first``
    tensors (per-image score ``[]``/``[1]``, labels ``[]``/``[1]``/``[K]``):

    - ``y_pred``: ``[B]`` or ``[B, 1]`` anomaly scores, higher means more abnormal.
    - ``y``: ``[B]`` or ``[B, 1]`` binary abnormality labels, or ``[B, K]`` multi-hot category labels
      reduced with ``any`` over ``K``.

    The result is NaN, with a warning, when all accumulated images are normal or all are abnormal.

    Example:

    .. code-block:: python

        metric = ImageAUROCMetric()
        for batch in loader:
            metric(y_pred=image_scores, y=batch["label"])  # [B] and [B, K]
        auroc = metric.aggregate().item()
        metric.reset()
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check and return ``(score [B], abnormal [B])`` for buffering."""
        name = self.__class__.__name__
        if y is None:
            raise ValueError(f"{name}: ground truth `y` is required.")
        if y_pred.ndim == 2 and y_pred.shape[1] == 1:
            y_pred = y_pred[:, 0]
        if y_pred.ndim != 1:
            raise ValueError(
                f"{name}: `y_pred` must be an image anomaly score [B] or [B, 1], got y_pred shape "
                f"{tuple(y_pred.shape)} and y shape {tuple(y.shape)}; use CategoryAUROCMetric for [B, K] scores."
            )
        if y.ndim not in (1, 2) or y.shape[0] != y_pred.shape[0]:
            raise ValueError(
                f"{name}: `y` must be [B], [B, 1] or multi-hot [B, K] with the batch size of y_pred, "
                f"got y_pred shape {tuple(y_pred.shape)} and y shape {tuple(y.shape)}."
            )
        check_binary(y, "y", name)
        _check_scores(y_pred, name)
        abnormal = y.bool().any(dim=1) if y.ndim == 2 else y.bool()
        return (y_pred if y_pred.is_floating_point() else y_pred.float()), abnormal.to(y_pred.device).float()

    def aggregate(self) -> torch.Tensor:
        """Compute the normal-vs-abnormal AUROC over the buffered scores.

        Returns:
            0-d float64 tensor, NaN (with a warning) when all buffered images are normal or all abnormal.

        Raises:
            ValueError: When nothing has been accumulated yet.
        """
        buffers = accumulated_buffer(self)
        y_pred, y = buffers
        auc = binary_auroc(y_pred.detach().flatten(), y.detach().flatten())
        if torch.isnan(auc):
            kind = "abnormal" if bool(y.any()) else "normal"
            warnings.warn(
                f"{self.__class__.__name__}: image AUROC is undefined, all {y.numel()} images are {kind}; "
                "returning NaN.",
                stacklevel=2,
            )
        return auc
