"""Affine-aware extraction of 2D slices from 3D MRI volumes.

Conventions (identical for every reader: NIfTI, DICOM series, fastMRI HDF5):

* World coordinates are RAS+ as in nibabel and ``MetaTensor.affine``: +x points to the patient's Right,
  +y Anterior, +z Superior.
* The anatomical axis is chosen by name and resolved from the affine with
  :func:`nibabel.orientations.io_orientation`, never from the array axis order:
  ``"axial"`` slices are stacked along S, ``"coronal"`` along A, ``"sagittal"`` along R.
* **Slice 0 is at the lowest world coordinate along the stacking axis**: the most inferior axial slice, the most
  posterior coronal slice, the most left sagittal slice (RAS x is lowest on the patient's left). Slice indices grow
  towards superior / anterior / right.
* **In-plane orientation is the radiological display orientation**: rows and columns run towards *decreasing*
  world coordinates. Axial: rows anterior -> posterior, columns right -> left (patient's right on the viewer's left).
  Coronal: rows superior -> inferior, columns right -> left. Sagittal: rows superior -> inferior, columns
  anterior -> posterior. A reoriented copy of a volume (flipped/transposed array with the matching affine), or the
  same volume stored as NIfTI or as a DICOM series, therefore yields the identical 2D arrays.
* :func:`slices_to_volume` is the inverse: it puts 2D arrays in this display orientation (e.g. per-slice anomaly
  maps) back onto the stored array's grid, so that voxel ``(i, j, k)`` of the result lies over voxel ``(i, j, k)`` of
  the volume and the result can be saved with the volume's affine.
* fastMRI ``.h5`` files carry no geometry. :class:`~sdmad_monai.transforms.io.FastMRIH5Reader` gives them a
  synthetic affine under which axial slice ``i`` is the ``i``-th stored slice and the 2D array is the stored
  ``H x W`` image unchanged (see that class).

Every output slice is a ``MetaTensor`` of shape ``[C, H, W]`` whose metadata holds the source file
(``filename_or_obj``), ``slice_index`` (canonical index as defined above), ``slice_array_index`` (index in the stored
array), ``slice_axis``, ``num_slices``, ``pixel_spacing`` (row spacing, column spacing in mm), ``spatial_shape``
``volume_affine`` / ``volume_spatial_shape`` (the whole volume's) and a 4x4 ``affine`` mapping ``(row, column, 0)`` to
world coordinates.

Size: MONAI array + dictionary transform pairs for slicing and the slice geometry they share.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "ANATOMICAL_AXES",
    "SliceGeometry",
    "slice_geometry",
    "resolve_slice_indices",
    "VolumeSource",
    "ArrayVolumeSource",
    "extract_slices_from_source",
    "unorient_plane",
    "slices_to_volume",
    "stack_slices",
    "ExtractSlices",
    "ExtractSlicesd",
    "SliceSelection",
    "SlicingMapTransform",
]

#: name -> (stacking world axis, row world axis, column world axis); world axes 0=R, 1=A, 2=S.
ANATOMICAL_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (2, 1, 0),
    "coronal": (1, 2, 0),
    "sagittal": (0, 2, 1),
}


@dataclass(frozen=True)
class SliceGeometry:
    """How an anatomical slicing maps onto the stored array.

    Attributes:
        axis: anatomical axis name.
        slice_dim: spatial array dimension (0..2) along which slices are stacked.
        slice_reversed: True when canonical slice 0 is the last array index along ``slice_dim``.
        row_dim: spatial array dimension that becomes the 2D rows.
        row_reversed: True when row 0 is the last array index along ``row_dim``.
        col_dim: spatial array dimension that becomes the 2D columns.
        col_reversed: True when column 0 is the last array index along ``col_dim``.
        num_slices: number of slices along the axis.
        pixel_spacing: (row spacing, column spacing) in world units (mm).
    """

    axis: str
    slice_dim: int
    slice_reversed: bool
    row_dim: int
    row_reversed: bool
    col_dim: int
    col_reversed: bool
    num_slices: int
    pixel_spacing: tuple[float, float]

    def array_index(self, canonical_index: int) -> int:
        """Stored-array index of canonical slice ``canonical_index``."""
        return self.num_slices - 1 - canonical_index if self.slice_reversed else canonical_index


def _as_affine(affine: Any, source: str) -> np.ndarray:
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"{source}: expected a finite 4x4 affine for a 3D volume, got shape {aff.shape}.")
    return aff


def slice_geometry(affine: Any, spatial_shape: Sequence[int], axis: str, source: str = "<volume>") -> SliceGeometry:
    """Resolve an anatomical axis name to array dimensions using the affine.

    Args:
        affine: 4x4 voxel-to-world (RAS+) affine of a 3D volume (numpy array or tensor).
        spatial_shape: the three spatial sizes of the stored array.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        source: name used in error messages (usually the file name).

    Returns:
        The :class:`SliceGeometry`.

    Raises:
        ValueError: unknown axis name, non-3D shape or a degenerate affine.
    """
    if axis not in ANATOMICAL_AXES:
        raise ValueError(f"{source}: unknown slice axis {axis!r}; expected one of {sorted(ANATOMICAL_AXES)}.")
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3:
        raise ValueError(
            f"{source}: expected a 3D volume (3 spatial dimensions), got spatial shape {shape}; "
            "2D images cannot be sliced along an anatomical axis."
        )
    aff = _as_affine(affine, source)
    ornt = nib.orientations.io_orientation(aff)
    if np.any(np.isnan(ornt)):
        raise ValueError(f"{source}: the affine {aff.tolist()} is degenerate; cannot resolve the {axis} axis.")
    world_to_dim = {int(w): (d, float(s)) for d, (w, s) in enumerate(ornt)}
    slice_w, row_w, col_w = ANATOMICAL_AXES[axis]
    s_dim, s_sign = world_to_dim[slice_w]
    r_dim, r_sign = world_to_dim[row_w]
    c_dim, c_sign = world_to_dim[col_w]
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    return SliceGeometry(
        axis=axis,
        slice_dim=s_dim,
        slice_reversed=s_sign < 0,  # slices grow towards +world
        row_dim=r_dim,
        row_reversed=r_sign > 0,  # rows grow towards -world
        col_dim=c_dim,
        col_reversed=c_sign > 0,  # columns grow towards -world
        num_slices=shape[s_dim],
        pixel_spacing=(float(zooms[r_dim]), float(zooms[c_dim])),
    )


def resolve_slice_indices(
    num_slices: int,
    indices: Sequence[int] | None = None,
    positions: Sequence[float] | None = None,
    stride: int | None = None,
    source: str = "<volume>",
    axis: str = "axial",
) -> list[int]:
    """Turn an index policy into canonical slice indices.

    Exactly one policy applies: explicit ``indices``; relative ``positions`` (fractions in [0, 1] of the extent,
    index ``floor(p * (num_slices - 1) + 0.5)``); or all slices with an optional ``stride`` (default 1).

    Args:
        num_slices: number of slices along the axis.
        indices: explicit canonical indices (slice 0 as defined in the module docstring).
        positions: relative positions in [0, 1].
        stride: step for the "all slices" policy.
        source: file name used in error messages.
        axis: axis name used in error messages.

    Returns:
        list of canonical indices, in the requested order.

    Raises:
        ValueError: conflicting policies, an index outside the volume, a position outside [0, 1], a bad stride.
    """
    given = [name for name, v in (("indices", indices), ("positions", positions)) if v is not None]
    if len(given) > 1 or (given and stride is not None):
        raise ValueError(
            f"choose one slice policy: got {given + (['stride'] if stride is not None else [])}; "
            "use indices, positions, or stride (all slices) alone."
        )
    if num_slices < 1:
        raise ValueError(f"{source}: the {axis} axis has no slices.")
    if indices is not None:
        out = []
        for i in indices:
            if isinstance(i, bool) or int(i) != i:
                raise ValueError(f"{source}: slice index {i!r} is not an integer.")
            if not 0 <= int(i) < num_slices:
                raise ValueError(
                    f"slice index {int(i)} is outside {source}: the {axis} axis has {num_slices} slices "
                    f"(valid indices 0..{num_slices - 1})."
                )
            out.append(int(i))
        return out
    if positions is not None:
        out = []
        for p in positions:
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{source}: relative slice position {p!r} is outside [0, 1].")
            out.append(int(np.floor(float(p) * (num_slices - 1) + 0.5)))
        return out
    step = 1 if stride is None else stride
    if isinstance(step, bool) or int(step) != step or int(step) < 1:
        raise ValueError(f"slice stride must be a positive integer, got {stride!r}.")
    return list(range(0, num_slices, int(step)))


class VolumeSource:
    """A 3D volume that can hand out single planes (base class of in-memory and lazy on-disk sources).

    Subclasses set ``filename`` (str), ``affine`` (4x4 RAS+ numpy array), ``spatial_shape`` (3 ints) and implement
    :meth:`read_plane`.
    """

    filename: str = "<volume>"
    affine: np.ndarray
    spatial_shape: tuple[int, int, int]

    def read_plane(self, dim: int, index: int) -> np.ndarray:
        """Return the plane ``index`` along spatial ``dim`` as ``[C, a, b]`` (remaining dims in increasing order)."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_plane")


