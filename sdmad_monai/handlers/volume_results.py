"""VolumeResultsWriter: the bundle inference's outputs (findings, maps, overlays), one volume at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events

from ..utils import distributed_run

__all__ = ["VolumeResultsWriter"]


class VolumeResultsWriter:
    """Write what the inference evaluator scores, with :class:`~sdmad_monai.inference.VolumeResultsCollector`
    (the same outputs as :func:`~sdmad_monai.inference.infer_volumes`, byte for byte): at ``STARTED`` the output
    folder is checked and cleared of the previous run's maps; after each iteration every
    :class:`~sdmad_monai.inference.VolumeResult` of ``engine.state.output["pred"]`` gets its maps and overlays
    written and every :class:`~sdmad_monai.inference.FailedVolume` is recorded; at ``COMPLETED`` ``findings.json``
    and the CSVs are written, and :class:`~sdmad_monai.inference.VolumesFailedError` ends the run if a volume failed.

    Under ``torch.distributed`` (``configs/multi_gpu_inference.json``: each process scores its share of the volumes)
    every process writes the maps and overlays of its own volumes, named as one process would name them (from the
    whole input list); process 0 alone clears the previous outputs (the others wait for it), gathers every process's
    results, failures and overlay candidates (the run's gallery: each process keeps at most ``2 * overlays_top +
    overlays_random`` slices, keyed by their place in the input list), puts them in input order and writes
    ``findings.json``, the CSVs and the gallery: the same files as a one-process run.

    Args:
        output_dir: where the outputs go.
        overlays_top: with maps: highest-scoring slices drawn as PNG overlays (of the run, or of each volume).
        overlays_random: with maps: seeded random slices drawn (of the run, or of each volume).
        seed: seed of the random overlay sample.
        overlay_scope: ``"run"`` (one gallery over all volumes) or ``"volume"``
            (:class:`~sdmad_monai.inference.VolumeResultsCollector`).
    """

    def __init__(
        self,
        output_dir: str | Path,
        overlays_top: int = 10,
        overlays_random: int = 10,
        seed: int = 0,
        overlay_scope: str = "run",
    ) -> None:
        from ..inference import OVERLAY_SCOPES

        if overlay_scope not in OVERLAY_SCOPES:
            raise ValueError(f"overlay_scope must be one of {OVERLAY_SCOPES}, got {overlay_scope!r}.")
        self.output_dir = Path(output_dir)
        self.overlays_top, self.overlays_random, self.seed = int(overlays_top), int(overlays_random), int(seed)
        self.overlay_scope = overlay_scope
        self.collector: Any = None
        self._stems: list[str] = []
        self._order: list[int] = []
        self._done: list[tuple[int, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        from ..inference import VolumeResultsCollector, volume_stems

        loader = engine.state.dataloader
        if loader is None:
            raise RuntimeError("VolumeResultsWriter: the engine has no data loader at STARTED.")
        data = list(getattr(getattr(loader, "dataset", None), "data", None) or [])
        self._stems = volume_stems([str(item["image"]) for item in data])  # by dataset index, as one process names
        # the dataset index of each volume this process scores, in order (all of them in one process)
        sampler = getattr(loader, "sampler", None)
        self._order = [int(i) for i in iter(sampler)] if sampler is not None else []
        self._done = []
        total = len(data) or engine.state.epoch_length
        if total is None:
            raise RuntimeError(
                "VolumeResultsWriter: unknown number of volumes (the data loader's dataset has no 'data' list and "
                "the engine no epoch_length)."
            )
        first = not distributed_run() or dist.get_rank() == 0
        self.collector = VolumeResultsCollector(
            self.output_dir, total, self.overlays_top, self.overlays_random,
            self.seed, clear_previous=first, overlay_scope=self.overlay_scope,
        )  # fmt: skip
        if distributed_run():
            dist.barrier()  # nobody writes before process 0 has cleared

    def iteration_completed(self, engine: Engine) -> None:
        from ..inference import FailedVolume

        output: Any = engine.state.output  # the evaluator's output dict (ignite annotates State.output int | None)
        for outcome in output["pred"]:
            position = len(self._done)
            index = self._order[position] if position < len(self._order) else position
            if isinstance(outcome, FailedVolume):
                self.collector.fail(outcome.source, outcome.error)
            else:
                self.collector.add(
                    outcome, stem=self._stems[index] if index < len(self._stems) else None, position=index
                )
            self._done.append((index, outcome))

    def completed(self, engine: Engine) -> None:
        from ..inference import FailedVolume

        done = self._done
        if distributed_run():
            shares: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, (done, self.collector.selector))
            if dist.get_rank() != 0:
                return
            done = sorted((entry for share, _ in shares for entry in share), key=lambda entry: entry[0])
            if self.collector.selector is not None:  # process 0's own candidates are in it already
                self.collector.selector.merge([s for rank, (_, s) in enumerate(shares) if rank != 0])
        self.collector.results = [o for _, o in done if not isinstance(o, FailedVolume)]
        self.collector.failed = {o.source: o.error for _, o in done if isinstance(o, FailedVolume)}
        self.collector.finish()
