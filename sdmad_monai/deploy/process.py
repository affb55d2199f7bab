"""A folder of DICOM files in, one SD-MAD Comprehensive SR (+ JSON copy) per selected series out.

:func:`process_dicom_folder` is the operator logic shared by the command line (``sdmad process_folder``) and, later,
the MONAI Deploy application: it

1. reads the headers of every file under the input folder (``stop_before_pixels``; files that are not DICOM are
   skipped) and groups them by SeriesInstanceUID;
2. applies the series rules (:mod:`sdmad_monai.deploy.rules`), logging why each other series is skipped;
3. checks each selected series (one series, no missing slice: :func:`~sdmad_monai.transforms.validate_dicom_series`)
   and runs :func:`~sdmad_monai.inference.infer_volume` on a folder holding only that series (its own folder when
   it holds nothing else, otherwise a temporary folder of symbolic links);
4. writes the SR and its JSON copy (:func:`~sdmad_monai.deploy.sr.write_sr_report`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import require_extra
from .codes import FindingCodes, load_finding_codes
from .rules import SeriesRules, explain_series, load_series_rules

if TYPE_CHECKING:  # pragma: no cover
    from ..networks.detector import SignDrivenDetector

# torch, MONAI and the model code are imported only once a series is selected: a study without a matching series is
# answered in a fraction of a second.

__all__ = [
    "DEFAULT_SLICES",
    "DicomFile",
    "NoMatchingSeriesError",
    "SeriesProcessingError",
    "process_dicom_folder",
    "read_dicom_headers",
]

#: a series instance: its file path or its dataset
_Item = TypeVar("_Item")

logger = logging.getLogger(__name__)

#: The fastMRI+ slice policy: canonical axial slices 0, 5 and 10.
DEFAULT_SLICES = (0, 5, 10)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class NoMatchingSeriesError(ValueError):
    """No series under the input folder matches the rules (raised by ``process_dicom_folder(strict=True)``)."""


class SeriesProcessingError(ValueError):
    """One or more selected series could not be processed (e.g. a missing slice); ``written`` holds the files
    written for the other series."""

    def __init__(self, message: str, written: Sequence[Path] = ()):
        super().__init__(message)
        self.written = list(written)


class DicomFile:
    """A DICOM file's path (resolved) and header (read without pixel data)."""

    __slots__ = ("header", "path")

    def __init__(self, path: Path, header: Dataset):
        self.path, self.header = path, header


def read_dicom_headers(input_dir: str | Path, exclude: Sequence[str | Path] = ()) -> dict[str, list[DicomFile]]:
    """Headers of every DICOM file under ``input_dir`` (recursively), grouped by SeriesInstanceUID.

    Files that are not DICOM, hidden files and files without a SeriesInstanceUID (e.g. ``DICOMDIR``) are skipped.

    Args:
        input_dir: the folder.
        exclude: folders whose files are ignored (e.g. the output folder when it lies inside the input folder).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Input folder {root} does not exist (expected a folder of DICOM files).")
    excluded = [Path(os.path.realpath(p)) for p in exclude]
    series: dict[str, list[DicomFile]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(os.path.realpath(dirpath))
        if any(here == e or e in here.parents for e in excluded):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
                logger.debug("Skipping %s: not a readable DICOM file.", path)
                continue
            uid = str(getattr(header, "SeriesInstanceUID", "") or "")
            if uid:
                series[uid].append(DicomFile(path, header))
    return dict(series)


def _describe(files: Sequence[DicomFile]) -> str:
    header = files[0].header
    description = str(getattr(header, "SeriesDescription", "") or "")
    folders = sorted({str(f.path.parent) for f in files})
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    return f"{header.SeriesInstanceUID}{f' ({description})' if description else ''} in {where}"


@contextmanager
def _series_folder(files: Sequence[DicomFile], all_series: dict[str, list[DicomFile]]) -> Iterator[Path]:
    """A folder holding only this series' DICOM files: their own folder when possible, else temporary links."""
    folders = {f.path.parent for f in files}
    if len(folders) == 1:
        folder = folders.pop()
        others = [
            f
            for uid, fs in all_series.items()
            if uid != str(files[0].header.SeriesInstanceUID)
            for f in fs
            if f.path.parent == folder
        ]
        if not others:
            yield folder
            return
    with tempfile.TemporaryDirectory(prefix="sdmad_series_") as temporary:
        for number, f in enumerate(files):
            link = Path(temporary) / f"{number:05d}_{f.path.name}"
            try:
                link.symlink_to(f.path)
            except OSError:  # file systems without symbolic links
                shutil.copyfile(f.path, link)
        yield Path(temporary)


