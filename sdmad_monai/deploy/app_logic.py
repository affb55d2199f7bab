"""What each operator of the SD-MAD MONAI Deploy application (``bundle/deploy_app``) does, without the SDK.

The application (MONAI Deploy App SDK 4.0.0, on Holoscan) is a chain of thin operators::

    DICOMDataLoaderOperator                      SDK: every file under -i -> DICOMStudy / DICOMSeries / instances
      -> SDMADSeriesSelectorOperator             select_study_series: the site-editable series rules (rules.py)
      -> SDMADSeriesToVolumeOperator             series_volumes: header checks, then the SDK's own conversion
                                                 (DICOMSeriesToVolumeOperator.convert_to_image) of every selected
                                                 series, not only the first one
      -> SDMADInferenceOperator                  infer_series_volumes: SDK Image -> MetaTensor (image_to_metatensor)
                                                 -> pipeline.run_jobs / run_series (infer_volume, findings)
      -> SDMADSRWriterOperator                   write_inference_outcome: write_sr_report (SR + JSON) per series
      -> SDMADAnomalyMapWriterOperator           write_outcome_anomaly_maps: the 3D anomaly map per series as a DICOM
                                                 Parametric Map (map_dicom.py); only with --anomaly-map (off by default)

Everything here works on plain pydicom Datasets, numpy arrays and duck-typed SDK domain objects (a study has
``get_all_series()``, a series ``get_sop_instances()``, an instance ``get_native_sop_instance()``), so it is tested
without the SDK. The operators in ``bundle/deploy_app/app.py`` only move objects between ports.

Conventions of the SDK's ``DICOMSeriesToVolumeOperator`` (4.0.0), checked against its source:

- ``Image.asnumpy()`` is ``[D, H, W]`` = ``[slice, row, column]``, slices sorted by ascending position along the
  slice normal (the cross product of the two ImageOrientationPatient cosines) - the order
  :func:`~sdmad_monai.transforms.io.validate_dicom_series` uses too.
- ``metadata["dicom_affine_transform"]`` (LPS) and ``metadata["nifti_affine_transform"]`` (RAS, = ``"affine"``)
  index the *transposed* array ``[W, H, D]`` = ``[column, row, slice]`` (MONAI's ITK layout): column 0 follows the row
  direction cosine, column 1 the column direction cosine, column 2 is ``(P_last - P_first) / (n - 1)`` and column 3
  the first slice's ImagePositionPatient.
- Its columns 0 and 1 are scaled by ``PixelSpacing[0]`` and ``PixelSpacing[1]`` respectively, which is swapped: one
  step along a row (the next column) is ``PixelSpacing[1]`` (column spacing) mm. :func:`sdk_image_affine` rebuilds
  both columns from the direction cosines and ``row_pixel_spacing`` / ``col_pixel_spacing``; square pixels give the
  SDK's matrix exactly.
- A series of one instance gets no affine at all.
- Pixel values are ``apply_rescale`` + ``apply_presentation_lut`` (MONOCHROME1 is inverted) of pydicom; the command
  line path uses ``pixel_array * RescaleSlope + RescaleIntercept``. Both agree for MONOCHROME2 images (MR).

The DICOM headers of each series are checked exactly as the command line checks a series folder (one series, one
frame per file, geometry tags present, no missing slice:
:func:`~sdmad_monai.transforms.io.check_dicom_series_headers`) before any pixel data is decoded, and the affine
built from the SDK metadata must equal the one built from the headers, so both paths slice the same volume.

Size: the MONAI Deploy source of the series pipeline (:mod:`sdmad_monai.deploy.pipeline`), testable without the SDK:
SDK objects -> jobs; the selection, the series loop and the sinks are the pipeline's.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from .codes import FindingCodes, load_finding_codes
from .pipeline import (
    DEFAULT_SLICES,
    LPS_TO_RAS,
    InferenceOutcome,
    PendingSeries,
    SeriesFindings,
    SeriesJob,
    SeriesOptions,
    check_series,
    describe_series,
    parse_slices,
    resolve_detector,
    run_jobs,
    run_series,
    select_series_to_process,
    series_folders,
    volume_metatensor,
    write_inference_outcome,
    write_outcome_anomaly_maps,
)
from .rules import SeriesRules, load_series_rules

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor

    from ..networks.detector import SignDrivenDetector
    from .sr import AlgorithmInfo

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "DeployAppOptions",
    "InferenceOutcome",
    "SeriesFindings",
    "SeriesVolume",
    "describe_series",
    "image_to_metatensor",
    "infer_series",
    "infer_series_volumes",
    "load_app_detector",
    "resolve_checkpoint",
    "sdk_image_affine",
    "select_study_series",
    "series_datasets",
    "sdk_series_job",
    "series_volumes",
    "write_inference_outcome",
    "write_outcome_anomaly_maps",
]

logger = logging.getLogger(__name__)

#: Option -> environment variable read when the option is not on the command line (a MONAI Application Package
#: is configured through its environment).
ENVIRONMENT_VARIABLES = {
    "rules": "SDMAD_SERIES_RULES",
    "finding_codes": "SDMAD_FINDING_CODES",
    "slices": "SDMAD_SLICES",
    "axis": "SDMAD_AXIS",
    "device": "SDMAD_DEVICE",
    "batch_size": "SDMAD_BATCH_SIZE",
    "allow_no_match": "SDMAD_ALLOW_NO_MATCH",
    "anomaly_map": "SDMAD_ANOMALY_MAP",
}

#: The options that are switches (``1/true/yes/on`` or ``0/false/no/off``).
_SWITCHES = ("allow_no_match", "anomaly_map")

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


# ------------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class DeployAppOptions:
    """The application's own options (the SDK owns ``-i/-o/-m/-w/-l/-t``).

    Attributes:
        rules: series rules JSON of the site (``None``: the shipped axial brain MR rules).
        finding_codes: finding-codes JSON of the site: how the SR codes each category (``None``: the shipped
            codes, :mod:`~sdmad_monai.deploy.codes`).
        slices: canonical slice indices (``"0,5,10"``, the fastMRI+ policy) or ``"all"``.
        axis: slicing axis: ``axial``, ``coronal`` or ``sagittal``.
        device: torch device; ``auto`` takes CUDA when available, else the CPU.
        batch_size: slices per forward pass.
        allow_no_match: a study without a matching series ends the run successfully (nothing written) instead of
            failing with the reasons.
        anomaly_map: also write each series' 3D anomaly map as a DICOM Parametric Map
            (:mod:`~sdmad_monai.deploy.map_dicom`); the checkpoint's detector must give anomaly maps.
    """

    rules: str | None = None
    finding_codes: str | None = None
    slices: str = ",".join(str(i) for i in DEFAULT_SLICES)
    axis: str = "axial"
    device: str = "auto"
    batch_size: int = 16
    allow_no_match: bool = False
    anomaly_map: bool = False

    def __post_init__(self) -> None:
        from ..transforms.slices import ANATOMICAL_AXES

        if self.axis not in ANATOMICAL_AXES:
            raise ValueError(f"axis must be one of {sorted(ANATOMICAL_AXES)}, got {self.axis!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        parse_slices(self.slices)  # raises a clear error for a bad slice list

    @property
    def slice_indices(self) -> list[int] | None:
        """The slice indices for :func:`~sdmad_monai.inference.infer_volume` (``None``: every slice)."""
        return parse_slices(self.slices)

    def series_rules(self) -> SeriesRules:
        """The rules file, read and validated (:func:`~sdmad_monai.deploy.rules.load_series_rules`)."""
        return load_series_rules(self.rules)

    def finding_code_map(self) -> FindingCodes:
        """The finding-codes file, read and validated (:func:`~sdmad_monai.deploy.codes.load_finding_codes`)."""
        return load_finding_codes(self.finding_codes)

    def torch_device(self) -> str:
        """``device``, with ``auto`` resolved to ``cuda`` when a GPU is usable, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @classmethod
    def parse(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> tuple[DeployAppOptions, list[str]]:
        """Split the application's options from the SDK's arguments.

        Command line options win over the environment variables of :data:`ENVIRONMENT_VARIABLES`, which win over
        the defaults.

        Args:
            argv: the program name followed by the arguments (``Application.argv``).
            environ: the environment (default ``os.environ``).

        Returns:
            The options, and ``argv`` without them (what the SDK's ``parse_args`` accepts).

        Raises:
            ValueError: a value that cannot be used (names the option or variable and what is expected).
        """
        environ = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        parser.add_argument("--rules")
        parser.add_argument("--finding-codes", dest="finding_codes")
        parser.add_argument("--slices")
        parser.add_argument("--axis")
        parser.add_argument("--device")
        parser.add_argument("--batch-size", dest="batch_size")
        parser.add_argument("--allow-no-match", dest="allow_no_match", action="store_const", const="1")
        parser.add_argument("--anomaly-map", dest="anomaly_map", action="store_const", const="1")
        args = list(argv)
        known, rest = parser.parse_known_args(args[1:])
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT_VARIABLES.items():
            value = getattr(known, name)
            where = f"--{name.replace('_', '-')}"
            if value is None and environ.get(variable, "") != "":
                value, where = environ[variable], f"environment variable {variable}"
            if value is None:
                continue
            if name == "batch_size":
                try:
                    value = int(value)
                except ValueError as error:
                    raise ValueError(f"{where} must be a positive integer, got {value!r}.") from error
            elif name in _SWITCHES:
                text = str(value).strip().lower()
                if text not in _TRUE | _FALSE:
                    raise ValueError(f"{where} must be 1/true/yes or 0/false/no, got {value!r}.")
                value = text in _TRUE
            values[name] = value
        try:
            options = cls(**values)
        except ValueError as error:
            raise ValueError(f"Bad SD-MAD application option: {error}") from error
        return options, args[:1] + rest


# ---------------------------------------------------------------------------------------------------- selection
def series_datasets(series: Any) -> list[Dataset]:
    """The pydicom Datasets of an SDK ``DICOMSeries`` (its instances, in the series' current order)."""
    return [sop.get_native_sop_instance() for sop in series.get_sop_instances()]


def select_study_series(
    studies: Sequence[Any], rules: SeriesRules, strict: bool = True, source: str = "the input"
) -> list[tuple[Any, list[Any]]]:
    """The series of each study that match the rules
    (:func:`~sdmad_monai.deploy.pipeline.select_series_to_process`: every other series is logged with its reason).

    Args:
        studies: SDK ``DICOMStudy`` objects (``get_all_series()``).
        rules: the series rules.
        strict: raise when no series matches (otherwise log a warning and return ``[]``).
        source: what to name as the searched input in the no-match message (e.g. the input folder).

    Returns:
        ``(study, [matching series])`` for each study with at least one matching series, in input order.

    Raises:
        NoMatchingSeriesError: ``strict`` and no series matches; the message lists every series and its reason.
    """
    by_study = [(study, {str(s.SeriesInstanceUID): s for s in study.get_all_series()}) for study in studies]
    datasets = {uid: series_datasets(s) for _, by_uid in by_study for uid, s in by_uid.items()}
    chosen = set(select_series_to_process(datasets, rules, f"in {source}", strict))
    selected = [(study, [s for uid, s in by_uid.items() if uid in chosen]) for study, by_uid in by_study]
    return [(study, matching) for study, matching in selected if matching]


# ----------------------------------------------------------------------------------------------- SDK Image -> MONAI
def sdk_image_affine(metadata: Mapping[str, Any], source: str = "<SDK image>") -> np.ndarray:
    """The RAS voxel-to-world affine of an SDK Image's transposed array ``[column, row, slice]``.

    Built from the metadata ``DICOMSeriesToVolumeOperator`` writes: the direction cosines and pixel spacings
    (column 0 = row cosine x column spacing, column 1 = column cosine x row spacing) and the slice step and origin of
    ``dicom_affine_transform`` (see the module docstring for why the SDK's own matrix is not taken as is).

    Args:
        metadata: ``Image.metadata()``.
        source: name used in error messages.

    Returns:
        4x4 RAS affine (float64).

    Raises:
        ValueError: a key is missing or not finite (e.g. a single-instance series, for which the SDK writes no
            affine).
    """
    keys = (
        "row_direction_cosine",
        "col_direction_cosine",
        "row_pixel_spacing",
        "col_pixel_spacing",
        "dicom_affine_transform",
    )
    missing = [k for k in keys if metadata.get(k) is None]
    if missing:
        raise ValueError(
            f"{source}: the SDK image metadata lacks {missing}; expected the geometry DICOMSeriesToVolumeOperator "
            "writes for a series of at least 2 instances with ImageOrientationPatient, ImagePositionPatient and "
            "PixelSpacing."
        )
    try:
        row_cosine = np.asarray(metadata["row_direction_cosine"], dtype=np.float64).reshape(3)
        column_cosine = np.asarray(metadata["col_direction_cosine"], dtype=np.float64).reshape(3)
        row_spacing = float(metadata["row_pixel_spacing"])  # PixelSpacing[0]: between rows
        column_spacing = float(metadata["col_pixel_spacing"])  # PixelSpacing[1]: between columns
        dicom = np.asarray(metadata["dicom_affine_transform"], dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: unusable geometry in the SDK image metadata: {error}.") from error
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * column_spacing
    lps[:3, 1] = column_cosine * row_spacing
    lps[:3, 2:4] = dicom[:3, 2:4]
    if not np.all(np.isfinite(lps)) or abs(np.linalg.det(lps[:3, :3])) < 1e-9:
        raise ValueError(f"{source}: the SDK image geometry gives a degenerate affine {lps.tolist()}.")
    return LPS_TO_RAS @ lps


def image_to_metatensor(array: Any, metadata: Mapping[str, Any], source: str = "<SDK image>") -> MetaTensor:
    """An SDK Image (``asnumpy()`` ``[D, H, W]`` + ``metadata()``) as the ``MetaTensor [1, X, Y, Z]`` MONAI readers
    give (``X`` = column, ``Y`` = row, ``Z`` = slice; float32; RAS affine of :func:`sdk_image_affine`).

    Args:
        array: the SDK image array ``[slice, row, column]``.
        metadata: the SDK image metadata.
        source: recorded as ``filename_or_obj`` and used in error messages.

    Returns:
        The volume, ready for :func:`~sdmad_monai.inference.infer_volume`.

    Raises:
        ValueError: not a 3D array, or unusable geometry.
    """
    data = np.asarray(array)
    if data.ndim != 3:
        raise ValueError(f"{source}: expected an SDK image array [slices, rows, columns], got shape {data.shape}.")
    return volume_metatensor(np.transpose(data, (2, 1, 0)), sdk_image_affine(metadata, source), source)


# --------------------------------------------------------------------------------------------- series -> volume
@dataclass
class SeriesVolume:
    """One selected series between the volume and the inference operators.

    Attributes:
        name: the series as named in logs (:func:`~sdmad_monai.deploy.pipeline.describe_series`).
        datasets: its instances in the order of ``array``'s slices.
        array: the SDK image array ``[slice, row, column]`` (``None`` when the series failed).
        metadata: the SDK image metadata.
        error: why the series cannot be processed (``None`` when it can).
    """

    name: str
    datasets: list[Dataset] = field(default_factory=list)
    array: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def series_volumes(
    selected: Iterable[tuple[Any, Any]], convert: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]]
) -> list[SeriesVolume]:
    """Check each selected series' headers (:func:`~sdmad_monai.deploy.pipeline.check_series`), then convert it
    with the SDK.

    A series that fails (e.g. a missing slice) becomes a :class:`SeriesVolume` with ``error`` set and is reported
    at the end of the run; the others go on.

    Args:
        selected: ``(study, series)`` SDK objects.
        convert: ``(study, series) -> (array [D, H, W], metadata)``, the SDK's conversion (it sorts the series'
            instances in place).

    Returns:
        One :class:`SeriesVolume` per series, in input order.
    """
    volumes = []
    for study, series in selected:
        datasets = series_datasets(series)
        name = describe_series(datasets)
        try:
            check_series(datasets, name)
            array, metadata = convert(study, series)
        except (ValueError, RuntimeError) as error:
            logger.error("Series %s cannot be processed: %s", name, error)
            volumes.append(SeriesVolume(name=name, datasets=datasets, error=str(error)))
            continue
        volumes.append(SeriesVolume(name=name, datasets=series_datasets(series), array=array, metadata=dict(metadata)))
    return volumes


