"""Reading MRI volumes (NIfTI, DICOM series, fastMRI HDF5) and reading only the slices that are needed.

* :class:`FastMRIH5Reader` is a MONAI ``ImageReader`` for fastMRI brain ``.h5``/``.hdf5`` files (dataset
  ``reconstruction_rss``, shape ``slices x H x W``): ``LoadImaged(keys, reader=FastMRIH5Reader())`` works.
* :class:`DicomSeriesReader` is MONAI's ``ITKReader`` for a folder holding exactly one DICOM series, with the
  folder checked first (one series, no missing slice) so a bad folder gives one clear error.
* :func:`load_volume` / :class:`LoadVolumed` load any of the three formats as ``MetaTensor [C, X, Y, Z]`` (float32,
  RAS+ affine) with clear errors (corrupt or truncated NIfTI, 2D image, bad DICOM folder, HDF5 without
  ``reconstruction_rss``).
* :class:`LoadSlices` / :class:`LoadSlicesd` read only the requested slices (nibabel ``dataobj`` slicing, h5py dataset
  slicing, only the needed DICOM files) and give exactly what ``load_volume`` followed by
  :class:`~sdmad_monai.transforms.slices.ExtractSlices` gives.

DICOM pixel values are ``pixel_array * RescaleSlope + RescaleIntercept`` (float32) in the lazy path; reading an
axis other than the acquisition stacking axis from a DICOM series reads every file of the series.

Size: readers of four inputs (NIfTI, DICOM series, fastMRI ``.h5``, in-memory volumes) behind one lazy
slice-loading interface, and its transforms.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import torch
from monai.config import PathLike
from monai.data import ImageReader, ITKReader, MetaTensor
from monai.transforms import Transform

from sdmad_monai.transforms.dictionary import ArrayTransformd
from sdmad_monai.transforms.slices import SliceSelection, SlicingMapTransform, VolumeSource

__all__ = [
    "FASTMRI_DATASET",
    "FastMRIH5Reader",
    "fastmri_affine",
    "DicomSeriesReader",
    "validate_dicom_series",
    "check_dicom_series_headers",
    "dicom_pixels",
    "pixel_read_error",
    "load_volume",
    "LoadVolume",
    "LoadVolumed",
    "open_volume_source",
    "LoadSlices",
    "LoadSlicesd",
]

FASTMRI_DATASET = "reconstruction_rss"
_H5_SUFFIXES = (".h5", ".hdf5")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_h5(path: PathLike) -> bool:
    return str(path).lower().endswith(_H5_SUFFIXES)


def _is_nifti(path: PathLike) -> bool:
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


# ----------------------------------------------------------------------------------------------------- fastMRI HDF5
def _fastmri_pixel_spacing(f: h5py.File, hw: tuple[int, int]) -> tuple[float, float] | None:
    """In-plane spacing from the ISMRMRD header (reconSpace field of view / matrix), if present and parsable."""
    if "ismrmrd_header" not in f:
        return None
    try:
        raw = f["ismrmrd_header"][()]
        root = ET.fromstring(raw.decode() if isinstance(raw, bytes) else str(raw))
        ns = {"m": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
        pre = "m:" if ns else ""
        fov = root.find(f".//{pre}reconSpace/{pre}fieldOfView_mm", ns)
        x = fov.find(f"{pre}x", ns) if fov is not None else None
        y = fov.find(f"{pre}y", ns) if fov is not None else None
        if x is None or y is None or x.text is None or y.text is None:
            return None
        fx, fy = float(x.text), float(y.text)
        return (fy / hw[0], fx / hw[1])
    except Exception:  # a malformed optional header falls back to unit spacing
        return None


def fastmri_affine(num_slices: int, height: int, width: int, pixel_spacing=(1.0, 1.0), slice_thickness=1.0):
    """Synthetic RAS+ affine of a fastMRI volume stored as ``[slices, H, W]``.

    fastMRI ``.h5`` files have no patient geometry. The affine maps array dim 0 to +S, dim 1 (rows) to -A and dim 2
    (columns) to -R, so that with the conventions of :mod:`sdmad_monai.transforms.slices` axial slice ``i`` is the
    ``i``-th stored slice and the 2D array is the stored ``H x W`` image unchanged. It is a labelling convention, not
    a statement about the patient's anatomy.

    Args:
        num_slices: number of stored slices.
        height: rows per slice.
        width: columns per slice.
        pixel_spacing: (row, column) spacing in mm.
        slice_thickness: spacing between slices in mm.

    Returns:
        4x4 numpy affine.
    """
    del num_slices, height, width  # the affine does not depend on the sizes; kept for a self-describing call
    aff = np.zeros((4, 4))
    aff[2, 0] = slice_thickness
    aff[1, 1] = -pixel_spacing[0]
    aff[0, 2] = -pixel_spacing[1]
    aff[3, 3] = 1.0
    return aff


def _open_fastmri(path: PathLike) -> tuple[h5py.File, h5py.Dataset]:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fastMRI HDF5 file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file (corrupt or truncated?): {e}") from e
    if FASTMRI_DATASET not in f:
        found = sorted(f.keys())
        f.close()
        raise ValueError(
            f"{path} has no dataset {FASTMRI_DATASET!r} (found {found}); fastMRI brain files store the "
            "root-sum-of-squares reconstruction [slices, H, W] there."
        )
    ds = f[FASTMRI_DATASET]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
        shape = getattr(ds, "shape", None)
        f.close()
        raise ValueError(f"{path}: {FASTMRI_DATASET!r} must be a 3D dataset [slices, H, W], got shape {shape}.")
    return f, ds


class FastMRIH5Reader(ImageReader):
    """MONAI ``ImageReader`` for fastMRI brain HDF5 files.

    Reads dataset ``reconstruction_rss`` (``[slices, H, W]``) as a volume without a channel dimension (so
    ``LoadImaged(..., ensure_channel_first=True)`` gives ``[1, slices, H, W]``) with the synthetic affine of
    :func:`fastmri_affine` (slice 0 = first stored slice, in-plane as stored).

    Args:
        dataset: name of the dataset to read.
    """

    def __init__(self, dataset: str = FASTMRI_DATASET):
        super().__init__()
        self.dataset = dataset

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every file name ends with ``.h5`` or ``.hdf5``."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) > 0 and all(_is_h5(n) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> Any:
        """Read the array(s) and geometry; returns a list of ``(array, spacing, filename)`` or a single one."""
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        out = []
        for name in names:
            f, ds = _open_fastmri(name)
            try:
                arr = np.asarray(ds[()], dtype=np.float32)
                spacing = _fastmri_pixel_spacing(f, arr.shape[1:]) or (1.0, 1.0)
            finally:
                f.close()
            out.append((arr, spacing, str(name)))
        return out if len(out) > 1 else out[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return ``(array [slices, H, W] or stacked [N, slices, H, W], metadata)``."""
        imgs = img if isinstance(img, list) else [img]
        arrays = [a for a, _, _ in imgs]
        arr0, spacing, name = imgs[0]
        num_slices, height, width = arr0.shape  # 3D, checked by _open_fastmri
        aff = fastmri_affine(num_slices, height, width, pixel_spacing=spacing)
        meta = {
            "affine": aff,
            "original_affine": aff.copy(),
            "spatial_shape": np.asarray(arr0.shape),
            "space": "RAS",
            "filename_or_obj": name,
            "fastmri_synthetic_affine": True,
        }
        if len(arrays) > 1:
            if len({a.shape for a in arrays}) != 1:
                raise ValueError(f"cannot stack fastMRI files of different shapes: {[a.shape for a in arrays]}.")
            meta["original_channel_dim"] = 0
            return np.stack(arrays), meta
        meta["original_channel_dim"] = float("nan")
        return arrays[0], meta


