"""3D anomaly-map volumes: per-slice maps stacked back onto the scan's voxel grid and saved as NIfTI.

A slice's anomaly map comes out of the detector at its input size ``S x S``, on the slice after
:class:`~sdmad_monai.transforms.ResizeToSquare` (aspect-preserving resize + centred padding) of the slice in the
radiological display orientation of :mod:`sdmad_monai.transforms.slices`. :func:`anomaly_volume` undoes both:

1. :func:`~sdmad_monai.transforms.undo_resize_to_square` (re-exported here) crops the padding and resizes
   (bilinear) the map back to the slice's own ``rows x columns``;
2. :func:`sdmad_monai.transforms.slices_to_volume` undoes the display orientation and puts the plane at its array
   index, so voxel ``(i, j, k)`` of the map lies over voxel ``(i, j, k)`` of the scan.

:func:`write_anomaly_volume` saves the volume with the scan's affine and shape (when the scan is a NIfTI file its
qform/sform and their codes are copied, so viewers that prefer one or the other place both files alike). Slices that
were not processed are 0. Which slices were processed is said three times: in the NIfTI ``descrip`` field (80
characters, abbreviated when long), in a NIfTI header extension (JSON, complete) and in a JSON sidecar beside the file
(``<name>.json``). Both files are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .transforms.intensity import undo_resize_to_square
from .transforms.slices import slices_to_volume
from .utils import atomic_path, atomic_write_json

__all__ = ["anomaly_volume", "format_slice_ranges", "undo_resize_to_square", "write_anomaly_volume"]

#: NIfTI ``intent_name`` of the written maps (16 characters at most).
INTENT_NAME = "sdmad anomaly"


def anomaly_volume(
    maps: torch.Tensor,
    slice_indices: Sequence[int],
    slice_shape: Sequence[int],
    affine: Any,
    spatial_shape: Sequence[int],
    axis: str = "axial",
    source: str = "<volume>",
) -> np.ndarray:
    """Stack per-slice maps at the detector's input size back into a volume on the scan's grid.

    Args:
        maps: ``[N, S, S]`` anomaly maps (detector input size) of the processed slices.
        slice_indices: ``N`` canonical slice indices.
        slice_shape: ``(rows, cols)`` of the slices in display orientation (their ``spatial_shape`` metadata).
        affine: the scan's 4x4 RAS+ affine.
        spatial_shape: the scan's three spatial sizes.
        axis: slicing axis.
        source: name used in error messages.

    Returns:
        ``[X, Y, Z]`` float32 array, 0 on the slices not processed.
    """
    planes = undo_resize_to_square(torch.as_tensor(maps).detach().cpu(), slice_shape)
    return slices_to_volume(planes, slice_indices, affine, spatial_shape, axis=axis, source=source)


def format_slice_ranges(indices: Sequence[int]) -> str:
    """Compact text of slice indices: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    values = sorted({int(i) for i in indices})
    if not values:
        return ""
    parts: list[str] = []
    start = previous = values[0]
    for value in values[1:]:
        if value != previous + 1:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = value
        previous = value
    parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def _source_nifti_header(source: str) -> Any:
    if source.lower().endswith((".nii", ".nii.gz")) and os.path.isfile(source):
        try:
            return nib.load(source).header
        except (OSError, ValueError, nib.filebasedimages.ImageFileError):  # unreadable header: use the affine given
            return None
    return None


def write_anomaly_volume(
    path: str | Path,
    volume: np.ndarray,
    affine: Any,
    slice_indices: Sequence[int],
    axis: str,
    source: str = "",
    info: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a 3D anomaly map as NIfTI (float32) with the scan's geometry, and its JSON sidecar.

    Args:
        path: output ``.nii.gz`` (or ``.nii``) path; the sidecar is ``path`` with ``.json`` for the NIfTI suffix.
        volume: ``[X, Y, Z]`` map from :func:`anomaly_volume`.
        affine: the scan's 4x4 RAS+ affine.
        slice_indices: canonical indices of the processed slices.
        axis: slicing axis.
        source: the scan (file, DICOM folder); a NIfTI source's qform/sform and codes are copied.
        info: extra JSON-ready entries for the sidecar (e.g. the model description).

    Returns:
        ``{"nifti": path, "json": sidecar path}``.

    Raises:
        ValueError: when ``path`` is not a NIfTI name or ``volume`` is not 3D.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"anomaly map path {path} must end with .nii or .nii.gz.")
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D anomaly map [X, Y, Z], got shape {volume.shape}.")
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    indices = sorted(int(i) for i in slice_indices)
    image = nib.Nifti1Image(volume, affine)
    header = _source_nifti_header(str(source))
    if header is not None and tuple(header.get_data_shape()[:3]) == volume.shape:
        image.set_qform(header.get_qform(), int(header["qform_code"]))
        image.set_sform(header.get_sform(), int(header["sform_code"]))
    else:
        image.set_qform(affine, code="scanner")
        image.set_sform(affine, code="scanner")
    ranges = format_slice_ranges(indices)
    descrip = f"SD-MAD anomaly map; {axis} slices {ranges}"
    if len(descrip) > 79:
        descrip = f"SD-MAD anomaly map; {len(indices)} {axis} slices, list in ext/JSON"
    image.header["descrip"] = descrip.encode("ascii", "replace")
    image.header.set_intent("estimate", name=INTENT_NAME)
    finite = volume[np.isfinite(volume)]
    if finite.size:
        image.header["cal_min"], image.header["cal_max"] = float(finite.min()), float(finite.max())
    sidecar = {
        "description": "SD-MAD 3D anomaly map: per-slice maps on the scan's voxel grid; 0 where not processed.",
        "source": str(source),
        "axis": axis,
        "processed_slices": indices,
        "processed_slices_text": ranges,
        "slice_index_convention": (
            "canonical index along the axis: 0 at the lowest world coordinate (most inferior axial, most posterior "
            "coronal, most left sagittal slice); see sdmad_monai.transforms.slices"
        ),
        "shape": list(volume.shape),
        "affine": affine.tolist(),
        **(info or {}),
    }
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps(sidecar).encode("utf-8")))
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    json_path = path.with_name(path.name[: -len(suffix)] + ".json")
    with atomic_path(path) as temporary:
        # nibabel picks gzip from the file name: write to a temporary name with the same suffix
        named = temporary.with_name(temporary.name + suffix)
        try:
            nib.save(image, named)
            os.replace(named, temporary)
        finally:
            named.unlink(missing_ok=True)
    atomic_write_json(json_path, {**sidecar, "nifti": path.name})
    return {"nifti": path, "json": json_path}