def sdk_series_job(volume: SeriesVolume, source: str | None = None) -> SeriesJob:
    """The :class:`~sdmad_monai.deploy.pipeline.SeriesJob` of one converted series.

    The headers are checked and sorted as for a folder; the SDK's slice order and image shape must be the same, and
    the SDK image's geometry (:func:`image_to_metatensor`) must equal the headers' one, so both paths slice the same
    volume.

    Args:
        volume: the series.
        source: the job's ``source`` (default: the series' folder, else its name).

    Raises:
        ValueError: ``volume.error``, or a check fails.
    """
    if volume.error is not None:
        raise ValueError(volume.error)
    ordered, lps = check_series(volume.datasets, volume.name)
    if [id(ds) for ds in ordered] != [id(ds) for ds in volume.datasets]:
        raise ValueError(
            f"series {volume.name}: the SDK image's slice order differs from the instances' positions along the slice "
            "normal; expected DICOMSeriesToVolumeOperator to sort them the same way."
        )
    first = ordered[0]
    expected_shape = (len(ordered), int(first.Rows), int(first.Columns))
    if tuple(np.shape(volume.array)) != expected_shape:
        raise ValueError(
            f"series {volume.name}: the SDK image has shape {tuple(np.shape(volume.array))}, expected "
            f"{expected_shape} (slices, rows, columns)."
        )
    folders = series_folders(ordered)
    source = source or (folders[0] if len(folders) == 1 else volume.name)
    tensor = image_to_metatensor(volume.array, volume.metadata, source)
    expected = LPS_TO_RAS @ lps
    if not np.allclose(tensor.affine.numpy(), expected, atol=1e-3):
        raise ValueError(
            f"series {volume.name}: the SDK image geometry {tensor.affine.numpy().round(4).tolist()} differs from the "
            f"one of its DICOM headers {expected.round(4).tolist()}."
        )
    return SeriesJob(name=volume.name, datasets=ordered, lps_affine=lps, volume=tensor, source=source)