# ---------------------------------------------------------------------------------------------------------- DICOM
def validate_dicom_series(folder: PathLike, gap_tolerance: float = 0.5) -> tuple[list[str], np.ndarray]:
    """Check that a folder holds exactly one DICOM series with evenly spaced slices.

    Headers only are read (``stop_before_pixels``). Files that are not DICOM are ignored.

    Args:
        folder: directory of the series.
        gap_tolerance: allowed relative deviation of a slice step from the median step.

    Returns:
        (file paths sorted by position along the slice normal, LPS affine 4x4 of that ordering with array layout
        ``[column, row, slice]``).

    Raises:
        ValueError: no DICOM file, several series, missing geometry tags, duplicate positions or a gap.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = str(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"DICOM series folder not found: {folder}")
    headers = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError):
            continue
        if "SeriesInstanceUID" not in ds:
            continue
        headers.append((path, ds))
    return check_dicom_series_headers(headers, folder, gap_tolerance)


def _check_series_ends(ordered: Sequence[tuple[str, Any]], folder: str) -> None:
    """Detect a series whose first or last instances are missing, where the headers allow it (the gap check cannot:
    a missing end slice leaves even steps, but shifts every canonical slice index by one).

    - ``ImagesInAcquisition`` (0020,1002), when every instance states the same value: that many instances expected;
    - ``InstanceNumber``: when the numbers run consecutively along the slice positions (one step each), a run that
      starts above 1 lacks its first instances.

    Raises:
        ValueError: naming the series folder, what is missing and how it was found.
    """
    count = len(ordered)
    stated = {
        int(ds.ImagesInAcquisition) for _, ds in ordered if "ImagesInAcquisition" in ds and ds.ImagesInAcquisition
    }
    if len(stated) == 1 and len(ordered) == sum(1 for _, ds in ordered if "ImagesInAcquisition" in ds):
        expected = stated.pop()
        if count < expected:
            raise ValueError(
                f"{folder}: incomplete series - {count} of the {expected} instances its headers announce "
                "(ImagesInAcquisition) are present; wait until the whole series has arrived."
            )
    numbers = [int(ds.InstanceNumber) for _, ds in ordered if "InstanceNumber" in ds and ds.InstanceNumber != ""]
    if len(numbers) != count or count < 2:
        return
    steps = set(np.diff(numbers).tolist())
    if steps in ({1}, {-1}) and min(numbers) > 1:
        first = min(numbers)
        raise ValueError(
            f"{folder}: incomplete series - its InstanceNumbers run from {first} to {max(numbers)} along the slice "
            f"positions, so instance(s) 1 to {first - 1} at the {'start' if steps == {1} else 'end'} are missing; "
            "wait until the whole series has arrived."
        )


def check_dicom_series_headers(
    headers: Sequence[tuple[str, Any]], folder: str, gap_tolerance: float = 0.5
) -> tuple[list[str], np.ndarray]:
    """The checks of :func:`validate_dicom_series` on headers already read (e.g. the instances a MONAI Deploy
    loader holds in memory).

    Args:
        headers: ``(path or name, pydicom Dataset)`` of each instance; errors name the ``basename`` of the path.
        folder: what error messages name as the series' location.
        gap_tolerance: allowed relative deviation of a slice step from the median step.

    Returns:
        (the paths/names sorted by position along the slice normal, LPS affine 4x4 of that ordering with array
        layout ``[column, row, slice]``).

    Raises:
        ValueError: no instance, several series, missing geometry tags, multi-frame files, duplicate positions or a
            gap.
    """
    if not headers:
        raise ValueError(f"{folder} contains no DICOM file.")
    series: dict[str, int] = {}
    for _, ds in headers:
        series[str(ds.SeriesInstanceUID)] = series.get(str(ds.SeriesInstanceUID), 0) + 1
    if len(series) > 1:
        raise ValueError(
            f"{folder} holds {len(series)} DICOM series (SeriesInstanceUID: number of files {series}); "
            "expected exactly one series per folder."
        )
    missing = [
        os.path.basename(p)
        for p, ds in headers
        if not all(t in ds for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
    ]
    if missing:
        raise ValueError(
            f"{folder}: files {missing[:5]} lack ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
            "cannot place the slices."
        )
    multi = [os.path.basename(p) for p, ds in headers if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise ValueError(
            f"{folder}: {multi[:5]} are multi-frame DICOM files; expected a series with one slice per file."
        )
    iop = np.asarray(headers[0][1].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_dir, col_dir)
    pos = [np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in headers]
    proj = np.array([float(p @ normal) for p in pos])
    order = np.argsort(proj, kind="stable")
    proj_sorted = proj[order]
    paths = [headers[i][0] for i in order]
    if len(paths) > 1:
        steps = np.diff(proj_sorted)
        if np.any(steps < 1e-4):
            i = int(np.argmin(steps))
            raise ValueError(
                f"{folder}: {os.path.basename(paths[i])} and {os.path.basename(paths[i + 1])} have the same slice "
                "position; expected one file per slice."
            )
        step = float(np.median(steps))
        bad = np.nonzero(np.abs(steps - step) > gap_tolerance * step)[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{folder}: missing slice(s) in the series - the position jumps by {steps[i]:.3f} mm between "
                f"{os.path.basename(paths[i])} and {os.path.basename(paths[i + 1])}, expected {step:.3f} mm."
            )
    else:
        step = float(getattr(headers[0][1], "SliceThickness", 1.0) or 1.0)
    _check_series_ends([headers[i] for i in order], folder)
    ps = [float(v) for v in headers[order[0]][1].PixelSpacing]  # (row spacing, column spacing)
    aff = np.eye(4)
    aff[:3, 0] = row_dir * ps[1]
    aff[:3, 1] = col_dir * ps[0]
    aff[:3, 2] = normal * step
    aff[:3, 3] = pos[order[0]]
    return paths, aff


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DicomSeriesReader(ITKReader):
    """MONAI ``ITKReader`` for a folder holding one DICOM series, validated first by :func:`validate_dicom_series`.

    Output layout is MONAI's (``[X=column, Y=row, Z=slice]``, RAS+ affine).

    Args:
        kwargs: passed to ``monai.data.ITKReader``.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for a directory."""
        return isinstance(filename, (str, os.PathLike)) and os.path.isdir(filename)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Validate the folder, then read it with ITK."""
        if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
            validate_dicom_series(data)
        return super().read(data, **kwargs)