def _slice_images(
    paths: Sequence[_Item], lps_affine: np.ndarray, header: Dataset, axis: str, slice_indices: Sequence[int]
) -> list[_Item] | None:
    """The instance (file or dataset, in acquisition order) of each processed slice, or ``None`` when the slices cut
    across the acquired planes."""
    from ..transforms.slices import slice_geometry

    shape = (int(header.Columns), int(header.Rows), len(paths))
    geometry = slice_geometry(_LPS_TO_RAS @ lps_affine, shape, axis)
    if geometry.slice_dim != 2:
        return None
    return [paths[geometry.array_index(int(i))] for i in slice_indices]


def _as_indices(slices: Sequence[int] | str | None) -> list[int] | None:
    if slices is None or (isinstance(slices, str) and slices.strip().lower() == "all"):
        return None
    parts: Sequence[int | str] = (
        [s for s in slices.replace(" ", "").split(",") if s] if isinstance(slices, str) else slices
    )
    try:
        indices = [int(s) for s in parts]
    except (TypeError, ValueError) as error:
        raise ValueError(f"slices must be slice indices such as 0,5,10 or 'all', got {slices!r}.") from error
    if not indices or any(i < 0 for i in indices):
        raise ValueError(f"slices must be non-negative slice indices such as 0,5,10 or 'all', got {slices!r}.")
    return indices


