"""AnchorLossLogger: per-iteration components of the SD-MAD loss, to the log and to TensorBoard."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine, Events

from ..losses import SDMADLoss

__all__ = ["AnchorLossLogger"]


class AnchorLossLogger:
    """Log the image-text loss (Eq. 3), the positive and negative anchor hinges (Eq. 4) and the number of violated
    Remark 3.1 orderings of every training iteration.

    Values come from :attr:`SDMADLoss.components`, filled by the loss call of the same iteration.

    Args:
        loss_function: the trainer's :class:`~sdmad_monai.losses.SDMADLoss`.
        summary_writer: a TensorBoard ``SummaryWriter`` (scalars under ``loss/...``); ``None`` logs only.
        log_dir: create a ``SummaryWriter`` there when ``summary_writer`` is ``None``.
        interval: log every ``interval`` iterations.
        logger_name: name of the Python logger.
    """

    def __init__(
        self,
        loss_function: SDMADLoss,
        summary_writer: Any = None,
        log_dir: str | None = None,
        interval: int = 1,
        logger_name: str = "sdmad.anchor_loss",
    ) -> None:
        if not isinstance(loss_function, SDMADLoss):
            raise TypeError(f"AnchorLossLogger needs the trainer's SDMADLoss, got {type(loss_function).__name__}.")
        if summary_writer is None and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            summary_writer = SummaryWriter(log_dir=log_dir)
        self.loss_function = loss_function
        self.summary_writer = summary_writer
        self.interval = int(interval)
        self.logger = logging.getLogger(logger_name)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        components = self.loss_function.components
        if not components:
            return
        self.loss_function.components = {}  # an iteration that does not call the loss must not log these again
        step = engine.state.iteration
        self.logger.info(
            "iteration %d: image-text %.4f, anchor positive %.4f, anchor negative %.4f, Remark 3.1 violations %d",
            step,
            components["image_text"],
            components["anchor_positive"],
            components["anchor_negative"],
            int(components["remark31_violations"]),
        )
        if self.summary_writer is not None:
            for name, value in components.items():
                self.summary_writer.add_scalar(f"loss/{name}", value, step)
            self.summary_writer.flush()