def pixel_read_error(name: str, error: BaseException, ds: Any = None) -> ValueError:
    """``<name>: cannot read the pixel data (transfer syntax ...): <reason>`` for a file or instance whose pixels
    cannot be decoded."""
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    detail = f" (transfer syntax {syntax.name})" if syntax is not None else ""
    return ValueError(f"{name}: cannot read the pixel data{detail}: {reason}")


def dicom_pixels(ds: Any, name: str) -> np.ndarray:
    """The pixels of one single-frame DICOM instance as float32 ``[row, column]``, ``RescaleSlope`` and
    ``RescaleIntercept`` applied (what :class:`DicomSeriesReader` and the lazy DICOM slice reader give).

    Args:
        ds: a pydicom Dataset read with its pixel data.
        name: the file or instance, for error messages.

    Raises:
        ValueError: no pixel data, or pixel data that cannot be decoded.
    """
    try:
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ValueError("the file has no pixel data")
        arr = ds.pixel_array.astype(np.float32)
    except Exception as error:  # pydicom and its decoders raise many types for damaged or undecodable pixels
        raise pixel_read_error(name, error, ds) from error
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or inter != 0.0:
        arr = arr * np.float32(slope) + np.float32(inter)
    return arr


class _DicomSource(VolumeSource):
    def __init__(self, folder: PathLike):
        self.filename = str(folder)
        self.paths, lps = validate_dicom_series(folder)
        self.affine = _LPS_TO_RAS @ lps
        import pydicom

        ds = pydicom.dcmread(self.paths[0], stop_before_pixels=True)
        self.spatial_shape = (int(ds.Columns), int(ds.Rows), len(self.paths))

    def _read_file(self, i: int) -> np.ndarray:
        import pydicom

        try:
            ds = pydicom.dcmread(self.paths[i])
        except Exception as error:  # a damaged file
            raise pixel_read_error(self.paths[i], error) from error
        arr = dicom_pixels(ds, self.paths[i])
        if arr.shape != (self.spatial_shape[1], self.spatial_shape[0]):
            raise ValueError(f"{self.paths[i]}: image size {arr.shape} differs from the rest of the series.")
        return arr.T  # (column, row) = (X, Y)

    def read_plane(self, dim: int, index: int) -> np.ndarray:
        if dim == 2:
            return self._read_file(index)[None]
        vol = np.stack([self._read_file(i) for i in range(len(self.paths))], axis=-1)
        return np.take(vol, index, axis=dim)[None]


