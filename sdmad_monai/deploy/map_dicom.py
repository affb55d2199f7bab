"""The 3D SD-MAD anomaly map of a DICOM series as a DICOM Parametric Map (highdicom), on the series' own geometry.

One multi-frame instance (:class:`highdicom.pm.ParametricMap`, SOP class 1.2.840.10008.5.1.4.1.1.30) per source
series, written next to the SR as ``sdmad_map_<source SeriesInstanceUID>.dcm``:

- one frame per source instance (slice), float32 pixel values (``FloatPixelData``) = the anomaly map on the source
  image's rows and columns, i.e. :meth:`~sdmad_monai.inference.VolumeResult.anomaly_volume` ``[X, Y, Z]`` (column,
  row, slice) of the series' voxel grid. The plane orientation, pixel spacing and each frame's plane position are the
  source instances' (highdicom copies them and orders the frames along the slice normal); each frame references its
  source instance (Derivation Image Sequence, Spatial Locations Preserved = YES), and the instance references the
  whole source series (Referenced Series Sequence);
- real-world value mapping: stored value = anomaly score (slope 1, intercept 0), quantity Score (SCT 246262008),
  unit UCUM ``1`` (no units), value range = the map's minimum and maximum; a default window over that range;
- frames of slices that were not processed are 0. Which slices were processed is said in ContentDescription (short),
  ImageComments (complete: canonical slice indices along the slicing axis and the InstanceNumbers of their source
  images) and, when the slicing axis is the acquisition plane, per frame in FrameContentSequence's FrameLabel
  (``processed: <axis> slice <i>`` or ``not processed``);
- SeriesDescription ``SD-MAD anomaly map (research use only)``, ContentQualification ``RESEARCH``.

UIDs are derived like the SR's (:func:`~sdmad_monai.deploy.sr.derive_uid`) from the source study and series UIDs,
the algorithm version and the checkpoint fingerprint: a re-run of the same model on the same series gives the same
SeriesInstanceUID and SOPInstanceUID (a PACS replaces the earlier copy); another model gives other UIDs.

Why a Parametric Map and not a Secondary Capture: it keeps the score as a float with its meaning (real-world value
mapping) and the source geometry per frame, so viewers (3D Slicer, OHIF) overlay it on the scan; a Secondary Capture
would hold rescaled integers without geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import missing_extra

try:
    import highdicom as hd
except ImportError as _error:  # an optional dependency: the `pacs` extra
    raise missing_extra("highdicom", "pacs", "Writing a DICOM Parametric Map") from _error
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ..anomaly_volume import format_slice_ranges
from ..utils import atomic_path
from .sr import ALGORITHM_NAME, SR_CODES, check_source, derive_uid, sr_evidence

if TYPE_CHECKING:  # pragma: no cover
    from .sr import AlgorithmInfo

__all__ = [
    "MAP_CONTENT_LABEL",
    "MAP_SERIES_DESCRIPTION",
    "anomaly_map_frames",
    "anomaly_map_identifiers",
    "build_anomaly_map",
    "write_anomaly_map",
]

logger = logging.getLogger(__name__)

#: SeriesDescription of the map series.
MAP_SERIES_DESCRIPTION = "SD-MAD anomaly map (research use only)"
#: ContentLabel (CS, 16 characters) and LUT label of the map.
MAP_CONTENT_LABEL = "SDMAD_ANOMALY"
#: Default SeriesNumber of the map series (the SR's is 9901).
DEFAULT_SERIES_NUMBER = 9902
#: Quantity of the real-world value mapping.
_SCORE: Code = SR_CODES["score"]


def anomaly_map_identifiers(
    study_instance_uid: str, series_instance_uid: str, algorithm: AlgorithmInfo
) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the map of source series ``series_instance_uid`` (deterministic: same
    study, series, algorithm version and checkpoint fingerprint -> same UIDs, different from the SR's)."""
    key = (study_instance_uid, series_instance_uid, algorithm.version, algorithm.fingerprint)
    return derive_uid("map-series", *key), derive_uid("map-instance", *key)


