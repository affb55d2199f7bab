"""VolumeResultsWriter: the bundle inference's outputs (findings, maps, overlays), one volume at a time."""

from __future__ import annotations

from pathlib import Path

from ignite.engine import Engine, Events

__all__ = ["VolumeResultsWriter"]


class VolumeResultsWriter:
    """Write what the inference evaluator scores, with :class:`~sdmad_monai.inference.VolumeResultsCollector`
    (the same outputs as :func:`~sdmad_monai.inference.infer_volumes`, byte for byte): at ``STARTED`` the output
    folder is checked and cleared of the previous run's maps; after each iteration every
    :class:`~sdmad_monai.inference.VolumeResult` of ``engine.state.output["pred"]`` gets its maps and overlays
    written and every :class:`~sdmad_monai.inference.FailedVolume` is recorded; at ``COMPLETED`` ``findings.json``
    and the CSVs are written, and :class:`~sdmad_monai.inference.VolumesFailedError` ends the run if a volume failed.

    Args:
        output_dir: where the outputs go.
        overlays_top: with maps: highest-scoring slices per volume drawn as PNG overlays.
        overlays_random: with maps: seeded random slices per volume drawn.
        seed: seed of the random overlay sample.
    """

    def __init__(self, output_dir: str | Path, overlays_top: int = 5, overlays_random: int = 5, seed: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.overlays_top, self.overlays_random, self.seed = int(overlays_top), int(overlays_random), int(seed)
        self.collector = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        from ..inference import VolumeResultsCollector

        total = engine.state.epoch_length or len(engine.state.dataloader)
        self.collector = VolumeResultsCollector(
            self.output_dir, total, self.overlays_top, self.overlays_random, self.seed
        )

    def iteration_completed(self, engine: Engine) -> None:
        from ..inference import FailedVolume

        for outcome in engine.state.output["pred"]:
            if isinstance(outcome, FailedVolume):
                self.collector.fail(outcome.source, outcome.error)
            else:
                self.collector.add(outcome)

    def completed(self, engine: Engine) -> None:
        self.collector.finish()
