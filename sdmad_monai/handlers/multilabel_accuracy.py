"""Ignite handlers for the thresholded multi-label accuracy metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import MetricReduction

from sdmad_monai.metrics import HammingScoreMetric, SubsetAccuracyMetric

__all__ = ["HammingScore", "SubsetAccuracy"]


class _ReducedMultiLabelHandler(IgniteMetricHandler):
    """Shared ``__init__`` of the two handlers: ``metric_type(reduction=reduction)`` wrapped for ignite."""

    metric_type: ClassVar[type[HammingScoreMetric] | type[SubsetAccuracyMetric]]

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = self.metric_type(reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class HammingScore(_ReducedMultiLabelHandler):
    """Label-wise accuracy (``1 - Hamming loss``) of binary multi-label predictions, accumulated over an epoch.

    Wraps :class:`sdmad_monai.metrics.HammingScoreMetric`.

    Args:
        reduction: reduction of the ``[N, K]`` correctness matrix, ``"mean"`` (default) gives the Hamming score,
            ``"mean_batch"`` the per-category accuracy ``[K]``. See :class:`~sdmad_monai.metrics.HammingScoreMetric`.
        output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``; ``y_pred`` and ``y``
            are binary ``batch-first`` ``[B, K]`` tensors or lists of ``channel-first`` ``[K]`` tensors,
            e.g. ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: whether to save the per-image, per-category correctness ``[N, K]`` to
            ``engine.state.metric_details`` under the metric name. Defaults to True.
    """

    metric_type = HammingScoreMetric


class SubsetAccuracy(_ReducedMultiLabelHandler):
    """Exact-match ratio of binary multi-label predictions, accumulated over an epoch.

    Wraps :class:`sdmad_monai.metrics.SubsetAccuracyMetric`.

    Args:
        reduction: reduction of the ``[N, 1]`` exact-match indicators, ``"mean"`` (default) gives the accuracy.
        output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``; ``y_pred`` and ``y``
            are binary ``batch-first`` ``[B, K]`` tensors or lists of ``channel-first`` ``[K]`` tensors.
        save_details: whether to save the per-image exact-match indicators ``[N, 1]`` to
            ``engine.state.metric_details`` under the metric name. Defaults to True.
    """

    metric_type = SubsetAccuracyMetric