# ------------------------------------------------------------------------------------------------------ inference
def infer_series(
    detector: SignDrivenDetector,
    volume: SeriesVolume,
    axis: str = "axial",
    slices: Sequence[int] | str | None = DEFAULT_SLICES,
    algorithm: AlgorithmInfo | None = None,
    source: str | None = None,
    anomaly_maps: bool = False,
    **infer_kwargs: Any,
) -> SeriesFindings:
    """Run SD-MAD on one converted series: :func:`sdk_series_job`, then
    :func:`~sdmad_monai.deploy.pipeline.run_series` (the one inference path).

    Args:
        detector: the trained detector.
        volume: the series (``error`` must be ``None``).
        axis: slicing axis.
        slices: canonical slice indices, ``"0,5,10"``, or ``None``/``"all"``.
        algorithm: the model identification (computed from ``detector`` when ``None``).
        source: recorded as the result's ``source`` (default: the series' folder).
        anomaly_maps: also compute the anomaly maps and the series' 3D anomaly volume.
        infer_kwargs: ``batch_size``, ``device``.

    Raises:
        ValueError: the series fails a check, a slice index is outside the volume, or maps are asked for from a
            detector without map layers.
    """
    options = SeriesOptions.create(axis, slices, anomaly_maps, **infer_kwargs)
    return run_series(detector, sdk_series_job(volume, source), options, algorithm)


