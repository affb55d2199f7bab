"""Pixel-level AUROC of anomaly maps against anomaly masks, streamed through fixed-bin histograms.

The paper's protocol 1 (Section 4.2, Table 1) reports pixel AUROC over every pixel of every test image: on BMAD that
is ``240 x 240`` pixels times thousands of slices, too many scores to keep and sort. :class:`PixelAUROCMetric`
keeps instead two histograms over a known score range ``[low, high]`` split into ``num_bins`` equal bins: the counts
of positive (anomalous) and negative (normal) pixels per bin, added to on every batch. Its memory is ``2 x num_bins``
64-bit integers whatever the number of batches or pixels.

AUROC from the histograms (:func:`histogram_auroc`) is the Mann-Whitney statistic with every pair of pixels that
fall in the same bin counted as a tie (1/2):

``AUROC = sum_b pos_b (neg_<b + neg_b / 2) / (P N)``

with ``pos_b``/``neg_b`` the counts in bin ``b``, ``neg_<b`` the negatives in lower bins and ``P``/``N`` the totals.

Binning error: only (positive, negative) pairs in the same bin can be ordered wrongly, and each such pair is counted
1/2 instead of 0 or 1, so ``|AUROC_hist - AUROC_exact| <= sum_b pos_b neg_b / (2 P N)``
(:func:`histogram_auroc_error_bound`, returned by :meth:`PixelAUROCMetric.error_bound` for the data seen). The
result is exact when all scores in one bin are equal (e.g. scores on the bin centres), and the bound shrinks as
``num_bins`` grows; with the default 10,000 bins over ``[0, 1]`` the bin width is ``1e-4``. Scores outside
``[low, high]`` are counted in the first or last bin (they still rank correctly against scores inside the range,
but tie with each other) and reported with a warning at :meth:`~PixelAUROCMetric.aggregate`.
"""

from __future__ import annotations

import warnings

import torch
from monai.metrics import CumulativeIterationMetric

from .utils import accumulated_buffer, check_binary

__all__ = [
    "PixelAUROCMetric",
    "histogram_auroc",
    "histogram_auroc_error_bound",
    "histogram_average_precision",
    "histogram_best_dice",
    "pixel_histograms",
]


def pixel_histograms(
    y_pred: torch.Tensor, y: torch.Tensor, low: float, high: float, num_bins: int
) -> tuple[torch.Tensor, int]:
    """Counts of negative and positive pixel scores per bin.

    Args:
        y_pred: pixel scores of any shape, higher means more anomalous.
        y: binary pixel labels with the shape of ``y_pred``.
        low: lower end of the binned range.
        high: upper end of the binned range.
        num_bins: number of equal-width bins over ``[low, high]``.

    Returns:
        ``(counts [2, num_bins] int64, clipped)``: row 0 negatives, row 1 positives; ``clipped`` is the number of
        scores outside ``[low, high]`` that were put in the end bins.
    """
    scores = y_pred.detach().reshape(-1).to(torch.float64)
    positive = y.detach().reshape(-1).to(device=scores.device).bool()
    clipped = int(((scores < low) | (scores > high)).sum())
    index = torch.floor((scores - low) * (num_bins / (high - low))).clamp_(0, num_bins - 1).long()
    index = index + num_bins * positive.long()
    counts = torch.bincount(index, minlength=2 * num_bins)
    return counts.view(2, num_bins), clipped


def histogram_auroc(counts: torch.Tensor) -> torch.Tensor:
    """AUROC from per-bin negative/positive counts, same-bin pairs counted as ties (module docstring).

    Args:
        counts: ``[2, num_bins]`` counts: row 0 negatives, row 1 positives, bins in increasing score order.

    Returns:
        0-d float64 tensor; NaN when there is no positive or no negative (no warning here).
    """
    neg, pos = counts[0].to(torch.float64), counts[1].to(torch.float64)
    total_neg, total_pos = neg.sum(), pos.sum()
    if total_neg == 0 or total_pos == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=counts.device)
    below = torch.cumsum(neg, dim=0) - neg
    return (pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg)


