"""Ignite handlers for the SD-MAD AUROC metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import Average

from sdmad_monai.metrics import CategoryAUROCMetric, ImageAUROCMetric

__all__ = ["CategoryAUROC", "ImageAUROC"]


class CategoryAUROC(IgniteMetricHandler):
    """Per-category AUROC of continuous multi-label scores, accumulated over an epoch.

    Wraps :class:`sdmad_monai.metrics.CategoryAUROCMetric`: ``engine.state.metrics[name]`` is a float for the
    averages and a ``[K]`` tensor for ``average="none"``.

    Args:
        average: {``"macro"``, ``"weighted"``, ``"micro"``, ``"none"``}, defaults to ``"macro"``, the mean of the
            per-category AUROCs whose labels hold both classes; ``"none"`` gives the per-category values.
        category_names: optional ``K`` category names, used in the warning for an undefined category.
        output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``; ``y_pred`` (scores)
            and ``y`` (binary multi-hot) are ``batch-first`` ``[B, K]`` tensors or lists of ``channel-first``
            ``[K]`` tensors.
        save_details: whether to save the buffered ``[scores [N, K], labels [N, K]]`` to
            ``engine.state.metric_details`` under the metric name. Defaults to False, like ``monai.handlers.ROCAUC``.
    """

    def __init__(
        self,
        average: Average | str = Average.MACRO,
        category_names: Sequence[str] | None = None,
        output_transform: Callable = lambda x: x,
        save_details: bool = False,
    ) -> None:
        metric_fn = CategoryAUROCMetric(average=average, category_names=category_names)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class ImageAUROC(IgniteMetricHandler):
    """Normal-vs-abnormal AUROC of an image anomaly score, accumulated over an epoch.

    Wraps :class:`sdmad_monai.metrics.ImageAUROCMetric`; an image is abnormal when any category label is positive.

    Args:
        output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``; ``y_pred`` is a
            ``[B]``/``[B, 1]`` score and ``y`` a ``[B]``/``[B, 1]`` binary or ``[B, K]`` multi-hot label
            (or lists of the per-image tensors).
        save_details: whether to save the buffered ``[scores [N], abnormal [N]]`` to
            ``engine.state.metric_details`` under the metric name. Defaults to False.
    """

    def __init__(self, output_transform: Callable = lambda x: x, save_details: bool = False) -> None:
        metric_fn = ImageAUROCMetric()
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