def infer_series_volumes(
    detector: SignDrivenDetector | Callable[[], SignDrivenDetector],
    volumes: Sequence[SeriesVolume],
    axis: str = "axial",
    slices: Sequence[int] | str | None = DEFAULT_SLICES,
    anomaly_maps: bool = False,
    **infer_kwargs: Any,
) -> InferenceOutcome:
    """:func:`infer_series` on every series, collecting the failures instead of stopping at the first
    (:func:`~sdmad_monai.deploy.pipeline.run_jobs`).

    Args:
        detector: the detector, or a function returning it (called only when a series can be processed).
        volumes: the converted series.
        axis: slicing axis.
        slices: canonical slice indices.
        anomaly_maps: also compute each series' 3D anomaly volume (``SeriesFindings.anomaly_volume``).
        infer_kwargs: ``batch_size``, ``device``.

    Raises:
        ValueError: ``anomaly_maps`` is asked for but the detector gives no anomaly maps (checked once, before any
            series is processed).
    """
    options = SeriesOptions.create(axis, slices, anomaly_maps, **infer_kwargs)
    pending = [PendingSeries(v.name, functools.partial(sdk_series_job, v)) for v in volumes]
    return run_jobs(detector, pending, options)


# ------------------------------------------------------------------------------------------------------- model
def resolve_checkpoint(model_path: str | Path) -> Path:
    """The checkpoint file behind the SDK's model path (``-m``): the file itself, or in a folder ``model.pt`` or
    its only ``.pt``/``.pth`` file.

    Raises:
        FileNotFoundError: no such file, or a folder without a single checkpoint.
    """
    path = Path(model_path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.pt").is_file():
            return path / "model.pt"
        candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".pt", ".pth"))
        if len(candidates) == 1:
            return candidates[0]
        raise FileNotFoundError(
            f"Model folder {path} holds {len(candidates)} .pt/.pth files and no model.pt; pass the checkpoint "
            "file with -m (a SignDrivenDetector checkpoint, e.g. models/model.pt)."
        )
    raise FileNotFoundError(f"Model {path} does not exist (pass a SignDrivenDetector checkpoint with -m).")


def load_app_detector(model_path: str | Path, device: str = "cpu") -> SignDrivenDetector:
    """The detector of the checkpoint at ``model_path`` (:func:`resolve_checkpoint`), on ``device``."""
    checkpoint = resolve_checkpoint(model_path)
    logger.info("Loading the SD-MAD checkpoint %s on %s.", checkpoint, device)
    return resolve_detector(checkpoint, device)