def histogram_auroc_error_bound(counts: torch.Tensor) -> torch.Tensor:
    """Largest possible difference between :func:`histogram_auroc` and the exact AUROC of the binned scores.

    Args:
        counts: ``[2, num_bins]`` counts as in :func:`histogram_auroc`.

    Returns:
        0-d float64 tensor ``sum_b pos_b neg_b / (2 P N)``; NaN when a class is missing.
    """
    neg, pos = counts[0].to(torch.float64), counts[1].to(torch.float64)
    total_neg, total_pos = neg.sum(), pos.sum()
    if total_neg == 0 or total_pos == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=counts.device)
    return (pos * neg).sum() / (2.0 * total_pos * total_neg)


def _descending_totals(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """True and false positives when every pixel in bin ``b`` or above is called anomalous, for each ``b`` from the
    highest bin down, and the totals ``P``, ``N``."""
    neg, pos = counts[0].to(torch.float64).flip(0), counts[1].to(torch.float64).flip(0)
    return torch.cumsum(pos, 0), torch.cumsum(neg, 0), pos.sum(), neg.sum()


def histogram_average_precision(counts: torch.Tensor) -> torch.Tensor:
    """Average precision (MedIAnomaly's pixel AP) from per-bin counts, each bin one threshold:
    ``AP = sum_t (R_t - R_{t-1}) P_t`` over thresholds from the highest bin down (scikit-learn's step definition;
    equal to ``average_precision_score`` when the scores of one bin are equal).

    Args:
        counts: ``[2, num_bins]`` counts as in :func:`histogram_auroc`.

    Returns:
        0-d float64 tensor; NaN when there is no positive.
    """
    tp, fp, total_pos, _ = _descending_totals(counts)
    if total_pos == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=counts.device)
    called = tp + fp
    precision = torch.where(called > 0, tp / called.clamp(min=1), torch.ones_like(tp))
    recall_gain = torch.diff(tp, prepend=tp.new_zeros(1)) / total_pos
    return (recall_gain * precision).sum()


def histogram_best_dice(counts: torch.Tensor, low: float = 0.0, high: float = 1.0) -> tuple[torch.Tensor, float]:
    """The best Dice over thresholds (MedIAnomaly's "best Dice" on BraTS): over all pixels, for every bin edge as
    threshold, ``2 TP / (2 TP + FP + FN)``; the maximum and its threshold.

    Args:
        counts: ``[2, num_bins]`` counts as in :func:`histogram_auroc`.
        low: the score range's lower end (to report the threshold).
        high: its upper end.

    Returns:
        ``(0-d float64 Dice, threshold)``: pixels with a score in the threshold's bin or above are anomalous; NaN and
        ``nan`` when there is no positive.
    """
    tp, fp, total_pos, _ = _descending_totals(counts)
    if total_pos == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=counts.device), float("nan")
    dice = 2 * tp / (2 * tp + fp + (total_pos - tp))
    best = int(torch.argmax(dice))
    num_bins = counts.shape[1]
    return dice[best], low + (num_bins - 1 - best) * (high - low) / num_bins