# ---------------------------------------------------------------------------------------------------------- NIfTI
#: Largest decoded volume accepted, in bytes (environment variable ``SDMAD_MAX_VOLUME_BYTES`` overrides it): a header
#: that declares more is refused before any decoding, so a forged header or a compression bomb cannot exhaust memory.
DEFAULT_MAX_VOLUME_BYTES = 2 * 1024**3


def check_declared_size(path: str, shape: Sequence[int], itemsize: int) -> None:
    """Refuse a volume whose header declares more than the memory limit (see :data:`DEFAULT_MAX_VOLUME_BYTES`).

    Raises:
        ValueError: naming the file, the declared shape and size, and the limit.
    """
    limit = int(os.environ.get("SDMAD_MAX_VOLUME_BYTES", DEFAULT_MAX_VOLUME_BYTES))
    declared = int(np.prod([int(s) for s in shape], dtype=np.float64)) * int(itemsize)
    if declared > limit:
        raise ValueError(
            f"{path}: its header declares shape {tuple(int(s) for s in shape)} ({declared / 2**20:,.0f} MiB decoded), "
            f"over the {limit / 2**20:,.0f} MiB limit; not a plausible MR volume (set SDMAD_MAX_VOLUME_BYTES to "
            "raise the limit)."
        )


def _nifti_image(path: str) -> nib.Nifti1Image:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(path)
    except Exception as e:
        raise ValueError(f"{path} is not a valid NIfTI file (corrupt header?): {e}") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path} is a {type(img).__name__}, expected a NIfTI-1/2 image.")
    shape = img.shape
    if len(shape) < 3 or shape[2] == 1:
        raise ValueError(f"{path} holds a 2D image of shape {shape}; a 3D volume (or 4D with channels) is expected.")
    if len(shape) > 4:
        raise ValueError(f"{path} has shape {shape}; expected a 3D volume.")
    if len(shape) == 4 and shape[3] != 1:
        raise ValueError(
            f"{path} has {shape[3]} frames along its 4th (time) dimension (shape {shape}); a single 3D volume is "
            "expected: save the frame to score as its own file."
        )
    check_declared_size(path, shape, img.header.get_data_dtype().itemsize)
    if not path.lower().endswith(".gz"):
        hdr = img.header
        offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))
        expected = offset + int(np.prod(shape)) * hdr.get_data_dtype().itemsize
        size = os.path.getsize(path)
        if size < expected:
            raise ValueError(f"NIfTI file {path} is truncated: the header needs {expected} bytes, the file has {size}.")
    return img