def _slice_positions(source_datasets: Sequence[Dataset], name: str) -> np.ndarray:
    """Positions (mm) of the instances along the slice normal; raises unless they are single-frame images of one
    size, one orientation, strictly increasing along the normal (the order of the SDK image and of
    :func:`~sdmad_monai.transforms.io.check_dicom_series_headers`)."""
    first = source_datasets[0]
    try:
        orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64).reshape(6)
        positions = np.asarray([ds.ImagePositionPatient for ds in source_datasets], dtype=np.float64).reshape(-1, 3)
        sizes = {(int(ds.Rows), int(ds.Columns)) for ds in source_datasets}
        orientations = {
            tuple(np.round(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), 4)) for ds in source_datasets
        }
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(
            f"series {name}: every source instance needs Rows, Columns, ImageOrientationPatient and "
            f"ImagePositionPatient for the anomaly map ({error})."
        ) from error
    frames = [int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in source_datasets]
    if len(sizes) != 1 or len(orientations) != 1 or any(f != 1 for f in frames):
        raise ValueError(
            f"series {name}: expected single-frame instances of one size and orientation for the anomaly map, got "
            f"sizes {sorted(sizes)}, {len(orientations)} orientation(s), frames per instance {sorted(set(frames))}."
        )
    along = positions @ np.cross(orientation[:3], orientation[3:])
    if len(along) > 1 and not np.all(np.diff(along) > 0):
        raise ValueError(
            f"series {name}: the source instances must be sorted by position along the slice normal (as the SDK "
            f"image's slices are); got positions {np.round(along, 3).tolist()} mm."
        )
    return along


def anomaly_map_frames(volume: np.ndarray, source_datasets: Sequence[Dataset]) -> np.ndarray:
    """The frames of the map: ``volume`` ``[X=column, Y=row, Z=slice]`` as ``[Z, rows, columns]`` float32, frame
    ``k`` for source instance ``k``.

    Raises:
        ValueError: ``volume`` is not 3D, does not have the series' ``(Columns, Rows, instances)`` shape, or holds
            a non-finite value.
    """
    volume = np.asarray(volume)
    first = source_datasets[0]
    name = str(first.SeriesInstanceUID)
    expected = (int(first.Columns), int(first.Rows), len(source_datasets))
    if volume.ndim != 3 or tuple(volume.shape) != expected:
        raise ValueError(
            f"series {name}: the anomaly volume has shape {tuple(volume.shape)}, expected {expected} (columns, rows, "
            "slices: VolumeResult.anomaly_volume() of the series' own voxel grid)."
        )
    if not np.all(np.isfinite(volume)):
        raise ValueError(f"series {name}: the anomaly volume holds NaN or infinite values.")
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0)), dtype=np.float32)


def _processed_frames(
    source_datasets: Sequence[Dataset],
    processed_images: Sequence[Dataset] | None,
    slice_indices: Sequence[int],
    name: str,
) -> dict[str, int] | None:
    """SOPInstanceUID of each processed source instance -> canonical slice index (``None`` when the slices cut
    across the acquired planes)."""
    if processed_images is None:
        return None
    if len(processed_images) != len(slice_indices):
        raise ValueError(
            f"series {name}: {len(processed_images)} processed images for {len(slice_indices)} slice indices; "
            "expected one source instance per processed slice."
        )
    known = {str(ds.SOPInstanceUID) for ds in source_datasets}
    processed = {str(ds.SOPInstanceUID): int(i) for ds, i in zip(processed_images, slice_indices)}
    unknown = sorted(set(processed) - known)
    if unknown:
        raise ValueError(f"series {name}: processed images {unknown} are not instances of the source series.")
    return processed


def _copy_body_part(pmap: Dataset, source: Dataset) -> None:
    """The source series' body part and laterality (General Series): the map is of the same anatomy. Laterality is
    Type 2C (required for a paired body part), so it is copied only when the source has it, as it is."""
    for keyword in ("BodyPartExamined", "Laterality"):
        if keyword in source:
            setattr(pmap, keyword, source[keyword].value)