def process_dicom_folder(
    detector: SignDrivenDetector | str | Path | Callable[[], SignDrivenDetector],
    input_dir: str | Path,
    output_dir: str | Path,
    rules: SeriesRules | str | Path | None = None,
    slices: Sequence[int] | str | None = DEFAULT_SLICES,
    axis: str = "axial",
    strict: bool = False,
    finding_codes: FindingCodes | str | Path | None = None,
    **infer_kwargs: Any,
) -> list[Path]:
    """Run SD-MAD on every series under ``input_dir`` that matches the rules; write one SR + JSON per series.

    Args:
        detector: the trained detector, its checkpoint path, or a function returning it; a path or function is only
            loaded / called once a series is selected (a study without a matching series costs no model load).
        input_dir: folder of DICOM files (any layout; several series may share a folder).
        output_dir: where ``sdmad_sr_<SeriesInstanceUID>.dcm`` / ``.json`` go.
        rules: :class:`~sdmad_monai.deploy.rules.SeriesRules`, a rules JSON file, or ``None`` for the shipped rules.
        slices: canonical slice indices (default ``(0, 5, 10)``, the fastMRI+ policy), ``"0,5,10"``, or
            ``None``/``"all"`` for every slice.
        axis: slicing axis passed to :func:`~sdmad_monai.inference.infer_volume`.
        strict: raise :class:`NoMatchingSeriesError` when no series matches, instead of returning ``[]``.
        finding_codes: how the SR codes the categories (:func:`~sdmad_monai.deploy.codes.load_finding_codes`), a
            finding-codes JSON file, or ``None`` for the shipped codes; read and checked before any series.
        infer_kwargs: ``batch_size``, ``device`` for :func:`~sdmad_monai.inference.infer_volume`.

    Returns:
        The written paths (SR, JSON for each processed series); ``[]`` when no series matches (the reasons are
        logged).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
        NoMatchingSeriesError: ``strict`` and no series matches.
        SeriesProcessingError: a selected series is broken (several series mixed, missing slice, slice index out
            of range); the other series are still processed and their files are listed in ``error.written``.
    """
    require_extra(("highdicom",), "pacs", "Writing DICOM SRs (sdmad process_folder)")
    indices = _as_indices(slices)
    rules = rules if isinstance(rules, SeriesRules) else load_series_rules(rules)
    finding_codes = finding_codes if isinstance(finding_codes, FindingCodes) else load_finding_codes(finding_codes)
    output_dir = Path(output_dir)
    all_series = read_dicom_headers(input_dir, exclude=[output_dir])
    reasons = explain_series({uid: [f.header for f in fs] for uid, fs in all_series.items()}, rules)
    selected = [uid for uid, reason in reasons.items() if reason is None]
    for uid, reason in reasons.items():
        if reason is not None:
            logger.info("Series %s skipped: %s.", _describe(all_series[uid]), reason)
    if not selected:
        if all_series:
            detail = "; ".join(f"{uid}: {reason}" for uid, reason in reasons.items())
            message = (
                f"No series in {input_dir} matches the series rules ({rules.source}); nothing written. "
                f"Skipped {len(all_series)} series - {detail}."
            )
        else:
            message = f"No DICOM file with a SeriesInstanceUID found under {input_dir}; nothing written."
        if strict:
            raise NoMatchingSeriesError(message)
        logger.warning(message)
        return []
    from ..inference import infer_volume
    from ..networks.detector import SignDrivenDetector
    from ..transforms import validate_dicom_series
    from .sr import AlgorithmInfo, write_sr_report

    if isinstance(detector, (str, Path)):
        checkpoint = detector
        detector = SignDrivenDetector.load(checkpoint)
    elif not isinstance(detector, SignDrivenDetector):
        detector = detector()
    algorithm = AlgorithmInfo.from_detector(detector)
    written: list[Path] = []
    failures: list[str] = []
    for number, uid in enumerate(selected, start=1):
        files = all_series[uid]
        name = _describe(files)
        headers_by_path = {os.path.realpath(f.path): f.header for f in files}
        try:
            with _series_folder(files, all_series) as folder:
                try:
                    paths, lps = validate_dicom_series(folder)
                    result = infer_volume(detector, folder, axis=axis, indices=indices, **infer_kwargs)
                except ValueError as error:  # name the series, not a temporary folder
                    message = str(error).replace(f"{folder}: ", "").replace(str(folder), "the series")
                    raise ValueError(message) from error
                # resolved while the temporary links exist
                ordered = [headers_by_path[os.path.realpath(p)] for p in paths]
                slice_paths = _slice_images(paths, lps, ordered[0], axis, result.slice_indices)
                source_images = (
                    None if slice_paths is None else [headers_by_path[os.path.realpath(p)] for p in slice_paths]
                )
            folders = sorted({str(f.path.parent) for f in files})
            result.source = folders[0] if len(folders) == 1 else str(input_dir)
            outputs = write_sr_report(
                result, ordered, algorithm, output_dir, source_images=source_images, finding_codes=finding_codes
            )
        except (ValueError, IndexError) as error:
            failures.append(f"series {name}: {error}")
            logger.error("[%d/%d] series %s failed: %s", number, len(selected), name, error)
            continue
        positives = result.findings.positive_names()
        logger.info(
            "[%d/%d] series %s: %d slices, findings: %s; wrote %s",
            number,
            len(selected),
            name,
            len(result.slice_indices),
            ", ".join(positives) or "none",
            ", ".join(str(p) for p in outputs),
        )
        written.extend(outputs)
    if failures:
        raise SeriesProcessingError(
            f"{len(failures)} of {len(selected)} selected series could not be processed: " + " | ".join(failures),
            written,
        )
    return written
