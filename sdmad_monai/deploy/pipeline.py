"""The one in-memory series pipeline every deployment source shares.

A source (a DICOM folder: :mod:`.process`; a DICOMweb study: :mod:`.dicomweb`; the MONAI Deploy SDK's images:
:mod:`.app_logic`; the DICOM listener, which feeds the study folder it stored durably to :mod:`.process`) only finds
the series and their instances. Everything after that is here, once:

1. :func:`select_series_to_process`: the series rules (:mod:`.rules`) with one message policy: every skipped series
   is logged with its reason; when none is left, one message lists them (:class:`NoMatchingSeriesError` when
   ``strict``, else a warning and ``[]``);
2. :func:`job_from_datasets`: a :class:`SeriesJob` from the pydicom Datasets of one series (headers checked as
   :func:`~sdmad_monai.transforms.io.check_dicom_series_headers` checks a folder, instances sorted along the slice
   normal, the volume as a ``MetaTensor [1, X, Y, Z]`` with the pixels of
   :func:`~sdmad_monai.transforms.io.dicom_pixels`, the values the folder reader gives); the SDK source builds its
   job from the SDK image instead (:func:`~sdmad_monai.deploy.app_logic.infer_series`);
3. :func:`resolve_detector`: a detector, its checkpoint or a function returning it, loaded only once a series can
   be processed;
4. :func:`run_series`: :func:`~sdmad_monai.inference.infer_volume` on the job's volume, the processed slices mapped
   to their instances (:func:`slice_instances`) -> :class:`SeriesFindings`;
5. :func:`run_jobs`: the failure-collecting loop (a broken series never sinks the others) with an optional
   per-series sink -> :class:`InferenceOutcome`, reported by :func:`raise_failures`;
6. sinks: :func:`write_sr_files` (SR + JSON, :func:`~sdmad_monai.deploy.sr.write_sr_report`),
   :func:`write_inference_outcome`, :func:`write_outcome_anomaly_maps` (DICOM Parametric Map,
   :mod:`.map_dicom`); the DICOMweb source stores the SR it builds in memory by STOW-RS, the listener sends the SR
   files it wrote durably by C-STORE (:func:`~sdmad_monai.deploy.listener_io.send_reports`).

torch, MONAI and the model code are imported only once a series is selected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydicom.dataset import Dataset

from .rules import SeriesRules, explain_series

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor

    from ..inference import VolumeResult
    from ..networks.detector import SignDrivenDetector
    from .codes import FindingCodes
    from .sr import AlgorithmInfo

__all__ = [
    "DEFAULT_SLICES",
    "LPS_TO_RAS",
    "InferenceOutcome",
    "NoMatchingSeriesError",
    "PendingSeries",
    "SeriesFindings",
    "SeriesJob",
    "SeriesOptions",
    "SeriesProcessingError",
    "check_series",
    "describe_series",
    "job_from_datasets",
    "parse_slices",
    "raise_failures",
    "resolve_detector",
    "run_jobs",
    "run_series",
    "select_series_to_process",
    "series_folders",
    "slice_instances",
    "volume_metatensor",
    "write_inference_outcome",
    "write_map_file",
    "write_outcome_anomaly_maps",
    "write_sr_files",
]

logger = logging.getLogger(__name__)

#: The fastMRI+ slice policy: canonical axial slices 0, 5 and 10.
DEFAULT_SLICES = (0, 5, 10)

#: DICOM patient coordinates (LPS) to MONAI's world coordinates (RAS).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: a series instance: its file path or its dataset
_Item = TypeVar("_Item")

#: what a source may give as the detector
DetectorSource = Any  # SignDrivenDetector | str | Path | Callable[[], SignDrivenDetector]


class NoMatchingSeriesError(ValueError):
    """No series of the input matches the series rules (raised by the sources with ``strict=True``)."""


class SeriesProcessingError(ValueError):
    """One or more selected series could not be processed (e.g. a missing slice); ``written`` holds the files
    written for the other series."""

    def __init__(self, message: str, written: Sequence[Path] = ()):
        super().__init__(message)
        self.written = list(written)


# ------------------------------------------------------------------------------------------------- small pieces
def parse_slices(slices: Sequence[int] | str | None) -> list[int] | None:
    """Canonical slice indices from ``(0, 5, 10)``, ``"0,5,10"``, or ``None``/``"all"`` (every slice: ``None``).

    Args:
        slices: the slice policy.

    Raises:
        ValueError: not a list of non-negative integers or ``"all"``.
    """
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


def series_folders(datasets: Sequence[Dataset]) -> list[str]:
    """The folders the instances were read from (instances received in memory have no file name)."""
    names = [getattr(ds, "filename", None) for ds in datasets]
    return sorted({str(Path(n).parent) for n in names if isinstance(n, (str, os.PathLike)) and str(n)})


def describe_series(datasets: Sequence[Dataset], location: str | None = None) -> str:
    """``<SeriesInstanceUID> (<SeriesDescription>) in <folder>`` for logs and errors.

    Args:
        datasets: the series' instances (headers suffice).
        location: where the series is (e.g. its DICOMweb URL); default: the folder(s) its files were read from,
            nothing for instances without a file.
    """
    if not datasets:
        return "<empty series>"
    uid = str(getattr(datasets[0], "SeriesInstanceUID", "") or "<no SeriesInstanceUID>")
    description = str(getattr(datasets[0], "SeriesDescription", "") or "")
    if location is None:
        folders = series_folders(datasets)
        location = None if not folders else folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    return f"{uid}{f' ({description})' if description else ''}{f' in {location}' if location else ''}"


def select_series_to_process(
    series: Mapping[str, Sequence[Dataset]],
    rules: SeriesRules,
    where: str,
    strict: bool,
    done: str = "written",
    reasons: Mapping[str, str | None] | None = None,
    locations: Mapping[str, str] | None = None,
) -> list[str]:
    """The SeriesInstanceUIDs that match the rules, in input order, with the one message policy of every source.

    Each selected series is logged (INFO) with the rules' source, each other one with its reason. When none is left,
    one message names the input and every series with its reason.

    Args:
        series: SeriesInstanceUID -> the series' instances (headers suffice).
        rules: the series rules.
        where: the input as named in the message, e.g. ``"in /data/study"`` or ``"of study 1.2.3 on <url>"``.
        strict: raise :class:`NoMatchingSeriesError` when no series matches; otherwise log a warning and return
            ``[]``.
        done: what did not happen, for the message (``"written"``, ``"retrieved, nothing stored"``).
        reasons: the reasons already known (``None``: matches), e.g. from a cheaper first pass; default:
            :func:`~sdmad_monai.deploy.rules.explain_series` of ``series``.
        locations: where each series is, for the log lines (default: its files' folder).

    Raises:
        NoMatchingSeriesError: ``strict`` and no series matches.
    """
    reasons = dict(explain_series(series, rules) if reasons is None else reasons)
    locations = locations or {}
    selected = []
    for uid, reason in reasons.items():
        name = describe_series(series.get(uid, ()), locations.get(uid)) if series.get(uid) else uid
        if reason is None:
            selected.append(uid)
            logger.info("Series %s selected (rules: %s).", name, rules.source)
        else:
            logger.info("Series %s skipped: %s (rules: %s).", name, reason, rules.source)
    if selected:
        return selected
    if reasons:
        detail = "; ".join(f"{uid}: {reason}" for uid, reason in reasons.items())
        message = (
            f"No series {where} matches the series rules ({rules.source}); nothing {done}. "
            f"Skipped {len(reasons)} series - {detail}."
        )
    else:
        message = f"No DICOM series found {where}; nothing {done}. No DICOM file with a SeriesInstanceUID was found."
    if strict:
        raise NoMatchingSeriesError(message)
    logger.warning(message)
    return []


def resolve_detector(detector: DetectorSource, device: str | None = None) -> SignDrivenDetector:
    """The detector itself, the one of a checkpoint path (loaded on ``device``, default the CPU), or what a function
    returns.

    Args:
        detector: a :class:`~sdmad_monai.networks.detector.SignDrivenDetector`, its checkpoint, or a function
            returning it.
        device: ``map_location`` for a checkpoint.
    """
    from ..networks.detector import SignDrivenDetector

    if isinstance(detector, SignDrivenDetector):
        return detector
    if isinstance(detector, (str, Path)):
        return SignDrivenDetector.load(detector, map_location=device or "cpu")
    return detector()


def slice_instances(
    instances: Sequence[_Item], lps_affine: np.ndarray, first: Dataset, axis: str, slice_indices: Sequence[int]
) -> list[_Item] | None:
    """The instance (file or dataset, sorted along the slice normal) of each processed slice, or ``None`` when the
    slices cut across the acquired planes.

    Args:
        instances: the series' instances, sorted along the slice normal.
        lps_affine: the series' LPS affine (:func:`check_series`).
        first: a header of the series (Rows, Columns).
        axis: the slicing axis.
        slice_indices: the processed canonical slice indices.
    """
    from ..transforms.slices import slice_geometry

    shape = (int(first.Columns), int(first.Rows), len(instances))
    geometry = slice_geometry(LPS_TO_RAS @ lps_affine, shape, axis)
    if geometry.slice_dim != 2:
        return None
    return [instances[geometry.array_index(int(i))] for i in slice_indices]


def check_series(datasets: Sequence[Dataset], name: str) -> tuple[list[Dataset], np.ndarray]:
    """The folder checks of a series (:func:`~sdmad_monai.transforms.io.check_dicom_series_headers`: one series,
    geometry present, one frame per instance, no missing slice) on its in-memory instances.

    Args:
        datasets: the instances (their file names, when read from files, name them in errors).
        name: the series as named in logs (left out of the error messages: the caller names the series).

    Returns:
        (instances sorted along the slice normal, LPS affine of the ``[column, row, slice]`` array).

    Raises:
        ValueError: a check fails.
    """
    from ..transforms.io import check_dicom_series_headers

    keys = [
        str(getattr(ds, "filename", "") or "") or f"instance {ds.get('SOPInstanceUID', i)}"
        for i, ds in enumerate(datasets)
    ]
    if len(set(keys)) != len(keys):  # instances read from memory: name them by position
        keys = [f"instance {i} ({ds.get('SOPInstanceUID', '?')})" for i, ds in enumerate(datasets)]
    by_key = dict(zip(keys, datasets))
    try:
        ordered, lps = check_dicom_series_headers(list(zip(keys, datasets)), name)
    except ValueError as error:
        raise ValueError(str(error).replace(f"{name}: ", "").replace(name, "the series")) from error
    return [by_key[k] for k in ordered], lps


def volume_metatensor(volume: np.ndarray, affine: np.ndarray, source: str) -> MetaTensor:
    """``MetaTensor [1, X, Y, Z]`` (float32) with the RAS ``affine`` and the metadata MONAI readers give.

    Args:
        volume: ``[X, Y, Z]`` = ``[column, row, slice]``.
        affine: 4x4 RAS voxel-to-world affine.
        source: recorded as ``filename_or_obj`` (inference names the volume by it).
    """
    import torch
    from monai.data import MetaTensor

    data = np.ascontiguousarray(volume, dtype=np.float32)[None]
    affine = np.asarray(affine, dtype=np.float64)
    meta = {
        "filename_or_obj": source,
        "original_affine": torch.as_tensor(affine),
        "spatial_shape": np.asarray(data.shape[1:]),
        "space": "RAS",
    }
    return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine), meta=meta)


# ---------------------------------------------------------------------------------------------------- the job
@dataclass
class SeriesJob:
    """One series ready for inference.

    Attributes:
        name: the series as named in logs (:func:`describe_series`).
        datasets: its instances, sorted along the slice normal (the SR's evidence).
        lps_affine: LPS voxel-to-world affine of the ``[column, row, slice]`` array.
        volume: the volume, ``MetaTensor [1, X, Y, Z]`` with the RAS affine ``LPS_TO_RAS @ lps_affine``.
        source: what results record as their ``source`` (the series' folder, its URL ...).
    """

    name: str
    datasets: list[Dataset]
    lps_affine: np.ndarray
    volume: Any
    source: str

    @property
    def affine(self) -> np.ndarray:
        """The RAS affine of :attr:`volume`."""
        return LPS_TO_RAS @ self.lps_affine


def job_from_datasets(datasets: Sequence[Dataset], name: str | None = None, source: str | None = None) -> SeriesJob:
    """A :class:`SeriesJob` from the pydicom Datasets of one series, read with their pixel data (files read fully,
    DICOMweb WADO-RS instances, ...).

    The headers are checked (:func:`check_series`) before any pixel is decoded; the pixels are those of
    :func:`~sdmad_monai.transforms.io.dicom_pixels` (float32, rescaled), the values the folder reader gives.

    Args:
        datasets: the instances, in any order.
        name: the series in logs (default :func:`describe_series`).
        source: the job's ``source`` (default: the folder of its files when there is one, else ``name``).

    Raises:
        ValueError: a header check fails, or pixel data is missing, undecodable or of another size.
    """
    from ..transforms.io import dicom_pixels

    name = name or describe_series(datasets)
    ordered, lps = check_series(datasets, name)
    first = ordered[0]
    shape = (int(first.Rows), int(first.Columns))
    planes = []
    for i, ds in enumerate(ordered):
        label = str(getattr(ds, "filename", "") or "") or f"instance {ds.get('SOPInstanceUID', i)}"
        pixels = dicom_pixels(ds, label)
        if pixels.shape != shape:
            raise ValueError(f"{label}: image size {pixels.shape} differs from the rest of the series.")
        planes.append(pixels.T)  # (column, row) = (X, Y)
    folders = series_folders(ordered)
    source = source or (folders[0] if len(folders) == 1 else name)
    volume = volume_metatensor(np.stack(planes, axis=-1), LPS_TO_RAS @ lps, source)
    return SeriesJob(name=name, datasets=ordered, lps_affine=lps, volume=volume, source=source)


@dataclass
class PendingSeries:
    """A selected series whose job is built when the loop reaches it (so that one series' pixels are decoded at a
    time, and a failure to build it is collected like any other).

    Attributes:
        name: the series in logs and in the failure list.
        build: returns its :class:`SeriesJob`; may raise ``ValueError`` (e.g. a missing slice).
    """

    name: str
    build: Callable[[], SeriesJob]


@dataclass(frozen=True)
class SeriesOptions:
    """How each series is run.

    Attributes:
        axis: slicing axis (``axial``, ``coronal``, ``sagittal``).
        slices: canonical slice indices (``None``: every slice).
        anomaly_maps: also compute the anomaly maps and the series' 3D anomaly volume.
        batch_size: slices per forward pass.
        device: torch device (default: the detector's).
    """

    axis: str = "axial"
    slices: tuple[int, ...] | None = DEFAULT_SLICES
    anomaly_maps: bool = False
    batch_size: int = 16
    device: Any = None

    @classmethod
    def create(
        cls,
        axis: str = "axial",
        slices: Sequence[int] | str | None = DEFAULT_SLICES,
        anomaly_maps: bool = False,
        **infer_kwargs: Any,
    ) -> SeriesOptions:
        """The options from the sources' arguments (``slices`` as :func:`parse_slices` takes it; ``infer_kwargs``:
        ``batch_size``, ``device``)."""
        indices = parse_slices(slices)
        return cls(
            axis=axis, slices=None if indices is None else tuple(indices), anomaly_maps=anomaly_maps, **infer_kwargs
        )


@dataclass
class SeriesFindings:
    """SD-MAD results of one series, with what the sinks need.

    Attributes:
        name: the series as named in logs.
        result: per-slice results and study-level findings (:func:`~sdmad_monai.inference.infer_volume`).
        datasets: every instance of the series, sorted along the slice normal (the SR's evidence).
        source_images: the instances of the processed slices (``None`` when slicing across the acquired planes).
        algorithm: the model's identification in the SR.
        volume: the volume that was sliced (``MetaTensor [1, X, Y, Z]``, for further output operators).
        anomaly_volume: ``[X, Y, Z]`` float32 anomaly map on the volume's voxel grid (0 on unprocessed slices), when
            inference was asked for anomaly maps; else ``None``.
    """

    name: str
    result: VolumeResult
    datasets: list[Dataset]
    source_images: list[Dataset] | None
    algorithm: AlgorithmInfo
    volume: Any = None
    anomaly_volume: np.ndarray | None = None


@dataclass
class InferenceOutcome:
    """What the series loop gives the sinks.

    Attributes:
        findings: one entry per processed series.
        failures: ``"series <name>: <reason>"`` per series that could not be processed.
        written: the files the per-series sink wrote (:func:`run_jobs`' ``sink``).
    """

    findings: list[SeriesFindings] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def selected(self) -> int:
        """Number of selected series."""
        return len(self.findings) + len(self.failures)


def run_series(
    detector: SignDrivenDetector,
    job: SeriesJob,
    options: SeriesOptions,
    algorithm: AlgorithmInfo | None = None,
) -> SeriesFindings:
    """Run SD-MAD on one series: :func:`~sdmad_monai.inference.infer_volume` on its volume (the one inference
    path), then the processed slices mapped to their instances for the SR.

    Args:
        detector: the trained detector.
        job: the series.
        options: axis, slices, anomaly maps, batch size, device.
        algorithm: the model identification (computed from ``detector`` when ``None``).

    Raises:
        ValueError: a slice index outside the volume, a slice that cannot be assessed, or maps asked for from a
            detector without map layers (the messages name "the series", not its source).
    """
    from ..inference import infer_volume
    from .sr import AlgorithmInfo

    try:
        result = infer_volume(  # no overlay is drawn, so no display images
            detector,
            job.volume,
            axis=options.axis,
            indices=None if options.slices is None else list(options.slices),
            anomaly_maps=options.anomaly_maps,
            display_images=False,
            batch_size=options.batch_size,
            device=options.device,
        )
    except (ValueError, IndexError) as error:
        raise ValueError(str(error).replace(f"{job.source}: ", "").replace(job.source, "the series")) from error
    result.source = job.source
    return SeriesFindings(
        name=job.name,
        result=result,
        datasets=job.datasets,
        source_images=slice_instances(
            job.datasets, job.lps_affine, job.datasets[0], options.axis, result.slice_indices
        ),
        algorithm=algorithm or AlgorithmInfo.from_detector(detector),
        volume=job.volume,
        anomaly_volume=result.anomaly_volume() if options.anomaly_maps else None,
    )


def run_jobs(
    detector: DetectorSource,
    pending: Sequence[PendingSeries],
    options: SeriesOptions,
    sink: Callable[[SeriesFindings], Sequence[Path]] | None = None,
    device: str | None = None,
) -> InferenceOutcome:
    """:func:`run_series` on every series, collecting the failures instead of stopping at the first.

    The detector is resolved (:func:`resolve_detector`) when the first series' job is built, so a study whose
    series all fail before inference costs no model load.

    Args:
        detector: the detector, its checkpoint, or a function returning it.
        pending: the selected series.
        options: how each series is run.
        sink: called with each series' findings (e.g. :func:`write_sr_files`); its files are added to
            ``outcome.written``; a ``ValueError`` it raises is that series' failure.
        device: ``map_location`` when ``detector`` is a checkpoint path.

    Raises:
        ValueError: ``options.anomaly_maps`` but the detector gives no anomaly maps (checked once, before any
            series is run).
    """
    from ..networks.detector import SignDrivenDetector
    from .sr import AlgorithmInfo

    outcome = InferenceOutcome()
    algorithm = None
    total = len(pending)
    for number, series in enumerate(pending, start=1):
        try:
            job = series.build()
        except (ValueError, IndexError) as error:
            logger.error("[%d/%d] series %s cannot be processed: %s", number, total, series.name, error)
            outcome.failures.append(f"series {series.name}: {error}")
            continue
        if not isinstance(detector, SignDrivenDetector):
            detector = resolve_detector(detector, device)
        if algorithm is None:
            if options.anomaly_maps and getattr(detector, "anomaly_head", None) is None:
                raise ValueError(
                    "Anomaly maps were asked for (--anomaly-map / SDMAD_ANOMALY_MAP) but the checkpoint's detector "
                    "gives none: it was built with map_layers=[]. Use a checkpoint whose detector has map layers "
                    "(map_layers=None or a list), or leave the option off."
                )
            algorithm = AlgorithmInfo.from_detector(detector)
        try:
            findings = run_series(detector, job, options, algorithm)
            written = list(sink(findings)) if sink is not None else []
        except (ValueError, IndexError) as error:
            logger.error("[%d/%d] series %s failed: %s", number, total, series.name, error)
            outcome.failures.append(f"series {series.name}: {error}")
            continue
        positives = findings.result.findings.positive_names()
        logger.info(
            "[%d/%d] series %s: %d slices, findings: %s%s",
            number,
            total,
            series.name,
            len(findings.result.slice_indices),
            ", ".join(positives) or "none",
            f"; wrote {', '.join(str(p) for p in written)}" if written else "",
        )
        outcome.findings.append(findings)
        outcome.written.extend(written)
    return outcome


def raise_failures(outcome: InferenceOutcome, written: Sequence[Path] | None = None) -> None:
    """Report the failed series of ``outcome``, if any.

    Args:
        outcome: the loop's outcome.
        written: the files written for the other series (default ``outcome.written``).

    Raises:
        SeriesProcessingError: some series failed; ``error.written`` lists the files of the others.
    """
    if outcome.failures:
        raise SeriesProcessingError(
            f"{len(outcome.failures)} of {outcome.selected} selected series could not be processed: "
            + " | ".join(outcome.failures),
            outcome.written if written is None else written,
        )


# ------------------------------------------------------------------------------------------------------- sinks
def write_sr_files(
    findings: SeriesFindings, output_dir: str | Path, finding_codes: FindingCodes | str | Path | None = None
) -> list[Path]:
    """The SR and its JSON copy of one series (:func:`~sdmad_monai.deploy.sr.write_sr_report`).

    Returns:
        ``[sr_path, json_path]``.
    """
    from .sr import write_sr_report

    return write_sr_report(
        findings.result,
        findings.datasets,
        findings.algorithm,
        output_dir,
        source_images=findings.source_images,
        finding_codes=finding_codes,
    )


def write_inference_outcome(
    outcome: InferenceOutcome, output_dir: str | Path, finding_codes: FindingCodes | str | Path | None = None
) -> list[Path]:
    """Write the SR and its JSON copy of every processed series (:func:`write_sr_files`), then report the failed
    series.

    Args:
        outcome: the loop's outcome.
        output_dir: where the files go.
        finding_codes: how the SR codes the categories (``None``: the shipped codes).

    Returns:
        The written paths (SR, JSON per series).

    Raises:
        SeriesProcessingError: some series failed; the files of the others are written and listed in
            ``error.written``.
    """
    written: list[Path] = []
    for findings in outcome.findings:
        paths = write_sr_files(findings, output_dir, finding_codes)
        logger.info("Series %s: wrote %s", findings.name, ", ".join(str(p) for p in paths))
        written.extend(paths)
    raise_failures(outcome, written)
    if not written:
        logger.warning("No series was processed; nothing written to %s.", output_dir)
    return written


def write_outcome_anomaly_maps(outcome: InferenceOutcome, output_dir: str | Path) -> list[Path]:
    """Write the 3D anomaly map of every processed series as a DICOM Parametric Map
    (:func:`~sdmad_monai.deploy.map_dicom.write_anomaly_map`): ``sdmad_map_<SeriesInstanceUID>.dcm``.

    The series that failed inference are reported by :func:`write_inference_outcome` (the SR writer), not here.

    Returns:
        The written paths, one per series.

    Raises:
        ValueError: a series has no anomaly volume (inference ran without ``anomaly_maps``).
    """
    missing = [f.name for f in outcome.findings if f.anomaly_volume is None]
    if missing:
        raise _no_anomaly_volume(", ".join(missing))
    return [write_map_file(findings, output_dir) for findings in outcome.findings]


def _no_anomaly_volume(series: str) -> ValueError:
    return ValueError(
        f"No anomaly volume for series {series}: run the inference with anomaly_maps=True (--anomaly-map / "
        "SDMAD_ANOMALY_MAP=1) to write the DICOM anomaly maps."
    )


def write_map_file(findings: SeriesFindings, output_dir: str | Path) -> Path:
    """The 3D anomaly map of one series as a DICOM Parametric Map (:func:`~sdmad_monai.deploy.map_dicom.
    write_anomaly_map`): ``sdmad_map_<SeriesInstanceUID>.dcm``.

    Raises:
        ValueError: the series has no anomaly volume (inference ran without ``anomaly_maps``).
    """
    from .map_dicom import write_anomaly_map

    if findings.anomaly_volume is None:
        raise _no_anomaly_volume(findings.name)
    path = write_anomaly_map(
        findings.anomaly_volume,
        findings.datasets,
        findings.algorithm,
        findings.result.slice_indices,
        output_dir,
        axis=findings.result.axis,
        processed_images=findings.source_images,
    )
    logger.info("Series %s: wrote the anomaly map %s", findings.name, path)
    return path