class ArrayVolumeSource(VolumeSource):
    """In-memory channel-first volume ``[C, X, Y, Z]`` (or ``[X, Y, Z]``) with an affine.

    Args:
        array: the volume.
        affine: 4x4 RAS+ affine.
        filename: name used in metadata and error messages.
    """

    def __init__(self, array: Any, affine: Any, filename: str = "<volume>"):
        arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(
                f"{filename}: expected a 3D volume [X, Y, Z] or channel-first [C, X, Y, Z], "
                f"got shape {tuple(arr.shape)}."
            )
        self.array = arr
        self.affine = _as_affine(affine, filename)
        x, y, z = (int(s) for s in arr.shape[1:])  # 4D, checked above
        self.spatial_shape = (x, y, z)
        self.filename = filename

    def read_plane(self, dim: int, index: int) -> np.ndarray:
        return np.take(self.array, index, axis=dim + 1)


def _slice_affine(aff: np.ndarray, geom: SliceGeometry, shape: Sequence[int], array_index: int) -> np.ndarray:
    base = np.zeros(3)
    base[geom.slice_dim] = array_index
    d_r = np.zeros(3)
    d_r[geom.row_dim] = -1.0 if geom.row_reversed else 1.0
    if geom.row_reversed:
        base[geom.row_dim] = shape[geom.row_dim] - 1
    d_c = np.zeros(3)
    d_c[geom.col_dim] = -1.0 if geom.col_reversed else 1.0
    if geom.col_reversed:
        base[geom.col_dim] = shape[geom.col_dim] - 1
    d_s = np.zeros(3)
    d_s[geom.slice_dim] = -1.0 if geom.slice_reversed else 1.0
    out = np.eye(4)
    out[:3, 0] = aff[:3, :3] @ d_r
    out[:3, 1] = aff[:3, :3] @ d_c
    out[:3, 2] = aff[:3, :3] @ d_s
    out[:3, 3] = aff[:3, :3] @ base + aff[:3, 3]
    return out


