"""Input checks shared by the SD-MAD multi-label metrics.

All metrics in :mod:`sdmad_monai.metrics` work on per-image, per-category values: predictions and labels are
``batch-first`` tensors of shape ``[B, K]`` (``K`` anomaly categories), or lists of ``channel-first`` ``[K]``
tensors as produced by :func:`monai.data.decollate_batch`.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import Cumulative

__all__ = ["accumulated_buffer", "as_binary_multilabel_pair", "as_multilabel_pair", "check_binary", "non_binary_values"]

_MAX_SHOWN = 8


def non_binary_values(x: torch.Tensor) -> list:
    """Return the sorted distinct values of ``x`` that are neither 0 nor 1 (NaN included).

    Args:
        x: tensor of any shape and dtype.

    Returns:
        A Python list of the offending values; empty when ``x`` is binary (or boolean).
    """
    if x.dtype == torch.bool or x.numel() == 0:
        return []
    values = torch.unique(x.detach())
    bad = values[(values != 0) & (values != 1)]  # NaN compares unequal to both and is kept
    return bad.tolist()


def check_binary(x: torch.Tensor, arg_name: str, metric_name: str) -> None:
    """Raise a ``ValueError`` naming the offending values when ``x`` is not made of 0/1 only.

    Args:
        x: tensor to check.
        arg_name: argument name shown in the message, e.g. ``"y"``.
        metric_name: metric name shown in the message.

    Raises:
        ValueError: When ``x`` holds a value other than 0 and 1.
    """
    bad = non_binary_values(x)
    if bad:
        shown = ", ".join(f"{v:.6g}" for v in bad[:_MAX_SHOWN]) + (", ..." if len(bad) > _MAX_SHOWN else "")
        raise ValueError(
            f"{metric_name}: `{arg_name}` must be binary (0/1 or bool), got non-binary value(s) [{shown}]"
            + (" (threshold the scores first, e.g. with AsDiscrete(threshold=...))." if arg_name == "y_pred" else ".")
        )


def as_multilabel_pair(
    y_pred: torch.Tensor, y: torch.Tensor | None, metric_name: str, num_categories: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and normalise a ``(y_pred, y)`` pair to ``[B, K]`` tensors.

    A 1-D input ``[B]`` is read as ``K = 1`` (``[B, 1]``), following MONAI's batch-first convention.

    Args:
        y_pred: predictions, ``[B, K]`` or ``[B]``.
        y: labels, same shape as ``y_pred``.
        metric_name: metric name shown in error messages.
        num_categories: expected ``K`` if known (e.g. from ``category_names``).

    Returns:
        ``(y_pred, y)`` as ``[B, K]`` tensors on the same device as ``y_pred``.

    Raises:
        ValueError: When ``y`` is missing, a tensor is not 1-D/2-D, the shapes differ,
            or ``K`` differs from ``num_categories``.
    """
    if y is None:
        raise ValueError(f"{metric_name}: ground truth `y` is required.")
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{metric_name}: y_pred and y must be torch Tensors, got {type(y_pred)} and {type(y)}.")
    for name, t in (("y_pred", y_pred), ("y", y)):
        if t.ndim not in (1, 2):
            raise ValueError(
                f"{metric_name}: `{name}` must be batch-first [B, K] (or [B] for K=1), got shape {tuple(t.shape)}."
            )
    if y_pred.ndim == 1:
        y_pred = y_pred.unsqueeze(1)
    if y.ndim == 1:
        y = y.unsqueeze(1)
    if y_pred.shape != y.shape:
        raise ValueError(
            f"{metric_name}: y_pred and y must have the same shape [B, K], "
            f"got y_pred shape {tuple(y_pred.shape)} and y shape {tuple(y.shape)}."
        )
    if num_categories is not None and y_pred.shape[1] != num_categories:
        raise ValueError(
            f"{metric_name}: expected K={num_categories} categories (len(category_names)), "
            f"got y_pred shape {tuple(y_pred.shape)} and y shape {tuple(y.shape)}."
        )
    return y_pred, y.to(y_pred.device)


def as_binary_multilabel_pair(
    y_pred: torch.Tensor, y: torch.Tensor | None, metric_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`as_multilabel_pair` for thresholded predictions: both tensors must also be binary (:func:`check_binary`).

    Args:
        y_pred: binary predictions, ``[B, K]`` or ``[B]``.
        y: binary labels, same shape as ``y_pred``.
        metric_name: metric name shown in error messages.

    Returns:
        ``(y_pred, y)`` as ``[B, K]`` tensors on the same device as ``y_pred``.

    Raises:
        ValueError: the errors of :func:`as_multilabel_pair`, or a tensor that is not binary.
    """
    y_pred, y = as_multilabel_pair(y_pred, y, metric_name)
    check_binary(y_pred, "y_pred", metric_name)
    check_binary(y, "y", metric_name)
    return y_pred, y


def accumulated_buffer(metric: Cumulative) -> Any:
    """What a cumulative metric has buffered (``metric.get_buffer()``: one tensor, or a list for several buffers).

    Args:
        metric: a MONAI ``Cumulative`` (e.g. a ``CumulativeIterationMetric``); its class names it in the error.

    Returns:
        the synchronised buffer(s).

    Raises:
        ValueError: When nothing has been accumulated yet.
    """
    buffer = metric.get_buffer()
    if buffer is None:
        raise ValueError(f"{metric.__class__.__name__}: no data accumulated, call the metric before aggregate().")
    return buffer