class PixelAUROCMetric(CumulativeIterationMetric):
    """Pixel AUROC of anomaly maps against binary anomaly masks, in bounded memory (see the module docstring).

    Each call adds the batch's pixels to two running histograms; nothing per image is kept, so memory is
    ``2 x num_bins`` integers however many slices are evaluated. Under ``torch.distributed`` the per-rank
    histograms are gathered and summed by :meth:`aggregate`.

    ``y_pred`` and ``y`` are ``batch-first`` tensors or lists of ``channel-first`` tensors:

    - ``y_pred``: ``[B, H, W]`` or ``[B, 1, H, W]`` anomaly maps, higher means more anomalous;
    - ``y``: ``[B, H, W]`` or ``[B, 1, H, W]`` binary masks (1 = anomalous pixel), same spatial size.

    Example:

    .. code-block:: python

        metric = PixelAUROCMetric(score_range=(0.0, 1.0))
        for batch in loader:
            metric(y_pred=maps, y=batch["mask"])  # [B, H, W] and [B, 1, H, W]
        auroc = metric.aggregate().item()
        bound = metric.error_bound().item()  # |auroc - exact AUROC| <= bound
        metric.reset()

    Args:
        score_range: ``(low, high)`` range of the map values that is binned; scores outside are put in the end bins
            (counted and warned about).
        num_bins: number of equal-width bins (default 10,000).

    Raises:
        ValueError: When ``score_range`` is not increasing and finite or ``num_bins < 2``.
    """

    def __init__(self, score_range: tuple[float, float] = (0.0, 1.0), num_bins: int = 10_000) -> None:
        super().__init__()
        low, high = (float(v) for v in score_range)
        if not (torch.isfinite(torch.tensor([low, high])).all() and high > low):
            raise ValueError(f"PixelAUROCMetric: score_range must be finite with low < high, got {tuple(score_range)}.")
        if isinstance(num_bins, bool) or int(num_bins) != num_bins or int(num_bins) < 2:
            raise ValueError(f"PixelAUROCMetric: num_bins must be an integer >= 2, got {num_bins!r}.")
        self.score_range = (low, high)
        self.num_bins = int(num_bins)
        self.clipped = 0

    def reset(self) -> None:
        super().reset()
        self.clipped = 0

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Check one batch and return its counts ``[1, 2 * num_bins]`` (negatives then positives)."""
        name = self.__class__.__name__
        if y is None:
            raise ValueError(f"{name}: the ground-truth mask `y` is required.")
        pred = y_pred[:, 0] if y_pred.ndim == 4 and y_pred.shape[1] == 1 else y_pred
        mask = y[:, 0] if y.ndim == 4 and y.shape[1] == 1 else y
        if pred.ndim != 3 or pred.shape != mask.shape:
            raise ValueError(
                f"{name}: expected anomaly maps and masks [B, H, W] or [B, 1, H, W] of the same size, got y_pred "
                f"shape {tuple(y_pred.shape)} and y shape {tuple(y.shape)} (resize the mask to the map size first)."
            )
        check_binary(mask, "y", name)
        if torch.isnan(pred).any():
            raise ValueError(f"{name}: `y_pred` contains NaN pixel scores, AUROC is undefined.")
        counts, clipped = pixel_histograms(pred, mask, *self.score_range, self.num_bins)
        self.clipped += clipped
        return counts.reshape(1, -1)

    def extend(self, *data: torch.Tensor) -> None:
        """Add a batch's counts to the single running histogram (instead of buffering one entry per batch)."""
        counts = data[0].sum(dim=0)
        if self._buffers is None:
            self._buffers = [[counts]]
        else:
            self._buffers[0][0] = self._buffers[0][0] + counts
        self._synced = False

    def counts(self) -> torch.Tensor:
        """The accumulated ``[2, num_bins]`` counts (row 0 negatives, row 1 positives), summed over ranks.

        Raises:
            ValueError: When nothing has been accumulated yet.
        """
        buffer = accumulated_buffer(self)
        return buffer.reshape(-1, 2, self.num_bins).sum(dim=0)

    def aggregate(self) -> torch.Tensor:
        """Pixel AUROC over all accumulated pixels.

        Returns:
            0-d float64 tensor; NaN with a warning when all pixels are normal or all anomalous.

        Raises:
            ValueError: When nothing has been accumulated yet.
        """
        counts = self.counts()
        if self.clipped:
            warnings.warn(
                f"{self.__class__.__name__}: {self.clipped} pixel score(s) fell outside score_range "
                f"{self.score_range} and were counted in the end bins; widen score_range for an exact ranking.",
                stacklevel=2,
            )
        auc = histogram_auroc(counts)
        if torch.isnan(auc):
            kind = "anomalous" if bool(counts[1].sum()) else "normal"
            warnings.warn(
                f"{self.__class__.__name__}: pixel AUROC is undefined, all {int(counts.sum())} pixels are {kind} "
                "(no anomaly mask, or only anomalous pixels); returning NaN.",
                stacklevel=2,
            )
        return auc

    def error_bound(self) -> torch.Tensor:
        """Upper bound of ``|aggregate() - exact AUROC|`` for the accumulated pixels (module docstring)."""
        return histogram_auroc_error_bound(self.counts())

    def average_precision(self) -> torch.Tensor:
        """Pixel average precision of the accumulated pixels (:func:`histogram_average_precision`)."""
        return histogram_average_precision(self.counts())

    def best_dice(self) -> tuple[torch.Tensor, float]:
        """Best Dice over thresholds of the accumulated pixels and its threshold (:func:`histogram_best_dice`)."""
        return histogram_best_dice(self.counts(), *self.score_range)