def _nifti_read(path: str, getter):
    try:
        return getter()
    except Exception as e:
        raise ValueError(f"cannot decode the image data of NIfTI file {path} (truncated or corrupt?): {e}") from e


class _NiftiSource(VolumeSource):
    def __init__(self, path: PathLike):
        self.filename = str(path)
        self.img = _nifti_image(self.filename)
        self.affine = np.asarray(self.img.affine, dtype=np.float64)
        x, y, z = (int(s) for s in self.img.shape[:3])  # 3D or 4D, checked by _nifti_image
        self.spatial_shape = (x, y, z)
        # a gzip stream cannot seek: every plane read decompresses the file from its start up to that plane, so
        # reading n planes costs up to n full decompressions. Compressed data is decoded once, on the first read.
        self._compressed = self.filename.lower().endswith(".gz")
        self._decoded: np.ndarray | None = None

    def read_plane(self, dim: int, index: int) -> np.ndarray:
        idx: list[Any] = [slice(None)] * len(self.img.shape)
        idx[dim] = index
        if self._compressed:
            if self._decoded is None:
                self._decoded = _nifti_read(self.filename, lambda: np.asarray(self.img.dataobj))
            plane = self._decoded[tuple(idx)]
        else:
            plane = _nifti_read(self.filename, lambda: np.asarray(self.img.dataobj[tuple(idx)]))
        plane = plane.astype(np.float32)
        return np.moveaxis(plane, -1, 0) if plane.ndim == 3 else plane[None]


class _H5Source(VolumeSource):
    """The file stays open between plane reads (opening an HDF5 file costs ~10x reading a 320x320 plane) until
    :meth:`close`; a read after ``close`` reopens it."""

    def __init__(self, path: PathLike):
        self.filename = str(path)
        f, ds = _open_fastmri(path)
        try:
            x, y, z = (int(s) for s in ds.shape)  # 3D, checked by _open_fastmri
            self.spatial_shape = (x, y, z)
            spacing = _fastmri_pixel_spacing(f, self.spatial_shape[1:]) or (1.0, 1.0)
        except BaseException:
            f.close()
            raise
        self._file: h5py.File | None = f
        self._dataset: h5py.Dataset | None = ds
        self.affine = fastmri_affine(*self.spatial_shape, pixel_spacing=spacing)

    def read_plane(self, dim: int, index: int) -> np.ndarray:
        if self._file is None:
            self._file = h5py.File(self.filename, "r")
            self._dataset = self._file[FASTMRI_DATASET]
        if self._dataset is None:  # set together with self._file, in __init__ or just above
            raise RuntimeError(f"{self.filename}: HDF5 file open without its dataset {FASTMRI_DATASET!r}.")
        idx: list[Any] = [slice(None)] * 3
        idx[dim] = index
        return np.asarray(self._dataset[tuple(idx)], dtype=np.float32)[None]

    def close(self) -> None:
        """Close the HDF5 file."""
        if self._file is not None:
            self._file.close()
            self._file = self._dataset = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass


