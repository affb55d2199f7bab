"""Planted-lesion brain slices with exact masks: in-memory generated data for pixel-level training and its tests.

:func:`planted_lesion_slices` draws bright disc lesions into axial MNI152 slices (the demo dataset's anatomy) and
returns images, masks and labels as tensors, with no file written.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

__all__ = ["planted_lesion_slices"]


@functools.lru_cache(maxsize=1)
def _mni_axial_slices() -> np.ndarray:
    """Eleven axial slices of the MNI152 T1 template shipped in nilearn (the demo dataset's anatomy, see
    :mod:`sdmad_monai.data.demo`), ``[Z, X, Y]`` scaled to [0, 1], MNI z = 0 to +40 mm every 4 mm (ventricles and
    white matter). Only these slices are read and smoothed, so this takes about a second."""
    import importlib.util

    import nibabel as nib
    from scipy import ndimage

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("planted_lesion_slices needs the 'nilearn' package (it ships the MNI152 template).")
    name = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MNI152 template not found inside nilearn at {path}.")
    image = cast("SpatialImage", nib.load(path))  # a NIfTI file: nib.load is typed as the FileBasedImage base
    z0 = int(round(np.linalg.inv(image.affine)[2, 3]))  # voxel index of MNI z = 0 (1 mm, axis-aligned template)
    data = np.asarray(image.dataobj[:, :, z0 : z0 + 41 : 4], dtype=np.float32)
    data /= data.max()
    smoothed = [ndimage.gaussian_filter(data[..., k], sigma=0.8) for k in range(data.shape[2])]
    return np.ascontiguousarray(np.stack(smoothed))


def planted_lesion_slices(
    num_images: int,
    size: int = 64,
    seed: int = 0,
    abnormal_fraction: float = 0.5,
    radius: tuple[float, float] = (0.06, 0.1),
) -> dict[str, torch.Tensor]:
    """Axial MNI152 brain slices with planted bright disc lesions and their exact masks (deterministic).

    Each image is one of eleven axial template slices (MNI z = 0..40 mm), mirrored at random, scaled in intensity
    (0.9-1.1), with Gaussian noise (sd 0.02). An abnormal image gets one disc inside the brain, radius ``radius`` x
    ``size``, at 1.3x the 95th-percentile brain intensity (as the demo dataset draws nonspecific lesions).

    Args:
        num_images: number of slices.
        size: side in pixels (square).
        seed: random seed.
        abnormal_fraction: share of images with a lesion (the first ``round(num_images * fraction)`` after a shuffle).
        radius: range of the lesion radius as a fraction of ``size``.

    Returns:
        ``image`` ``[N, 1, S, S]`` in ``[0, ~1.3]``, ``mask`` ``[N, 1, S, S]`` of 0/1, ``label`` ``[N]`` of 0/1.
    """
    if num_images < 1 or size < 8:
        raise ValueError(f"num_images must be >= 1 and size >= 8, got {num_images} and {size}.")
    slices = _mni_axial_slices()
    rng = np.random.default_rng(seed)
    abnormal = np.zeros(num_images, dtype=bool)
    abnormal[: int(round(num_images * abnormal_fraction))] = True
    rng.shuffle(abnormal)
    images, masks = [], []
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    for i in range(num_images):
        base = torch.as_tensor(slices[rng.integers(len(slices))], dtype=torch.float32)[None, None]
        base = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        image = base.numpy().T[::-1].copy()  # rows anterior -> posterior, as a radiologist views an axial slice
        if rng.uniform() < 0.5:
            image = image[:, ::-1].copy()
        brain = image > 0.15
        mask = np.zeros((size, size), dtype=np.float32)
        if abnormal[i]:
            r = rng.uniform(*radius) * size
            inside = np.argwhere(brain & (np.minimum.reduce([yy, xx, size - 1 - yy, size - 1 - xx]) > r + 2))
            cy, cx = inside[rng.integers(len(inside))]
            disc = np.hypot(yy - cy, xx - cx) <= r
            image[disc] = 1.3 * float(np.percentile(image[brain], 95))
            mask[disc] = 1.0
        image = image * rng.uniform(0.9, 1.1)
        image = np.abs(image + rng.normal(0.0, 0.02, size=image.shape))
        images.append(image.astype(np.float32))
        masks.append(mask)
    return {
        "image": torch.from_numpy(np.stack(images))[:, None],
        "mask": torch.from_numpy(np.stack(masks))[:, None],
        "label": torch.from_numpy(abnormal.astype(np.float32)),
    }
