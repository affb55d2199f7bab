"""2D images and anomaly masks (BMAD benchmark folders: PNG/JPEG/TIFF/BMP, NumPy, 2D NIfTI).

* :func:`load_image_2d` reads one image as ``[C, H, W]`` float32 in its stored row/column order (row 0 is the top
  row of the PNG, no transposition): grayscale gives ``C = 1``, colour ``C = 3`` (alpha and palettes are converted).
* :class:`LoadImage2Dd` is its dictionary transform; the images then go through the same
  :func:`~sdmad_monai.transforms.clip_slice_transforms` as MRI slices.
* :class:`AnomalyMaskd` loads a binary anomaly mask (or makes an all-zero one for a normal image without a mask file),
  checks that it has the image's size and resizes it to the detector's input square exactly as the image
  (:class:`~sdmad_monai.transforms.ResizeToSquare`, nearest neighbour), so that map and mask pixels correspond.

Mask binarisation (as MVFA's BMAD loader, which thresholds ``ToTensor`` masks at 0.5): a pixel is anomalous when its
value exceeds half of the full scale: ``> 127.5`` for 8-bit masks saved as 0/255, ``> 0.5`` for masks whose values are
at most 1 (0/1 integers, booleans, floats); for other integer types half of the type's maximum.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

from .dictionary import ArrayTransformd
from .intensity import ResizeToSquare

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

__all__ = ["AnomalyMaskd", "LoadImage2D", "LoadImage2Dd", "binarize_mask", "load_image_2d"]

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load_image_2d(path: str | Path) -> np.ndarray:
    """Read a 2D image as ``[C, H, W]`` (``C`` 1 or 3) in stored row/column order, keeping its dtype.

    Args:
        path: ``.png``/``.jpg``/``.jpeg``/``.bmp``/``.tif``/``.tiff``, ``.npy`` (``[H, W]``, ``[H, W, C]`` or
            ``[C, H, W]``) or a NIfTI file holding one 2D slice.

    Returns:
        ``[C, H, W]`` numpy array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, unsupported suffix, or not a 2D grayscale/RGB image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(_PIL_SUFFIXES):
            from PIL import Image

            with Image.open(path) as image:
                if image.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "HSV"):
                    image = image.convert("RGB" if image.mode not in ("LA",) else "L")
                array = np.asarray(image)
            if array.ndim == 3:  # PIL gives [H, W, C]
                array = np.moveaxis(array, -1, 0)
        elif name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            if array.ndim == 3 and array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
                array = np.moveaxis(array, -1, 0)  # [H, W, C]; an array that could be either is read [C, H, W]
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            nifti = cast("SpatialImage", nib.load(path))  # NIfTI: nib.load is typed as the FileBasedImage base
            array = np.squeeze(np.asarray(nifti.dataobj))
            array = array.T if array.ndim == 2 else array  # NIfTI (i, j) is (column, row) of the displayed slice
        else:
            raise ValueError(f"{path}: unsupported 2D image type; expected PNG/JPEG/BMP/TIFF, .npy or 2D NIfTI.")
    except ValueError:
        raise
    except Exception as error:  # PIL, numpy and nibabel raise many types for corrupt files
        raise ValueError(f"cannot read image {path} (corrupt or truncated?): {error}") from error
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(
            f"{path}: expected a 2D grayscale or RGB image ([H, W], [H, W, 3] or [C, H, W]), got shape {array.shape}."
        )
    return np.ascontiguousarray(array)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` mask -> ``[1, H, W]`` float32 0/1 (anomalous where any channel is above half scale)."""
    values = np.asarray(mask)
    if values.dtype == np.bool_:
        binary = values
    else:
        peak = float(values.max()) if values.size else 0.0
        if peak <= 1.0:
            threshold = 0.5
        elif np.issubdtype(values.dtype, np.integer):
            threshold = np.iinfo(values.dtype).max / 2.0
        else:
            threshold = peak / 2.0
        binary = values > threshold
    # np.asarray: numpy's stubs type ``any(keepdims=True)`` as possibly a scalar, though it is always an array here
    return np.asarray(binary.any(axis=0, keepdims=True), dtype=np.float32)


class LoadImage2D(Transform):
    """Array transform wrapping :func:`load_image_2d`: path -> float32 ``[C, H, W]`` tensor."""

    def __call__(self, path: str | Path) -> torch.Tensor:
        return torch.from_numpy(load_image_2d(path).astype(np.float32))


class LoadImage2Dd(ArrayTransformd):
    """Load 2D images with :func:`load_image_2d` as float32 ``[C, H, W]`` tensors (dictionary version of
    :class:`LoadImage2D`; arguments: ``keys`` holding image paths, ``allow_missing_keys``)."""

    array_transform = LoadImage2D


class AnomalyMaskd(MapTransform):
    """Binary anomaly mask at the detector's input size, aligned with the image.

    Reads ``data[mask_key]`` (a path) with :func:`load_image_2d` and :func:`binarize_mask`; an item without the key
    (a normal image, BMAD ``good``) gets an all-zero mask. The mask must have the image's ``H x W`` (read from
    ``data[image_key]`` before any resize), then goes through ``ResizeToSquare(size, mode="nearest")``.

    Args:
        mask_key: key of the mask path; the result is stored under ``output_key``.
        image_key: key of the loaded ``[C, H, W]`` image whose size the mask must have.
        size: detector input side.
        output_key: where the ``[1, size, size]`` float32 mask goes (defaults to ``mask_key``).
        image_path_key: key of the image path, used in error messages (optional).
    """

    def __init__(
        self,
        mask_key: str = "mask",
        image_key: str = "image",
        size: int = 240,
        output_key: str | None = None,
        image_path_key: str | None = "file",
    ) -> None:
        super().__init__([mask_key], allow_missing_keys=True)
        self.mask_key, self.image_key = mask_key, image_key
        self.output_key = output_key or mask_key
        self.image_path_key = image_path_key
        self.resize = ResizeToSquare(size, mode="nearest")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(
                f"AnomalyMaskd needs the loaded image under {self.image_key!r} (keys: {sorted(map(str, d))})."
            )
        height, width = (int(v) for v in d[self.image_key].shape[-2:])
        path = d.get(self.mask_key)
        if path is None:
            mask = np.zeros((1, height, width), dtype=np.float32)
        else:
            mask = binarize_mask(load_image_2d(path))
            if mask.shape[-2:] != (height, width):
                image = d.get(self.image_path_key, "the image") if self.image_path_key else "the image"
                raise ValueError(
                    f"anomaly mask {path} is {mask.shape[-2]}x{mask.shape[-1]} pixels but {image} is "
                    f"{height}x{width}; a mask must have its image's size."
                )
        d[self.output_key] = self.resize(torch.from_numpy(mask))
        return d
