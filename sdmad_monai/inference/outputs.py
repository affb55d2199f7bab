"""What volume inference writes: output stems, the 3D anomaly-map files, the overlay gallery and
:func:`write_volume_results` (per-volume JSON, the run's CSV and ``findings.json``).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..anomaly_volume import write_anomaly_volume
from ..utils import atomic_write_json, atomic_write_text
from ..visualize import OverlayItem, OverlaySelector, write_overlays
from .results import VolumeResult

__all__ = [
    "clear_previous_outputs",
    "find_volumes",
    "volume_stem",
    "volume_stems",
    "OVERLAY_SCOPES",
    "offer_volume_slices",
    "write_volume_maps",
    "write_volume_results",
]

logger = logging.getLogger(__name__)


def volume_stem(source: str) -> str:
    """File-safe name of a volume for its output files: the file name without ``.nii.gz``/``.nii``/``.h5``, or the
    DICOM folder's name."""
    name = Path(source.rstrip("/\\")).name or "volume"
    name = re.sub(r"\.(nii\.gz|nii|h5|hdf5)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume"


def volume_stems(sources: Sequence[str]) -> list[str]:
    """The map file names of volumes processed in this order (:func:`volume_stem`, numbered when two sources share
    a name), the names :class:`VolumeResultsCollector` gives them."""
    used: dict[str, int] = {}
    return [_unique_stem(used, str(source)) for source in sources]


def _unique_stem(used: dict[str, int], source: str) -> str:
    stem = volume_stem(source)
    used[stem] = used.get(stem, 0) + 1
    return stem if used[stem] == 1 else f"{stem}_{used[stem]}"  # same name from another folder: keep both


def write_volume_maps(
    result: VolumeResult,
    output_dir: str | Path,
    stem: str | None = None,
    overlays_top: int = 5,
    overlays_random: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write one volume's 3D anomaly map (``maps/<stem>_anomaly_map.nii.gz`` + ``.json``) and its overlays
    (``overlays/<stem>/top|random/*.png`` + ``index.csv``).

    Args:
        result: an :func:`infer_volume` result with ``anomaly_maps``.
        output_dir: the inference output folder.
        stem: name of the volume's files (default :func:`volume_stem` of the source).
        overlays_top: highest-scoring slices (image score) drawn.
        overlays_random: seeded random sample of slices drawn.
        seed: seed of the sample.

    Returns:
        ``{"nifti", "json", "overlays"}``: paths relative to ``output_dir`` (overlays: the folder, or ``None``).
    """
    output_dir = Path(output_dir)
    stem = stem or volume_stem(result.source)
    try:
        return _write_volume_maps(result, output_dir, stem, overlays_top, overlays_random, seed)
    except BaseException:  # all of a volume's files or none: remove what this call wrote before the failure
        import shutil

        for partial in (
            output_dir / "maps" / f"{stem}_anomaly_map.nii.gz",
            output_dir / "maps" / f"{stem}_anomaly_map.json",
        ):
            partial.unlink(missing_ok=True)
        shutil.rmtree(output_dir / "overlays" / stem, ignore_errors=True)
        raise


def _write_volume_maps(
    result: VolumeResult, output_dir: Path, stem: str, overlays_top: int, overlays_random: int, seed: int
) -> dict[str, Any]:
    written = write_anomaly_volume(
        output_dir / "maps" / f"{stem}_anomaly_map.nii.gz",
        result.anomaly_volume(),
        result.volume_affine,
        result.slice_indices,
        result.axis,
        source=result.source,
        info={"model": result.model},
    )
    paths: dict[str, Any] = {k: str(v.relative_to(output_dir)) for k, v in written.items()}
    paths["overlays"] = None
    if overlays_top or overlays_random:
        selector = OverlaySelector(overlays_top, overlays_random, seed)
        offer_volume_slices(selector, result, stem)
        folder = output_dir / "overlays" / stem
        write_overlays(selector, folder, score_name="image score")
        paths["overlays"] = str(folder.relative_to(output_dir))
    return paths


#: Where inference overlays are chosen: over the whole run (one gallery) or per volume.
OVERLAY_SCOPES = ("run", "volume")
#: Slices per volume at most, for the gallery's keys (volume position * this + slice row).
_SLICES_KEY_STRIDE = 1 << 20


def offer_volume_slices(selector: OverlaySelector, result: VolumeResult, stem: str, position: int = 0) -> None:
    """Offer every processed slice of ``result`` (with maps) to an overlay selector, ranked by image score, named
    ``<stem>_<axis>_slice<index>`` and keyed by ``(position, row)``, so that the choice depends only on the volumes'
    places in the input list, not on the order or the process they are scored in."""

    def build(row: int, index: int) -> OverlayItem:
        if result.display_images is None or result.anomaly_maps is None:
            raise ValueError(f"{result.source}: no anomaly maps were computed (infer_volume(..., anomaly_maps=True)).")
        return OverlayItem(
            score=float(result.image_scores[row]),
            name=f"{stem}_{result.axis}_slice{index:03d}",
            image=result.display_images[row],
            anomaly_map=result.anomaly_maps[row].numpy(),
        )

    for row, index in enumerate(result.slice_indices):
        selector.offer(
            float(result.image_scores[row]),
            functools.partial(build, row, index),
            index=position * _SLICES_KEY_STRIDE + row,
        )


def write_volume_results(
    results: Sequence[VolumeResult],
    output_dir: str | Path,
    overlays_top: int = 5,
    overlays_random: int = 5,
    seed: int = 0,
    failed: Mapping[str, str] | None = None,
    overlays: str | None = None,
) -> dict[str, Path]:
    """Write ``findings.json`` (everything) and ``slices.csv`` / ``findings.csv`` (one row per slice / finding); for
    results with anomaly maps whose maps are not written yet also the 3D map and per-volume overlays of
    :func:`write_volume_maps` (listed per volume in ``findings.json`` under ``"anomaly_map"``). ``failed`` (source ->
    reason) lists the volumes that could not be processed, in ``findings.json`` under ``"failed"``; ``overlays``
    (the run's overlay gallery, relative to ``output_dir``) goes under ``"overlays"``.

    Returns:
        The written paths by name.
    """
    output_dir = Path(output_dir)
    documents = [r.to_dict() for r in results]
    used: dict[str, int] = {}
    for result, document in zip(results, documents):
        if result.map_files is None and result.anomaly_maps is not None:
            stem = _unique_stem(used, result.source)
            result.map_files = write_volume_maps(result, output_dir, stem, overlays_top, overlays_random, seed)
        if result.map_files is not None:
            document["anomaly_map"] = result.map_files
    paths = {
        "json": atomic_write_json(
            output_dir / "findings.json",
            {"volumes": documents, "failed": [{"source": k, "error": v} for k, v in (failed or {}).items()]}
            | ({"overlays": overlays} if overlays is not None else {}),
        ),
    }
    slice_rows = io.StringIO()
    writer = csv.writer(slice_rows)
    labels = results[0].category_labels if results else []
    writer.writerow(
        ["source", "axis", "slice", "image_score"]
        + [f"score:{label}" for label in labels]
        + [f"prediction:{label}" for label in labels]
        + [f"probability:{label}" for label in labels]
    )
    for result in results:
        for row, index in enumerate(result.slice_indices):
            probabilities = (
                [""] * len(labels)
                if result.probabilities is None
                else ["" if np.isnan(v) else f"{v:.6g}" for v in result.probabilities[row]]
            )
            writer.writerow(
                [result.source, result.axis, index, f"{float(result.image_scores[row]):.6g}"]
                + [f"{v:.6g}" for v in result.scores[row].tolist()]
                + [int(v) for v in result.predictions[row].tolist()]
                + probabilities
            )
    paths["slices_csv"] = atomic_write_text(output_dir / "slices.csv", slice_rows.getvalue())
    finding_rows = io.StringIO()
    writer = csv.writer(finding_rows)
    writer.writerow(
        [
            "source",
            "label",
            "display_name",
            "finding",
            "score",
            "probability",
            "decision_rule",
            "threshold",
            "eq8_finding",
            "max_score_slice",
            "positive_slices",
        ]
    )
    for result in results:
        for finding in result.findings:
            rule = finding["decision"]
            writer.writerow(
                [
                    result.source,
                    finding["label"],
                    finding["display_name"],
                    finding["finding"],
                    f"{finding['score']:.6g}",
                    "" if finding["probability"] is None else f"{finding['probability']:.6g}",
                    rule["rule"],
                    f"{rule['threshold']:.6g}" if "threshold" in rule else "",
                    finding["eq8_finding"],
                    finding["max_score_slice"],
                    " ".join(str(i) for i in finding["positive_slices"]),
                ]
            )
    paths["findings_csv"] = atomic_write_text(output_dir / "findings.csv", finding_rows.getvalue())
    return paths


#: File names :func:`find_volumes` takes as volumes.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".h5", ".hdf5")


def find_volumes(input_dir: str | Path) -> list[Path]:
    """The volumes in ``input_dir``: NIfTI and fastMRI ``.h5`` files, and sub-folders holding a DICOM series.

    A sub-folder counts as a DICOM series when it contains at least one file; it is validated when read.

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Input folder {folder} does not exist (expected NIfTI/.h5 files or DICOM folders).")
    files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
    series = [p for p in folder.iterdir() if p.is_dir() and any(q.is_file() for q in p.iterdir())]
    return sorted(files + series)


def clear_previous_outputs(output_dir: str | Path) -> list[Path]:
    """Remove what an earlier run wrote into ``output_dir``, as listed in its ``findings.json`` (3D maps, their JSON,
    overlay folders), so that a reused folder never shows stale maps beside new findings. Only paths inside
    ``output_dir`` are touched; an unreadable ``findings.json`` is left alone.

    Returns:
        The removed paths.
    """
    import shutil

    output_dir = Path(output_dir)
    try:
        previous = json.loads((output_dir / "findings.json").read_text(encoding="utf-8"))
        volumes = list(previous.get("volumes", []))
        run_overlays = previous.get("overlays")
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    root = output_dir.resolve()
    removed = []
    listed = [{"overlays": run_overlays}] if isinstance(run_overlays, str) else []
    for files in listed + [d.get("anomaly_map") if isinstance(d, Mapping) else None for d in volumes]:
        if not isinstance(files, Mapping):
            continue
        for relative in files.values():
            if not isinstance(relative, str):
                continue
            target = (output_dir / relative).resolve()
            if root not in target.parents or not target.exists():
                continue
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            removed.append(target)
    if removed:
        logger.info("Removed %d output(s) of the previous run in %s.", len(removed), output_dir)
    return removed