def _orient_plane(plane: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """``plane`` is ``[C, a, b]`` with the two remaining spatial dims in increasing order -> ``[C, rows, cols]``."""
    if geom.row_dim > geom.col_dim:
        plane = np.swapaxes(plane, 1, 2)
    if geom.row_reversed:
        plane = plane[:, ::-1, :]
    if geom.col_reversed:
        plane = plane[:, :, ::-1]
    return np.ascontiguousarray(plane)


def unorient_plane(plane: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """Inverse of the display orientation of :func:`extract_slices_from_source`.

    Args:
        plane: ``[..., rows, cols]`` in the radiological display orientation of ``geom``.
        geom: the volume's :class:`SliceGeometry` for the axis the plane was extracted along.

    Returns:
        ``[..., a, b]``: the plane on the stored array's grid, the two in-plane array dims in increasing order
        (what ``np.take(volume, index, axis=geom.slice_dim)`` gives for a ``[X, Y, Z]`` volume).
    """
    plane = np.asarray(plane)
    if geom.col_reversed:
        plane = plane[..., :, ::-1]
    if geom.row_reversed:
        plane = plane[..., ::-1, :]
    if geom.row_dim > geom.col_dim:
        plane = np.swapaxes(plane, -1, -2)
    return np.ascontiguousarray(plane)


def slices_to_volume(
    planes: Any,
    slice_indices: Sequence[int],
    affine: Any,
    spatial_shape: Sequence[int],
    axis: str = "axial",
    fill: float = 0.0,
    dtype: Any = np.float32,
    source: str = "<volume>",
) -> np.ndarray:
    """Put 2D arrays in display orientation back into a volume on the stored array's grid.

    The inverse of :func:`extract_slices_from_source` for the given slices: ``slices_to_volume(s, idx, ...)`` holds
    ``s[n]`` on canonical slice ``idx[n]``, every other voxel is ``fill``.

    Args:
        planes: ``[N, rows, cols]`` arrays (numpy or tensor), ``rows x cols`` the slices' display size.
        slice_indices: ``N`` canonical slice indices (module docstring), distinct.
        affine: the volume's 4x4 RAS+ affine.
        spatial_shape: the volume's three spatial sizes.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``: the axis the planes were extracted along.
        fill: value of the voxels of slices not given.
        dtype: numpy dtype of the output.
        source: name used in error messages.

    Returns:
        ``[X, Y, Z]`` array with ``spatial_shape``.

    Raises:
        ValueError: when the number, size or indices of the planes do not fit the volume.
    """
    geom = slice_geometry(affine, spatial_shape, axis, source=source)
    shape = tuple(int(s) for s in spatial_shape)
    data = planes.detach().cpu().numpy() if isinstance(planes, torch.Tensor) else np.asarray(planes)
    expected = (shape[geom.row_dim], shape[geom.col_dim])
    if data.ndim != 3 or data.shape[0] != len(slice_indices) or tuple(data.shape[1:]) != expected:
        raise ValueError(
            f"{source}: expected {len(slice_indices)} {axis} planes of display size {expected} (rows, columns) for "
            f"a volume of shape {shape}, got an array of shape {tuple(data.shape)}."
        )
    indices = resolve_slice_indices(geom.num_slices, list(slice_indices), source=source, axis=axis)
    if len(set(indices)) != len(indices):
        raise ValueError(f"{source}: slice indices {indices} repeat a slice; expected distinct indices.")
    volume = np.full(shape, fill, dtype=dtype)
    for plane, index in zip(data, indices):
        target: list[slice | int] = [slice(None)] * 3
        target[geom.slice_dim] = geom.array_index(index)
        volume[tuple(target)] = unorient_plane(plane, geom)
    return volume


def extract_slices_from_source(
    source: VolumeSource,
    axis: str = "axial",
    indices: Sequence[int] | None = None,
    positions: Sequence[float] | None = None,
    stride: int | None = None,
    dtype: Any = np.float32,
) -> list[MetaTensor]:
    """Extract canonical slices from a :class:`VolumeSource` (shared by the in-memory and lazy paths).

    Args:
        source: the volume.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        indices: explicit canonical slice indices.
        positions: relative positions in [0, 1].
        stride: stride over all slices (when neither indices nor positions is given).
        dtype: numpy dtype of the output arrays.

    Returns:
        list of ``MetaTensor`` ``[C, H, W]``, one per requested slice, with per-slice metadata.
    """
    geom = slice_geometry(source.affine, source.spatial_shape, axis, source=source.filename)
    wanted = resolve_slice_indices(geom.num_slices, indices, positions, stride, source=source.filename, axis=axis)
    out = []
    for k in wanted:
        ai = geom.array_index(k)
        plane = _orient_plane(np.asarray(source.read_plane(geom.slice_dim, ai)), geom).astype(dtype, copy=False)
        rows, cols = plane.shape[1:]
        meta = {
            "filename_or_obj": source.filename,
            "slice_index": int(k),
            "slice_array_index": int(ai),
            "slice_axis": axis,
            "num_slices": int(geom.num_slices),
            "pixel_spacing": geom.pixel_spacing,
            "spatial_shape": (int(rows), int(cols)),
            # a copy per slice: no slice shares memory with the source's (or another slice's) affine
            "volume_affine": torch.tensor(source.affine, dtype=torch.float64),
            "volume_spatial_shape": tuple(int(v) for v in source.spatial_shape),
            "space": "RAS",
        }
        aff = torch.as_tensor(_slice_affine(source.affine, geom, source.spatial_shape, ai), dtype=torch.float64)
        out.append(MetaTensor(torch.from_numpy(np.array(plane)), affine=aff, meta=meta))
    return out


def stack_slices(slices: Sequence[MetaTensor]) -> tuple[MetaTensor, list[dict]]:
    """Stack per-slice tensors into one ``[N, C, H, W]`` tensor for study-level inference.

    Args:
        slices: output of :class:`ExtractSlices` (all with the same ``[C, H, W]`` shape).

    Returns:
        (stack, per-slice metadata list). The stack's metadata holds ``filename_or_obj``, ``slice_axis``,
        ``slice_indices`` and ``pixel_spacing``.
    """
    if len(slices) == 0:
        raise ValueError("cannot stack an empty list of slices.")
    shapes = {tuple(s.shape) for s in slices}
    if len(shapes) != 1:
        raise ValueError(f"slices of {slices[0].meta.get('filename_or_obj')} have different shapes {sorted(shapes)}.")
    metas = [dict(s.meta) for s in slices]
    for m, s in zip(metas, slices):
        m["affine"] = s.affine.clone()
    stack = torch.stack([s.as_tensor() for s in slices])
    first = metas[0]
    meta = {
        "filename_or_obj": first["filename_or_obj"],
        "slice_axis": first["slice_axis"],
        "slice_indices": [m["slice_index"] for m in metas],
        "pixel_spacing": first["pixel_spacing"],
    }
    return MetaTensor(stack, affine=slices[0].affine.clone(), meta=meta), metas


def _source_from_tensor(img: Any) -> ArrayVolumeSource:
    if isinstance(img, MetaTensor):
        name = str(img.meta.get("filename_or_obj", "<volume>"))
        spatial = img.meta.get("spatial_shape")
        if spatial is not None and len(np.atleast_1d(np.asarray(spatial))) == 2:
            raise ValueError(
                f"{name}: a 2D image (spatial shape {tuple(np.asarray(spatial).tolist())}) was given where a 3D "
                "volume is expected."
            )
        return ArrayVolumeSource(img.as_tensor(), img.affine, filename=name)
    raise TypeError(f"expected a MetaTensor volume with an affine, got {type(img).__name__}.")


class SliceSelection(Transform):
    """Which slices to take: an anatomical axis and one index policy, checked once at construction.

    The base of :class:`ExtractSlices` (slices of a volume in memory) and
    :class:`~sdmad_monai.transforms.LoadSlices` (the same slices read from disk); :meth:`slices_of` takes them from
    any :class:`VolumeSource`.

    Args:
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        indices: explicit canonical indices (e.g. ``(0, 5, 10)`` for fastMRI+).
        positions: relative positions in [0, 1] (e.g. ``(0.5,)`` for the middle slice).
        stride: stride over all slices when ``indices`` and ``positions`` are None.

    Raises:
        ValueError: an unknown axis, conflicting policies or a bad stride.
    """

    def __init__(
        self,
        axis: str = "axial",
        indices: Sequence[int] | None = None,
        positions: Sequence[float] | None = None,
        stride: int | None = None,
    ):
        if axis not in ANATOMICAL_AXES:
            raise ValueError(f"unknown slice axis {axis!r}; expected one of {sorted(ANATOMICAL_AXES)}.")
        self.axis = axis
        self.indices = None if indices is None else tuple(indices)
        self.positions = None if positions is None else tuple(positions)
        self.stride = stride
        # validate the policy once at construction: conflicting policies, bad stride
        if (indices is not None) + (positions is not None) + (stride is not None) > 1 or stride is not None:
            resolve_slice_indices(1, self.indices, self.positions, stride)

    def slices_of(self, source: VolumeSource) -> list[MetaTensor]:
        """The selected slices of ``source`` (:func:`extract_slices_from_source`)."""
        return extract_slices_from_source(source, self.axis, self.indices, self.positions, self.stride)


class ExtractSlices(SliceSelection):
    """Extract 2D slices along an anatomical axis resolved from the affine (arguments: :class:`SliceSelection`).

    Input: ``MetaTensor`` ``[C, X, Y, Z]`` (or ``[X, Y, Z]``) with a RAS+ affine. Output: list of ``MetaTensor``
    ``[C, H, W]`` (see module docstring for orientation and metadata).
    """

    def __call__(self, img: MetaTensor) -> list[MetaTensor]:
        return self.slices_of(_source_from_tensor(img))


def _item_indices(d: Mapping[Hashable, Any], index_key: str) -> tuple[list[int], bool]:
    """Indices stored in the data dict: an int (one slice -> single output) or a sequence of ints."""
    if index_key not in d:
        raise KeyError(f"slice index key {index_key!r} not found in the data (keys: {sorted(map(str, d))}).")
    value = d[index_key]
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)], True
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        return [int(v) for v in value], False
    raise ValueError(f"data[{index_key!r}] must be an int or a list of ints, got {value!r}.")