def build_anomaly_map(
    volume: np.ndarray,
    source_datasets: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    slice_indices: Sequence[int],
    axis: str = "axial",
    processed_images: Sequence[Dataset] | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    institution_name: str | None = None,
) -> hd.pm.ParametricMap:
    """The Parametric Map of one series' 3D anomaly map (layout in the module docstring).

    Args:
        volume: ``[X, Y, Z]`` = ``[column, row, slice]`` anomaly map on the series' voxel grid, 0 on unprocessed
            slices (:meth:`~sdmad_monai.inference.VolumeResult.anomaly_volume` of the series' MetaTensor).
        source_datasets: headers of every instance of the series, sorted along the slice normal (slice ``k`` of
            ``volume`` is instance ``k``).
        algorithm: the model's identification (:meth:`~sdmad_monai.deploy.sr.AlgorithmInfo.from_detector`).
        slice_indices: canonical indices (along ``axis``) of the processed slices.
        axis: the slicing axis.
        processed_images: the instance of each processed slice (same order as ``slice_indices``), or ``None`` when
            the slices cut across the acquired planes.
        series_number: SeriesNumber of the map series.
        institution_name: optional InstitutionName.

    Returns:
        The Parametric Map instance.

    Raises:
        ValueError: bad input (names the series and what was expected).
    """
    if not source_datasets:
        raise ValueError("No source instance given: the anomaly map must reference the series it was computed on.")
    study_uid, series_uid = check_source(source_datasets)
    _slice_positions(source_datasets, series_uid)
    frames = anomaly_map_frames(volume, source_datasets)
    processed = _processed_frames(source_datasets, processed_images, slice_indices, series_uid)
    map_series_uid, map_sop_uid = anomaly_map_identifiers(study_uid, series_uid, algorithm)

    low, high = (float(frames.min()), float(frames.max())) if frames.size else (0.0, 0.0)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=MAP_CONTENT_LABEL,
        lut_explanation="SD-MAD anomaly score (higher = more anomalous)",
        unit=SR_CODES["unitless"],
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
        quantity_definition=_SCORE,
    )
    # anomaly scores span less than 1: a window that narrow is valid only with the LINEAR_EXACT function
    window = hd.VOILUTTransformation(
        window_center=(low + high) / 2.0,
        window_width=max(high - low, 1e-6),
        window_explanation="map range",
        voi_lut_function="LINEAR_EXACT",
    )
    ranges = format_slice_ranges(slice_indices)
    description = f"SD-MAD anomaly map; {axis} slices {ranges}"
    if len(description) > 64:
        description = f"SD-MAD anomaly map; {len(set(slice_indices))} {axis} slices (ImageComments)"
    pmap = hd.pm.ParametricMap(
        source_images=sr_evidence(source_datasets),
        pixel_array=frames,
        series_instance_uid=map_series_uid,
        series_number=series_number,
        sop_instance_uid=map_sop_uid,
        instance_number=1,
        manufacturer="sdmad_monai",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=algorithm.version,
        device_serial_number=algorithm.fingerprint[:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_description=description,
        content_label=MAP_CONTENT_LABEL,
        content_qualification="RESEARCH",
        series_description=MAP_SERIES_DESCRIPTION,
        institution_name=institution_name,
    )
    _copy_body_part(pmap, source_datasets[0])
    if processed is None:
        pmap.ImageComments = (
            f"SD-MAD anomaly map (research use only). Processed {axis} slices (canonical index along the axis, 0 at "
            f"the lowest world coordinate): {ranges}. They cut across the acquired planes: every frame holds the "
            "processed slices' lines, 0 elsewhere."
        )
        return pmap
    numbers = [
        int(getattr(ds, "InstanceNumber", 0) or 0) for ds in source_datasets if str(ds.SOPInstanceUID) in processed
    ]
    pmap.ImageComments = (
        f"SD-MAD anomaly map (research use only). Processed {axis} slices (canonical index along the axis, 0 at the "
        f"lowest world coordinate): {ranges}; source InstanceNumbers {format_slice_ranges(numbers)}. Frames of the "
        "other slices are 0 (not processed)."
    )
    for item in pmap.PerFrameFunctionalGroupsSequence:
        source = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        index = processed.get(source)
        item.FrameContentSequence[0].FrameLabel = (
            "not processed" if index is None else f"processed: {axis} slice {index}"
        )
    return pmap


def write_anomaly_map(
    volume: np.ndarray,
    source_datasets: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    slice_indices: Sequence[int],
    output_dir: str | Path,
    axis: str = "axial",
    processed_images: Sequence[Dataset] | None = None,
    **kwargs,
) -> Path:
    """Build the map (:func:`build_anomaly_map`) and write it atomically as
    ``<output_dir>/sdmad_map_<source SeriesInstanceUID>.dcm`` (a re-run overwrites it with the same UIDs).

    Args:
        kwargs: ``series_number``, ``institution_name`` of :func:`build_anomaly_map`.

    Returns:
        The written file.
    """
    pmap = build_anomaly_map(
        volume, source_datasets, algorithm, slice_indices, axis=axis, processed_images=processed_images, **kwargs
    )
    path = Path(output_dir) / f"sdmad_map_{source_datasets[0].SeriesInstanceUID}.dcm"
    with atomic_path(path) as temporary:
        pmap.save_as(temporary, enforce_file_format=True)
    return path
