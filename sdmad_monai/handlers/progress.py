"""LossProgressBar: ignite's progress bar, attachable from a bundle config, showing the training loss."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["LossProgressBar"]


def _loss(output: Any) -> dict[str, float]:
    if isinstance(output, list):  # decollated output: every item carries the batch loss
        output = output[0]
    loss = output["loss"]  # the trainer's loss still carries its graph: read the value, not the graph
    return {"loss": float(loss.detach() if isinstance(loss, torch.Tensor) else loss)}


class LossProgressBar(ProgressBar):
    """ignite ``ProgressBar`` whose ``attach(engine)`` (the call MONAI bundles make) shows the iteration loss.

    Args:
        persist: keep the finished bar of each epoch on screen.
        kwargs: other ``ProgressBar`` arguments (``bar_format``, ``desc``...).
    """

    def __init__(self, persist: bool = True, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", _loss)
        super().attach(engine, *args, **kwargs)
