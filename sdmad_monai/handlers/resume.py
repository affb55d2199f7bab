"""ResumeCheckpoint: an interrupted training run continues from its last completed epoch, exactly."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events

from ..utils import atomic_path

__all__ = ["ResumeCheckpoint", "ResumeMismatchError"]

logger = logging.getLogger(__name__)


class ResumeMismatchError(RuntimeError):
    """The resume file was written by a run with other settings."""


def _randomizables(root: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every object under ``root`` (transforms, nested ``transforms`` lists, wrapped transforms) that owns a numpy
    ``RandomState`` in ``R``, MONAI's :class:`~monai.transforms.Randomizable` convention, in a fixed order."""
    seen = set() if seen is None else seen
    if id(root) in seen or root is None or isinstance(root, (str, bytes, int, float, bool, torch.Tensor, np.ndarray)):
        return
    seen.add(id(root))
    if isinstance(getattr(root, "R", None), np.random.RandomState):
        yield root
    children: list[Any] = []
    if isinstance(root, (list, tuple)):
        children = list(root)
    elif hasattr(root, "__dict__") and not isinstance(root, (torch.nn.Module, Engine)):
        children = [v for k, v in sorted(vars(root).items()) if k != "R"]
    for child in children:
        if isinstance(child, (list, tuple)) or hasattr(child, "R") or hasattr(child, "transforms"):
            yield from _randomizables(child, seen)


def _random_states(rng_objects: list[Any]) -> dict[str, Any]:
    """Global torch, numpy and Python random states, and those of the randomised transforms."""
    states = [obj.R.get_state() for root in rng_objects for obj in _randomizables(root)]
    # legacy=True is the default; passed so that numpy's stubs (which pick the dict overload without it) see the tuple
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):  # the global RandomState is always MT19937, whose legacy state is a tuple
        raise TypeError(f"numpy's global random state is not a legacy MT19937 tuple: {type(numpy_state).__name__}.")
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
        "python": json.dumps(random.getstate()),
        "transforms": [torch.from_numpy(state[1].astype(np.int64)) for state in states],
        "transform_positions": [int(state[2]) for state in states],
        "transform_gauss": [[int(state[3]), float(state[4])] for state in states],
    }


def _restore_random_states(state: Mapping[str, Any], rng_objects: list[Any], path: Path) -> None:
    transforms = [obj for root in rng_objects for obj in _randomizables(root)]
    if len(transforms) != len(state["transforms"]):
        raise ResumeMismatchError(
            f"Resume file {path} holds the random state of {len(state['transforms'])} random transform(s) but this run "
            f"has {len(transforms)}; the preprocessing changed. Delete {path} to start training afresh."
        )
    torch.set_rng_state(state["torch"])
    kind, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), int(position), int(has_gauss), float(gauss)))
    python = json.loads(state["python"])
    random.setstate((python[0], tuple(python[1]), python[2]))
    for transform, key, position, (has_gauss, gauss) in zip(
        transforms, state["transforms"], state["transform_positions"], state["transform_gauss"]
    ):
        transform.R.set_state(("MT19937", key.numpy().astype(np.uint32), position, has_gauss, gauss))


