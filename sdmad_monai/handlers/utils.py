"""Output transforms that pick one detector output for the metric handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["detector_output"]


def detector_output(key: str, variant: str | None = None, label_key: str = "label") -> Callable[[Any], tuple]:
    """``output_transform`` giving ``(pred[key], label)`` from an evaluator's un-decollated output.

    Args:
        key: a :class:`~sdmad_monai.networks.outputs.DetectorOutput` field: ``"scores"``, ``"predictions"``,
            ``"image_score"`` or ``"anomaly_map"`` (BMAD pixel level) ...
        variant: with :class:`~sdmad_monai.inferers.ProtocolInferer`, which variant's outputs.
        label_key: output key of the labels.
    """

    def transform(output: Any) -> tuple:
        if isinstance(output, list):
            raise TypeError(
                "detector_output needs the evaluator's batch output: create the evaluator with decollate=False."
            )
        pred = output["pred"] if variant is None else output["pred"][variant]
        return pred[key], output[label_key]

    return transform
