"""ResumeCheckpoint: an interrupted training run continues from its last completed epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ..utils import atomic_path

__all__ = ["ResumeCheckpoint"]

logger = logging.getLogger(__name__)


class ResumeCheckpoint:
    """Save the training state after every epoch, restore it when a run starts, remove it when the run completes.

    A run that completes leaves no resume file, so running the same command again trains afresh; a run that is
    interrupted (killed, crashed) is picked up at its last completed epoch by the next run. The file is written
    atomically (an interruption while writing keeps the previous epoch's file) and read with ``weights_only=True``.
    Under ``torch.distributed`` every rank restores the state (so the replicas stay identical) and only rank 0 writes
    or removes the file; pass the unwrapped network (not the DDP wrapper) so the keys carry no ``module.`` prefix.

    Args:
        path: the resume file.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save (network, optimizer, ...); the engine's
            epoch and iteration are saved too.
    """

    def __init__(self, path: str | Path, save_dict: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.restore)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.remove)

    def restore(self, engine: Engine) -> None:
        if not self.path.is_file():
            return
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise RuntimeError(
                f"Cannot read the resume file {self.path} ({error}); delete it to start training afresh."
            ) from error
        for name, obj in self.save_dict.items():
            if name not in state:
                raise RuntimeError(f"Resume file {self.path} has no {name!r} entry; delete it to start afresh.")
            obj.load_state_dict(state[name])
        engine.state.epoch = int(state["epoch"])
        engine.state.iteration = int(state["iteration"])
        logger.info("Resuming training from %s at epoch %d", self.path, engine.state.epoch)

    def save(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state.update(epoch=engine.state.epoch, iteration=engine.state.iteration)
        with atomic_path(self.path) as temporary:
            torch.save(state, temporary)

    def remove(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            self.path.unlink(missing_ok=True)