def _emit(
    d: Mapping[Hashable, Any],
    per_key: dict[Hashable, list[MetaTensor]],
    stack: bool,
    meta_postfix: str,
    single: bool = False,
) -> list[dict] | dict:
    counts = {k: len(v) for k, v in per_key.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"keys gave different numbers of slices: {counts}.")
    if single and not stack:
        out = dict(d)
        for k, v in per_key.items():
            out[k] = v[0]
        return out
    if stack:
        out = dict(d)
        for k, v in per_key.items():
            out[k], out[f"{k}_{meta_postfix}"] = stack_slices(v)
        return out
    n = next(iter(counts.values())) if counts else 0
    items = []
    for i in range(n):
        item = {k: (copy.copy(v) if k not in per_key else per_key[k][i]) for k, v in d.items()}
        items.append(item)
    return items


class SlicingMapTransform(MapTransform):
    """Shared body of the dictionary slicing transforms: apply ``slicer_type(axis, indices, positions, stride)`` to
    each key, or, with ``index_key``, a slicer for the indices stored in the data item.

    Subclasses set ``slicer_type`` (:class:`ExtractSlices` on volumes, ``LoadSlices`` on paths).
    """

    slicer_type: type

    def __init__(
        self,
        keys: KeysCollection,
        axis: str = "axial",
        indices: Sequence[int] | None = None,
        positions: Sequence[float] | None = None,
        stride: int | None = None,
        stack: bool = False,
        meta_postfix: str = "slice_meta",
        index_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if index_key is not None and (indices is not None or positions is not None or stride is not None):
            raise ValueError(
                "index_key reads the slice indices from the data; do not also pass indices/positions/stride."
            )
        self.slicer = self.slicer_type(axis, indices, positions, stride)
        self.stack = stack
        self.meta_postfix = meta_postfix
        self.index_key = index_key

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict] | dict:
        d = dict(data)
        slicer, single = self.slicer, False
        if self.index_key is not None:
            wanted, single = _item_indices(d, self.index_key)
            slicer = self.slicer_type(self.slicer.axis, indices=wanted)
        per_key = {key: slicer(d[key]) for key in self.key_iterator(d)}
        return _emit(d, per_key, self.stack, self.meta_postfix, single)


class ExtractSlicesd(SlicingMapTransform):
    """Dictionary version of :class:`ExtractSlices`.

    With ``stack=False`` (dataset use) it returns a list of dicts, one per slice, like
    ``RandCropByPosNegLabeld``: every other key is copied. With ``stack=True`` (study inference) it returns one
    dict where each key holds ``[N, C, H, W]`` and ``{key}_{meta_postfix}`` holds the per-slice metadata list.
    With ``index_key`` (e.g. ``"slice"`` of a fastMRI+ datalist item) the indices are read from the data: an int
    gives one dict whose keys hold ``[C, H, W]``; a list behaves like ``indices``.

    Args:
        keys: keys of the volumes to slice (all must give the same number of slices, e.g. image and mask).
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        indices: explicit canonical indices.
        positions: relative positions in [0, 1].
        stride: stride over all slices.
        stack: stack the slices instead of returning one item per slice.
        meta_postfix: postfix of the per-slice metadata key in stack mode.
        index_key: data key holding the slice index (int) or indices (list); overrides the index policy.
        allow_missing_keys: don't raise for missing keys.
    """

    slicer_type = ExtractSlices
