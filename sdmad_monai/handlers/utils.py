"""What the handlers share: the output transform that picks one detector output for the metric handlers, and the
epoch lifecycle of the report handlers (:class:`EpochReport`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["EpochReport", "detector_output"]


def detector_output(key: str, variant: str | None = None, label_key: str = "label") -> Callable[[Any], tuple]:
    """``output_transform`` giving ``(pred[key], label)`` from an evaluator's un-decollated output.

    Args:
        key: a :class:`~sdmad_monai.networks.outputs.DetectorOutput` field: ``"scores"``, ``"predictions"``,
            ``"image_score"`` or ``"anomaly_map"`` (BMAD pixel level).
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


class EpochReport:
    """Base of the handlers that collect over an evaluation epoch and write their files at its end.

    :meth:`attach` registers :meth:`started` on ``EPOCH_STARTED`` (by default it calls :meth:`reset`, so a second
    run of the evaluator starts afresh), :meth:`collect` on ``ITERATION_COMPLETED`` and :meth:`write` on
    ``EPOCH_COMPLETED``. Subclasses implement :meth:`reset`, :meth:`collect` and :meth:`write`.
    """

    def attach(self, engine: Engine) -> None:
        """Register the handler's three steps on ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def started(self, engine: Engine) -> None:
        """At the start of an epoch: forget what an earlier one collected."""
        self.reset()

    def reset(self) -> None:
        """Forget what was collected."""
        raise NotImplementedError

    def collect(self, engine: Engine) -> None:
        """Keep what the report needs of ``engine.state`` after one iteration."""
        raise NotImplementedError

    def write(self, engine: Engine | None = None) -> Any:
        """Write the report files of what was collected."""
        raise NotImplementedError