def open_volume_source(path: PathLike) -> VolumeSource:
    """Open a volume lazily (only geometry is read): NIfTI file, fastMRI ``.h5``/``.hdf5`` file or DICOM folder.

    Args:
        path: the file or folder.

    Returns:
        a :class:`~sdmad_monai.transforms.slices.VolumeSource`.
    """
    p = str(path)
    if os.path.isdir(p):
        return _DicomSource(p)
    if _is_h5(p):
        return _H5Source(p)
    if _is_nifti(p):
        return _NiftiSource(p)
    if not os.path.exists(p):
        raise FileNotFoundError(f"image not found: {p}")
    raise ValueError(f"{p}: unsupported image type; expected .nii/.nii.gz, .h5/.hdf5 or a DICOM series folder.")


def load_volume(path: PathLike) -> MetaTensor:
    """Load a whole volume as ``MetaTensor [C, X, Y, Z]`` (float32, RAS+ affine, ``filename_or_obj`` set).

    NIfTI through nibabel (4D: last dim = channels), DICOM folder through :class:`DicomSeriesReader` (ITK),
    fastMRI HDF5 through :class:`FastMRIH5Reader`.

    Args:
        path: the file or folder.

    Returns:
        the volume.
    """
    p = str(path)
    if os.path.isdir(p):
        reader = DicomSeriesReader()
        arr, meta = reader.get_data(reader.read(p))
        arr = np.asarray(arr, dtype=np.float32)[None]
        aff = np.asarray(meta["affine"], dtype=np.float64)
    elif _is_h5(p):
        h5_reader = FastMRIH5Reader()
        arr, meta = h5_reader.get_data(h5_reader.read(p))
        arr = arr[None]
        aff = meta["affine"]
    elif _is_nifti(p):
        img = _nifti_image(p)
        arr = _nifti_read(p, lambda: np.asarray(img.dataobj)).astype(np.float32)
        arr = np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]
        aff = np.asarray(img.affine, dtype=np.float64)
    else:
        open_volume_source(p)  # raises the appropriate error
        raise AssertionError("unreachable")
    meta_out = {
        "filename_or_obj": p,
        "original_affine": torch.as_tensor(aff),
        "spatial_shape": np.asarray(arr.shape[1:]),
        "space": "RAS",
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=torch.as_tensor(aff), meta=meta_out)


class LoadVolume(Transform):
    """Array transform wrapping :func:`load_volume`: path -> ``MetaTensor [C, X, Y, Z]``."""

    def __call__(self, path: PathLike) -> MetaTensor:
        return load_volume(path)


class LoadVolumed(ArrayTransformd):
    """Dictionary version of :class:`LoadVolume` (arguments: ``keys`` holding paths, ``allow_missing_keys``)."""

    array_transform = LoadVolume


class LoadSlices(SliceSelection):
    """Read only the requested slices of a volume on disk (arguments: :class:`SliceSelection`).

    Equivalent to ``ExtractSlices(...)(load_volume(path))`` (identical arrays and metadata) without decoding the
    whole volume: nibabel proxy slicing for NIfTI (uncompressed files are read by seeking; gzipped ones, which cannot
    seek, are decompressed once), h5py dataset slicing for fastMRI ``.h5`` (the file kept open between slices), and
    only the needed files of a DICOM series (sorted by ImagePositionPatient) when slicing along the acquisition axis.

    Returns (call):
        list of ``MetaTensor [C, H, W]``.
    """

    def __call__(self, path: PathLike) -> list[MetaTensor]:
        source = open_volume_source(path)
        try:
            return self.slices_of(source)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()


class LoadSlicesd(SlicingMapTransform):
    """Dictionary version of :class:`LoadSlices` (same outputs as ``LoadVolumed`` + ``ExtractSlicesd``).

    Args:
        keys: keys holding paths.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        indices: explicit canonical indices.
        positions: relative positions in [0, 1].
        stride: stride over all slices.
        stack: one dict with ``[N, C, H, W]`` per key instead of one dict per slice.
        meta_postfix: postfix of the per-slice metadata key in stack mode.
        index_key: data key holding the slice index (int -> one dict with ``[C, H, W]``) or indices (list), e.g.
            ``"slice"`` for the items of :func:`sdmad_monai.data.build_fastmri_datalist`; overrides the policy.
        allow_missing_keys: don't raise for missing keys.
    """

    slicer_type = LoadSlices