class ResumeCheckpoint:
    """Save the training state after every epoch, restore it when a run starts, remove it when the run completes.

    A run that completes leaves no resume file, so running the same command again trains afresh; a run that is
    interrupted (killed, crashed) is picked up at its last completed epoch by the next run and continues as if it had
    never stopped: the file holds, besides the objects of ``save_dict`` (network, optimizer), the engine's epoch and
    iteration, the best validation metric so far and its epoch (``evaluator``), the best-model saver's record (so the
    saved best model is only replaced by a better one), and the random states (torch, numpy, Python and every
    randomised transform under ``rng_objects``: the shuffling and augmentation of the next epochs are the same).
    A run with other ``settings`` than the interrupted one refuses to resume and names the settings that differ.

    The file is written atomically (an interruption while writing keeps the previous epoch's file) and read with
    ``weights_only=True``. Under ``torch.distributed`` every rank restores the state (so the replicas stay identical)
    and only rank 0 writes or removes the file; pass the unwrapped network (not the DDP wrapper) so the keys carry no
    ``module.`` prefix.

    Args:
        path: the resume file.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save (network, optimizer, ...).
        settings: JSON-serialisable values that define the run (learning rate, epochs, seed, k-shot, ...); a resume
            with other values is refused.
        evaluator: the validation engine whose ``state.best_metric`` / ``best_metric_epoch`` are kept.
        checkpoint_saver: the :class:`monai.handlers.CheckpointSaver` that keeps the best model (``save_key_metric``).
        rng_objects: roots to search for randomised transforms (e.g. the training preprocessing ``Compose``).
    """

    def __init__(
        self,
        path: str | Path,
        save_dict: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        evaluator: Engine | None = None,
        checkpoint_saver: Any = None,
        rng_objects: Any = (),
    ) -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.settings = json.loads(json.dumps(dict(settings or {}), sort_keys=True, default=str))
        self.evaluator = evaluator
        self.checkpoint_saver = checkpoint_saver
        self.rng_objects = list(rng_objects) if isinstance(rng_objects, (list, tuple)) else [rng_objects]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.restore)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.remove)

    def _read(self) -> dict:
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RuntimeError(
                f"Cannot read the resume file {self.path} ({reason}); delete it to start training afresh."
            ) from error

    def _check_settings(self, state: Mapping[str, Any]) -> None:
        saved = json.loads(state.get("settings", "{}"))
        keys = sorted(set(saved) | set(self.settings))
        changed = [
            f"{k} {saved.get(k, '(unset)')} -> {self.settings.get(k, '(unset)')}"
            for k in keys
            if saved.get(k, "(unset)") != self.settings.get(k, "(unset)")
        ]
        if changed:
            raise ResumeMismatchError(
                f"Resume file {self.path} was written by a run with other settings ({'; '.join(changed)}): run with "
                f"the same settings to resume it, or delete {self.path} to start training afresh."
            )

    def restore(self, engine: Engine) -> None:
        if not self.path.is_file():
            return
        state = self._read()
        self._check_settings(state)
        for name, obj in self.save_dict.items():
            if name not in state:
                raise RuntimeError(f"Resume file {self.path} has no {name!r} entry; delete it to start afresh.")
            obj.load_state_dict(state[name])
        engine.state.epoch = int(state["epoch"])
        engine.state.iteration = int(state["iteration"])
        if self.evaluator is not None and "best_metric" in state:
            evaluator_state: Any = self.evaluator.state  # ignite's State has no best_metric: MONAI's Workflow adds it
            evaluator_state.best_metric = float(state["best_metric"])
            evaluator_state.best_metric_epoch = int(state["best_metric_epoch"])
        if self.checkpoint_saver is not None and "checkpoint_saver" in state:
            self.checkpoint_saver.load_state_dict(json.loads(state["checkpoint_saver"]))
        if "random" in state:
            _restore_random_states(state["random"], self.rng_objects, self.path)
        best = (
            f", best {state['best_metric']:.4f} at epoch {state['best_metric_epoch']}" if "best_metric" in state else ""
        )
        logger.info("Resuming training from %s at epoch %d%s", self.path, engine.state.epoch, best)

    def save(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        state: dict[str, Any] = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state.update(epoch=engine.state.epoch, iteration=engine.state.iteration, settings=json.dumps(self.settings))
        if self.evaluator is not None:
            evaluator_state: Any = self.evaluator.state  # ignite's State has no best_metric: MONAI's Workflow adds it
            state.update(
                best_metric=float(evaluator_state.best_metric),
                best_metric_epoch=int(evaluator_state.best_metric_epoch),
            )
        saver_checkpoint = getattr(self.checkpoint_saver, "_key_metric_checkpoint", None)
        if saver_checkpoint is not None:
            # MONAI's CheckpointSaver restores this record with load_state_dict but offers no state_dict of its own
            state["checkpoint_saver"] = json.dumps(saver_checkpoint.state_dict(), default=str)
        state["random"] = _random_states(self.rng_objects)
        with atomic_path(self.path) as temporary:
            torch.save(state, temporary)

    def remove(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            self.path.unlink(missing_ok=True)
