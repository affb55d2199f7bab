"""Ignite handler for the streamed pixel AUROC of anomaly maps."""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers.ignite_metric import IgniteMetricHandler

from sdmad_monai.metrics import PixelAUROCMetric

__all__ = ["PixelAUROC"]


class PixelAUROC(IgniteMetricHandler):
    """Pixel AUROC of anomaly maps against anomaly masks, accumulated over an epoch in bounded memory.

    Wraps :class:`sdmad_monai.metrics.PixelAUROCMetric` (fixed-bin histograms; see that module for the binning
    error): ``engine.state.metrics[name]`` is a float.

    Args:
        score_range: ``(low, high)`` range of the map values that is binned.
        num_bins: number of equal-width bins.
        output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``: ``[B, H, W]`` (or
            ``[B, 1, H, W]``) anomaly maps and binary masks of the same size, e.g.
            ``sdmad_monai.handlers.detector_output("anomaly_map", label_key="pixel_label")``.
        save_details: whether to save the ``[2 * num_bins]`` counts (negatives then positives) to
            ``engine.state.metric_details`` under the metric name. Defaults to False.
    """

    def __init__(
        self,
        score_range: tuple[float, float] = (0.0, 1.0),
        num_bins: int = 10_000,
        output_transform: Callable = lambda x: x,
        save_details: bool = False,
    ) -> None:
        metric_fn = PixelAUROCMetric(score_range=score_range, num_bins=num_bins)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
