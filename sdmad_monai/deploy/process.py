"""A folder of DICOM files in, one SD-MAD Comprehensive SR (+ JSON copy) per selected series out.

:func:`process_dicom_folder` is the folder source of the series pipeline (:mod:`sdmad_monai.deploy.pipeline`),
behind ``sdmad process_folder`` and the DICOM listener: it

1. reads the headers of every file under the input folder (``stop_before_pixels``; files that are not DICOM are
   skipped) and groups them by SeriesInstanceUID (:func:`read_dicom_headers`);
2. selects the series (:func:`~sdmad_monai.deploy.pipeline.select_series_to_process`: the series rules, each other
   series logged with its reason);
3. per selected series, reads its files fully with pydicom and builds the job in memory
   (:func:`~sdmad_monai.deploy.pipeline.job_from_datasets`: the checks of a series folder - one series, no missing
   slice - then the volume), runs it (:func:`~sdmad_monai.deploy.pipeline.run_jobs`: a broken series never sinks the
   others) and writes the SR and its JSON copy (:func:`~sdmad_monai.deploy.pipeline.write_sr_files`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import require_extra
from .codes import FindingCodes, load_finding_codes
from .pipeline import (
    DEFAULT_SLICES,
    NoMatchingSeriesError,
    PendingSeries,
    SeriesFindings,
    SeriesJob,
    SeriesOptions,
    SeriesProcessingError,
    describe_series,
    job_from_datasets,
    raise_failures,
    run_jobs,
    select_series_to_process,
    write_map_file,
    write_sr_files,
)
from .rules import SeriesRules, load_series_rules

if TYPE_CHECKING:  # pragma: no cover
    from ..networks.detector import SignDrivenDetector

# torch, MONAI and the model code are imported only once a series is selected: a study without a matching series is
# answered in a fraction of a second.

__all__ = [
    "DEFAULT_SLICES",
    "DicomFile",
    "NoMatchingSeriesError",
    "SeriesProcessingError",
    "folder_series_job",
    "process_dicom_folder",
    "read_dicom_headers",
]

logger = logging.getLogger(__name__)


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


def folder_series_job(files: Sequence[DicomFile], source: str | None = None) -> SeriesJob:
    """The :class:`~sdmad_monai.deploy.pipeline.SeriesJob` of one series' files, read fully with pydicom.

    Args:
        files: the series' files (:func:`read_dicom_headers`).
        source: the job's ``source`` (default: the folder of the files when they share one).

    Raises:
        ValueError: a file cannot be read, or the series fails its checks.
    """
    from ..transforms.io import pixel_read_error

    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f.path))
        except Exception as error:  # a file that changed or is damaged after its header was read
            raise pixel_read_error(str(f.path), error) from error
    return job_from_datasets(datasets, describe_series([f.header for f in files]), source)


def process_dicom_folder(
    detector: SignDrivenDetector | str | Path | Callable[[], SignDrivenDetector],
    input_dir: str | Path,
    output_dir: str | Path,
    rules: SeriesRules | str | Path | None = None,
    slices: Sequence[int] | str | None = DEFAULT_SLICES,
    axis: str = "axial",
    strict: bool = False,
    finding_codes: FindingCodes | str | Path | None = None,
    anomaly_map: bool = False,
    **infer_kwargs: Any,
) -> list[Path]:
    """Run SD-MAD on every series under ``input_dir`` that matches the rules; write one SR + JSON per series (and,
    with ``anomaly_map``, its 3D anomaly map as a DICOM Parametric Map).

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
        anomaly_map: also compute the anomaly maps and write ``sdmad_map_<SeriesInstanceUID>.dcm`` per series
            (:func:`~sdmad_monai.deploy.pipeline.write_map_file`; the detector needs map layers).
        infer_kwargs: ``batch_size``, ``device`` for :func:`~sdmad_monai.inference.infer_volume`.

    Returns:
        The written paths (SR, JSON and, with ``anomaly_map``, the map for each processed series); ``[]`` when no
        series matches (the reasons are logged).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
        NoMatchingSeriesError: ``strict`` and no series matches.
        SeriesProcessingError: a selected series is broken (several series mixed, missing slice, slice index out
            of range); the other series are still processed and their files are listed in ``error.written``.
    """
    require_extra(("highdicom",), "pacs", "Writing DICOM SRs (sdmad process_folder)")
    options = SeriesOptions.create(axis, slices, anomaly_map, **infer_kwargs)
    rules = rules if isinstance(rules, SeriesRules) else load_series_rules(rules)
    finding_codes = finding_codes if isinstance(finding_codes, FindingCodes) else load_finding_codes(finding_codes)
    output_dir = Path(output_dir)
    all_series = read_dicom_headers(input_dir, exclude=[output_dir])
    headers = {uid: [f.header for f in files] for uid, files in all_series.items()}
    selected = select_series_to_process(headers, rules, f"in {input_dir}", strict)
    if not selected:
        return []

    def build(files: list[DicomFile]) -> Callable[[], SeriesJob]:
        folders = sorted({str(f.path.parent) for f in files})
        return lambda: folder_series_job(files, folders[0] if len(folders) == 1 else str(input_dir))

    pending = [PendingSeries(describe_series(headers[uid]), build(all_series[uid])) for uid in selected]

    def sink(findings: SeriesFindings) -> list[Path]:
        written = write_sr_files(findings, output_dir, finding_codes)
        return written + [write_map_file(findings, output_dir)] if anomaly_map else written

    outcome = run_jobs(detector, pending, options, sink=sink)
    raise_failures(outcome)
    return outcome.written
