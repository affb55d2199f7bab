"""Write a volume as a synthetic single-frame MR (or other modality) DICOM series, for demos and tests.

Not for clinical use. The files are nevertheless complete instances of their IOD (an MR file passes dciodvfy, the
dicom3tools validator, with no error): besides what SD-MAD and the SR builder read (patient and study identification,
geometry, pixel data) they carry the equipment, frame-of-reference and MR acquisition attributes a PACS or viewer may
check, with values that say the series is synthetic (:data:`SYNTHETIC_ACQUISITION`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

__all__ = ["ORIENTATIONS", "SYNTHETIC_ACQUISITION", "write_dicom_series"]

#: ImageOrientationPatient (row direction, column direction; DICOM LPS) of each plane.
ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}

_SOP_CLASS = {"MR": MRImageStorage, "CT": CTImageStorage}

#: Attributes of the General Series, General Equipment, Frame of Reference and MR Image modules that a real scanner
#: fills and a generated series cannot know: a plain 2D spin-echo description and a manufacturer that says what made
#: the files. Every entry can be replaced through ``write_dicom_series(attributes=...)``.
SYNTHETIC_ACQUISITION: dict[str, dict[str, Any]] = {
    "common": {
        "Manufacturer": "sdmad_monai (synthetic)",
        "PositionReferenceIndicator": "",
        "PatientPosition": "HFS",
        "BodyPartExamined": "BRAIN",  # unpaired, so no Laterality (dciodvfy: absent, not empty)
    },
    "MR": {
        "ImageType": ["DERIVED", "SECONDARY", "OTHER"],
        "ScanningSequence": "SE",
        "SequenceVariant": "NONE",
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": "500",
        "EchoTime": "15",
        "EchoTrainLength": "1",
    },
    "CT": {
        "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
        "KVP": "",
        "AcquisitionNumber": "",
        "RescaleIntercept": "0",
        "RescaleSlope": "1",
        "RescaleType": "HU",
    },
}


def _ds(values: Any) -> list[str]:
    """Decimal strings of at most 16 characters (the DS limit; ``repr`` of a float can be 17 or more)."""
    return [format_number_as_ds(float(v)) for v in np.atleast_1d(values)]


#: RAS (NIfTI) to LPS (DICOM) world coordinates.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _geometry_from_affine(affine: np.ndarray, num_slices: int) -> tuple[np.ndarray, list, tuple, float]:
    """ImageOrientationPatient, per-slice ImagePositionPatient, PixelSpacing (row, column) and slice thickness of
    a ``[column, row, slice]`` volume with RAS ``affine``."""
    column_step, row_step, slice_step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    iop = np.concatenate(
        [_RAS_TO_LPS @ column_step / np.linalg.norm(column_step), _RAS_TO_LPS @ row_step / np.linalg.norm(row_step)]
    )
    positions = [_RAS_TO_LPS @ (affine[:3, :3] @ [0, 0, k] + affine[:3, 3]) for k in range(num_slices)]
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step)))
    return iop, positions, spacing, float(np.linalg.norm(slice_step))


def write_dicom_series(
    volume: np.ndarray,
    folder: str | Path,
    orientation: str = "axial",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    modality: str = "MR",
    pixel_spacing: float | tuple[float, float] = 1.0,
    slice_thickness: float = 3.0,
    series_number: int = 1,
    series_description: str = "",
    attributes: Mapping[str, Any] | None = None,
    prefix: str = "IM",
    affine: np.ndarray | None = None,
) -> list[Path]:
    """Write ``volume`` (``[columns, rows, slices]``) as one file per slice into ``folder``.

    Slice ``k`` lies at ``k * slice_thickness`` mm along the plane's normal; pixel values are rounded to int16.

    Args:
        volume: the voxel values, ``[X=column, Y=row, Z=slice]``.
        folder: output folder (created; several series may share it when their ``prefix`` differs).
        orientation: ``"axial"``, ``"coronal"``, ``"sagittal"`` or a 6-value ImageOrientationPatient.
        study_instance_uid: StudyInstanceUID (random when ``None``).
        series_instance_uid: SeriesInstanceUID (random when ``None``).
        modality: DICOM Modality (``MR`` and ``CT`` get their image storage SOP class).
        pixel_spacing: in-plane spacing in mm (one value, or row and column spacing).
        slice_thickness: distance between slices in mm.
        series_number: SeriesNumber.
        series_description: SeriesDescription.
        attributes: further attributes by keyword (``BodyPartExamined``, ``StudyDescription``, ``PatientID`` ...).
        prefix: file name prefix (``<prefix><k>.dcm``).
        affine: a 4x4 RAS voxel-to-world matrix of ``volume`` (as in NIfTI); when given, the orientation, slice
            positions, pixel spacing and slice thickness come from it (``orientation``, ``pixel_spacing`` and
            ``slice_thickness`` are ignored), so the series has the NIfTI volume's exact geometry.

    Returns:
        The written files, in slice order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D [columns, rows, slices], got shape {volume.shape}.")
    if affine is not None:
        iop, positions, pixel_spacing, slice_thickness = _geometry_from_affine(
            np.asarray(affine, dtype=np.float64), volume.shape[2]
        )
    else:
        iop = np.asarray(ORIENTATIONS[orientation] if isinstance(orientation, str) else orientation, dtype=np.float64)
        normal = np.cross(iop[:3], iop[3:])
        positions = [normal * k * slice_thickness for k in range(volume.shape[2])]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_instance_uid = study_instance_uid or generate_uid()
    series_instance_uid = series_instance_uid or generate_uid()
    frame_of_reference = generate_uid(entropy_srcs=[study_instance_uid, "frame-of-reference"])
    sop_class = _SOP_CLASS.get(modality, MRImageStorage)
    pixels = np.clip(np.rint(volume), -32768, 32767).astype("<i2")
    paths = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_instance_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_instance_uid
        ds.SeriesInstanceUID = series_instance_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality = modality
        ds.PatientName = "Demo^Patient"
        ds.PatientID = "sdmad-demo"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = _ds(iop)
        ds.ImagePositionPatient = _ds(positions[k])
        ds.PixelSpacing = _ds(np.broadcast_to(pixel_spacing, 2))
        ds.SliceThickness = _ds(slice_thickness)[0]
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        synthetic = {**SYNTHETIC_ACQUISITION["common"], **SYNTHETIC_ACQUISITION.get(modality, {})}
        for keyword, value in {**synthetic, **(attributes or {})}.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
