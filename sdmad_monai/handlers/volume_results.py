"""VolumeResultsWriter: the bundle inference's outputs (findings, maps, overlays), one volume at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events

__all__ = ["VolumeResultsWriter"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    results and failures, puts them in input order and writes ``findings.json`` and the CSVs: the same files as a
    one-process run.

    Args:
        output_dir: where the outputs go.
        overlays_top: with maps: highest-scoring slices per volume drawn as PNG overlays.
        overlays_random: with maps: seeded random slices per volume drawn.
        seed: seed of the random overlay sample.
    """

    def __init__(self, output_dir: str | Path, overlays_top: int = 5, overlays_random: int = 5, seed: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.overlays_top, self.overlays_random, self.seed = int(overlays_top), int(overlays_random), int(seed)
        self.collector: Any = None
        self.sources: list[str] = []
        self._stems: dict[str, list[str]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        from ..inference import VolumeResultsCollector, volume_stems

        data = getattr(engine.state.dataloader.dataset, "data", None)
        self.sources = [str(item["image"]) for item in data] if data is not None else []
        self._stems = {}
        for source, stem in zip(self.sources, volume_stems(self.sources)):
            self._stems.setdefault(source, []).append(stem)
        total = len(self.sources) or engine.state.epoch_length
        first = not _distributed() or dist.get_rank() == 0
        self.collector = VolumeResultsCollector(
            self.output_dir, total, self.overlays_top, self.overlays_random, self.seed, clear_previous=first
        )
        if _distributed():
            dist.barrier()  # nobody writes before process 0 has cleared

    def _stem(self, source: str) -> str | None:
        names = self._stems.get(source)
        return names.pop(0) if names else None

    def iteration_completed(self, engine: Engine) -> None:
        from ..inference import FailedVolume

        for outcome in engine.state.output["pred"]:
            if isinstance(outcome, FailedVolume):
                self.collector.fail(outcome.source, outcome.error)
            else:
                self.collector.add(outcome, stem=self._stem(outcome.source))

    def completed(self, engine: Engine) -> None:
        if _distributed():
            shares: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, (self.collector.results, self.collector.failed))
            if dist.get_rank() != 0:
                return
            order = {source: i for i, source in reversed(list(enumerate(self.sources)))}
            results = sorted((r for share in shares for r in share[0]), key=lambda r: order.get(r.source, 0))
            failed = sorted(((k, v) for share in shares for k, v in share[1].items()), key=lambda kv: order.get(kv[0], 0))
            self.collector.results, self.collector.failed = results, dict(failed)
        self.collector.finish()
