"""Inference over many volumes: input checks, :class:`VolumeResultsCollector` (shared with the bundle's
``VolumeResultsWriter``) and :func:`infer_volumes`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import one_line
from ..networks.detector import SignDrivenDetector
from ..utils import ensure_writable_folder
from ..visualize import OverlaySelector, write_overlays
from .outputs import (
    OVERLAY_SCOPES,
    _unique_stem,
    clear_previous_outputs,
    offer_volume_slices,
    write_volume_maps,
    write_volume_results,
)
from .results import VolumeResult, VolumesFailedError
from .volume import FailedVolume, check_volume_inputs, infer_volume

__all__ = ["VolumeResultsCollector", "infer_volumes"]

logger = logging.getLogger(__name__)


class VolumeResultsCollector:
    """The output side of inference over many volumes, for every loop that runs it (:func:`infer_volumes`, the
    bundle's :class:`~sdmad_monai.handlers.VolumeResultsWriter`): the output folder checked and cleared of the
    previous run's maps before any work, each volume's maps and overlays written as soon as it is scored (memory
    stays one volume's), failures collected with their reasons, and at the end ``findings.json`` / CSVs
    (:func:`write_volume_results`), one line saying where everything is, and :class:`VolumesFailedError` if any
    volume failed (after the others' results are written).

    Overlays (with maps) are chosen over the whole run by default (``overlay_scope="run"``): one gallery,
    ``overlays/top|random/*.png`` + ``index.csv``, of the ``overlays_top`` highest-scoring slices of all volumes and
    a seeded random sample of ``overlays_random`` others, drawn at the end; its cost does not grow with the number
    of volumes, so an archive run pays for a fixed number of PNGs (``benchmarks/bench_inference_outputs.py``).
    ``overlay_scope="volume"`` draws them per volume instead, in ``overlays/<name>/top|random/``, as soon as the
    volume is scored (about 25 ms per PNG on a 2-core CPU: several times the tiny model's cost per volume).

    Args:
        output_dir: where the JSON and CSV files (and maps and overlays) go.
        total: number of volumes of the run (for the ``[n/total]`` progress lines).
        overlays_top: with maps: highest-scoring slices drawn as PNG overlays (of the run, or of each volume).
        overlays_random: with maps: seeded random slices drawn (of the run, or of each volume).
        seed: seed of the random overlay sample.
        clear_previous: remove the previous run's maps first (:func:`clear_previous_outputs`).
        overlay_scope: ``"run"`` (default) or ``"volume"``, see above.
    """

    def __init__(
        self,
        output_dir: str | Path,
        total: int,
        overlays_top: int = 10,
        overlays_random: int = 10,
        seed: int = 0,
        clear_previous: bool = True,
        overlay_scope: str = "run",
    ) -> None:
        if overlay_scope not in OVERLAY_SCOPES:
            raise ValueError(f"overlay_scope must be one of {OVERLAY_SCOPES}, got {overlay_scope!r}.")
        self.output_dir = Path(output_dir)
        self.total = int(total)
        self.overlays_top, self.overlays_random, self.seed = int(overlays_top), int(overlays_random), int(seed)
        self.overlay_scope = overlay_scope
        #: the run's overlay gallery (``overlay_scope="run"`` with overlays on), merged across processes by
        #: :class:`~sdmad_monai.handlers.VolumeResultsWriter`
        self.selector: OverlaySelector | None = (
            OverlaySelector(self.overlays_top, self.overlays_random, self.seed)
            if overlay_scope == "run" and (self.overlays_top or self.overlays_random) else None
        )  # fmt: skip
        self.results: list[VolumeResult] = []
        self.failed: dict[str, str] = {}
        self._stems: dict[str, int] = {}
        ensure_writable_folder(self.output_dir)  # before the work, not after it
        if clear_previous:  # one process of a distributed run clears, the others must not race it
            clear_previous_outputs(self.output_dir)

    @property
    def count(self) -> int:
        """Volumes handled so far, scored or failed."""
        return len(self.results) + len(self.failed)

    def add(self, result: VolumeResult, stem: str | None = None, position: int | None = None) -> None:
        """Take one scored volume: write its maps (and, per volume, its overlays) now, offer its slices to the
        run's gallery, and let the arrays go.

        Args:
            result: the scored volume.
            stem: the name of its map files (default: from its source, numbered when two sources share a name,
                in the order the volumes are added; a distributed run passes the names of the whole input list).
            position: its place in the whole input list (default: the number of volumes added before it; a
                distributed run passes it), which keys the gallery's random sample.
        """
        position = self.count if position is None else int(position)
        if result.anomaly_maps is not None:
            stem = stem or _unique_stem(self._stems, result.source)
            per_volume = self.overlay_scope == "volume"
            result.map_files = write_volume_maps(
                result, self.output_dir, stem, self.overlays_top if per_volume else 0,
                self.overlays_random if per_volume else 0, self.seed,
            )  # fmt: skip
            if self.selector is not None:
                offer_volume_slices(self.selector, result, stem, position)
            result.anomaly_maps = result.display_images = None
        self.results.append(result)
        positives = result.findings.positive_names()
        logger.info(
            "[%d/%d] %s: %d slices, findings: %s",
            self.count,
            self.total,
            result.source,
            len(result.slice_indices),
            ", ".join(positives) or "none",
        )

    def fail(self, source: str, error: str | BaseException) -> None:
        """Record a volume that could not be processed, with the reason (one line)."""
        self.failed[str(source)] = error if isinstance(error, str) else one_line(error)
        logger.error("[%d/%d] %s: not processed: %s", self.count, self.total, source, self.failed[str(source)])

    def _write_gallery(self) -> Path:
        """The run's overlays, drawn into a temporary sibling folder and moved into place: a failure half way
        (a full disk) leaves no partial gallery."""
        import shutil

        if self.selector is None:
            raise ValueError("this run keeps no overlay gallery (overlay_scope='volume' or overlays off).")
        gallery = self.output_dir / "overlays"
        partial = self.output_dir / f".overlays.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            write_overlays(self.selector, partial, score_name="image score")
            if gallery.exists():
                shutil.rmtree(gallery)
            os.replace(partial, gallery)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return gallery

    def finish(self) -> list[VolumeResult]:
        """Write the run's overlay gallery, ``findings.json`` and the CSVs, say where the outputs are.

        Raises:
            VolumesFailedError: some volumes failed (their reasons are in the message and in ``findings.json``).
        """
        results, failed, output_dir = self.results, self.failed, self.output_dir
        gallery = None
        if self.selector is not None and self.selector.num_seen:
            gallery = self._write_gallery()
        paths = write_volume_results(
            results, output_dir, self.overlays_top, self.overlays_random, self.seed, failed=failed,
            overlays=None if gallery is None else str(gallery.relative_to(output_dir)),
        )  # fmt: skip
        maps = [r.map_files for r in results if r.map_files]
        where = f"findings {paths['json']} (per slice: {paths['slices_csv']}, per finding: {paths['findings_csv']})"
        if maps:
            where += f"; 3D anomaly maps in {output_dir / 'maps'}"
            if gallery is not None or any(m.get("overlays") for m in maps):
                where += f", overlays in {output_dir / 'overlays'}"
        logger.info("Inference done for %d of %d volume(s): %s.", len(results), self.count, where)
        if failed:
            raise VolumesFailedError(
                f"{len(failed)} of {self.count} volume(s) could not be processed ("
                + "; ".join(v if v.startswith(k) else f"{k}: {v}" for k, v in failed.items())
                + f"); the results of the other {len(results)} are in {paths['json']} (which lists the failures too)."
            )
        return results


def infer_volumes(
    detector: SignDrivenDetector,
    inputs: Iterable[str | Path],
    output_dir: str | Path,
    overlays_top: int = 10,
    overlays_random: int = 10,
    seed: int = 0,
    overlay_scope: str = "run",
    **kwargs: Any,
) -> list[VolumeResult]:
    """:func:`infer_volume` over several volumes, one after the other, with the outputs of
    :class:`VolumeResultsCollector` (``configs/inference.json`` runs the same steps in a MONAI evaluator).

    Args:
        detector: the trained detector.
        inputs: volume paths (files or DICOM folders).
        output_dir: where the JSON and CSV files (and, with ``anomaly_maps=True``, maps and overlays) go.
        overlays_top: with maps: highest-scoring slices drawn as PNG overlays (of the run, or of each volume).
        overlays_random: with maps: seeded random slices drawn (of the run, or of each volume).
        seed: seed of the random overlay sample.
        overlay_scope: ``"run"``: one overlay gallery over all volumes; ``"volume"``: per volume
            (:class:`VolumeResultsCollector`).
        kwargs: slice policy, batching and ``anomaly_maps``, passed to :func:`infer_volume`.

    Raises:
        VolumesFailedError: some volumes could not be processed (the others' results are written first).
    """
    inputs = check_volume_inputs(inputs)
    collector = VolumeResultsCollector(
        output_dir, len(inputs), overlays_top, overlays_random, seed, overlay_scope=overlay_scope
    )
    for path in inputs:
        try:
            result = infer_volume(detector, path, **kwargs)
        except Exception as error:  # one bad volume never sinks the others; a bug still stops the run
            failure = FailedVolume.from_error(str(path), error)
            collector.fail(failure.source, failure.error)
            continue
        collector.add(result)
    return collector.finish()
