"""Per-slice intensity preprocessing for CLIP: robust percentile scaling, 1->3 channels, square resize, CLIP norm.

All array transforms accept one slice ``[C, H, W]`` or a stack of slices ``[N, C, H, W]`` (from
``ExtractSlicesd(stack=True)``); statistics are always computed per slice.

Non-finite values (documented behaviour, never silent NaN tensors):

* NaN / +-Inf voxels are excluded from the percentile statistics and set to 0 in the output, with one
  ``RuntimeWarning`` per slice naming the file and slice index from the metadata.
* An all-NaN slice becomes all zeros (same warning).
* A constant slice (upper percentile == lower percentile) becomes all zeros, without warning (blank slices are
  common at the ends of MRI volumes). After CLIP normalisation a zero pixel becomes ``-mean/std``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, Transform

from .dictionary import ArrayTransformd

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PercentileNormalize",
    "PercentileNormalized",
    "RepeatToRGB",
    "RepeatToRGBd",
    "ResizeToSquare",
    "ResizeToSquared",
    "ClipNormalize",
    "ClipNormalized",
    "clip_slice_transforms",
    "square_resize_geometry",
    "undo_resize_to_square",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_slices(img: Any) -> tuple[torch.Tensor, bool]:
    t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
    if t.ndim == 3:
        return t.unsqueeze(0), False
    if t.ndim == 4:
        return t, True
    raise ValueError(f"expected a slice [C, H, W] or a stack [N, C, H, W], got shape {tuple(t.shape)}.")


def _rewrap(img: Any, out: torch.Tensor, stacked: bool) -> Any:
    res = out if stacked else out[0]
    if isinstance(img, MetaTensor):
        return MetaTensor(res, affine=img.affine.clone(), meta=_meta_without_affine(img))
    return res


def _meta_without_affine(img: MetaTensor) -> dict:
    return {k: v for k, v in img.meta.items() if k != "affine"}


def _slice_label(img: Any, i: int) -> str:
    meta = img.meta if isinstance(img, MetaTensor) else {}
    name = meta.get("filename_or_obj", "<unnamed>")
    if "slice_indices" in meta:
        idx = meta["slice_indices"][i]
    else:
        idx = meta.get("slice_index", i)
    return f"{name} (slice {idx})"


class PercentileNormalize(Transform):
    """Clip each slice to its [lower, upper] percentiles and scale to [0, 1].

    Args:
        lower: lower percentile (default 0.5).
        upper: upper percentile (default 99.5).

    Shapes: ``[C, H, W]`` or ``[N, C, H, W]`` -> same, float32; percentiles over all channels of a slice.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5):
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, img: Any) -> Any:
        x, stacked = _as_slices(img)
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        x = x.to(torch.float32)
        out = torch.zeros_like(x)
        for i in range(x.shape[0]):
            s = x[i]
            finite = torch.isfinite(s)
            if not bool(finite.all()):
                n_bad = int((~finite).sum())
                warnings.warn(
                    f"{_slice_label(img, i)}: {n_bad} non-finite (NaN/Inf) value(s) set to 0 after normalisation.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            vals = s[finite].to(torch.float64)
            if vals.numel() == 0:
                continue
            lo, hi = np.percentile(vals.numpy(), [self.lower, self.upper])
            if not hi > lo:
                continue  # constant slice -> zeros
            y = ((s.to(torch.float64) - lo) / (hi - lo)).clamp(0.0, 1.0)
            out[i] = torch.where(finite, y, torch.zeros_like(y)).to(torch.float32)
        return _rewrap(img, out, stacked)


class RepeatToRGB(Transform):
    """Replicate a single channel to 3 channels (3-channel input is returned unchanged).

    Shapes: ``[1, H, W]`` -> ``[3, H, W]``; ``[N, 1, H, W]`` -> ``[N, 3, H, W]``.
    """

    def __call__(self, img: Any) -> Any:
        x, stacked = _as_slices(img)
        if x.shape[1] == 3:
            return img
        if x.shape[1] != 1:
            raise ValueError(f"RepeatToRGB expects 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)}).")
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        return _rewrap(img, x.repeat(1, 3, 1, 1), stacked)


def square_resize_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where :class:`ResizeToSquare` puts a ``height x width`` slice on the ``size x size`` square.

    The scale is ``size / max(height, width)``; each resized side is ``max(1, round(side * scale))``; the padding
    before it is ``(size - side) // 2``.

    Args:
        height: rows of the slice.
        width: columns of the slice.
        size: side of the square.

    Returns:
        ``(resized_height, resized_width, top, left)``: the resized slice occupies rows ``top:top + resized_height``
        and columns ``left:left + resized_width`` of the square.
    """
    scale = size / max(height, width)
    resized_height, resized_width = max(1, round(height * scale)), max(1, round(width * scale))
    return resized_height, resized_width, (size - resized_height) // 2, (size - resized_width) // 2


def undo_resize_to_square(maps: torch.Tensor, shape: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Inverse of :class:`ResizeToSquare` for maps at the square size: crop the padding, resize back.

    Args:
        maps: ``[N, S, S]`` maps on the resized and padded square.
        shape: ``(rows, cols)`` of the slices before :class:`ResizeToSquare`.
        mode: interpolation mode back to ``(rows, cols)``.

    Returns:
        ``[N, rows, cols]`` float32 maps.

    Raises:
        ValueError: when ``maps`` is not ``[N, S, S]``.
    """
    if maps.ndim != 3 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"expected square maps [N, S, S], got shape {tuple(maps.shape)}.")
    h, w = (int(v) for v in shape)
    nh, nw, top, left = square_resize_geometry(h, w, int(maps.shape[-1]))
    cropped = maps[:, top : top + nh, left : left + nw].to(torch.float32)
    if (nh, nw) == (h, w):
        return cropped.contiguous()
    kwargs: dict[str, Any] = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    return F.interpolate(cropped[:, None], size=(h, w), **kwargs)[:, 0]


class ResizeToSquare(Transform):
    """Aspect-preserving resize so the longer side equals ``size``, then centred zero padding to ``size x size``.

    The placement is :func:`square_resize_geometry` (scale ``size / max(H, W)``, centred); its inverse on maps is
    :func:`undo_resize_to_square`. For ``MetaTensor`` inputs the affine and ``pixel_spacing`` are updated.

    Args:
        size: output side length (e.g. 240 or 224).
        mode: interpolation mode of ``torch.nn.functional.interpolate`` (``"bilinear"``, ``"nearest"``, ...).
        antialias: antialias when downsampling (bilinear/bicubic only).

    Shapes: ``[C, H, W]`` -> ``[C, size, size]``; ``[N, C, H, W]`` -> ``[N, C, size, size]``.
    """

    def __init__(self, size: int, mode: str = "bilinear", antialias: bool = True):
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}.")
        self.size, self.mode, self.antialias = int(size), mode, antialias

    def __call__(self, img: Any) -> Any:
        x, stacked = _as_slices(img)
        x = (x.as_tensor() if isinstance(x, MetaTensor) else x).to(torch.float32)
        h, w = x.shape[-2:]
        nh, nw, top, left = square_resize_geometry(h, w, self.size)
        kw: dict = {"mode": self.mode}
        if self.mode in ("bilinear", "bicubic"):
            kw.update(align_corners=False, antialias=self.antialias)
        y = F.interpolate(x, size=(nh, nw), **kw) if (nh, nw) != (h, w) else x
        y = F.pad(y, (left, self.size - nw - left, top, self.size - nh - top))
        res = y if stacked else y[0]
        if not isinstance(img, MetaTensor):
            return res
        meta = _meta_without_affine(img)
        sr, sc = h / nh, w / nw  # input pixels per output pixel
        aff = img.affine.clone().to(torch.float64)
        new = aff.clone()
        new[:3, 0] = aff[:3, 0] * sr
        new[:3, 1] = aff[:3, 1] * sc
        # output pixel (r, c) centre -> input continuous coordinate (r - top + 0.5) * sr - 0.5
        new[:3, 3] = (
            aff[:3, 3] + aff[:3, 0] * (-(top * sr) + 0.5 * sr - 0.5) + aff[:3, 1] * (-(left * sc) + 0.5 * sc - 0.5)
        )
        if "pixel_spacing" in meta:
            ps = meta["pixel_spacing"]
            meta["pixel_spacing"] = (float(ps[0]) * sr, float(ps[1]) * sc)
        meta["spatial_shape"] = (self.size, self.size)
        return MetaTensor(res, affine=new, meta=meta)


class ClipNormalize(Transform):
    """Per-channel ``(x - mean) / std`` with CLIP statistics (OpenAI CLIP by default).

    Args:
        mean: per-channel mean.
        std: per-channel standard deviation (all > 0).

    Shapes: ``[C, H, W]`` or ``[N, C, H, W]`` with ``C == len(mean)`` -> same.
    """

    def __init__(self, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD):
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have the same length.")
        if any(float(s) <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {tuple(std)}.")
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    def __call__(self, img: Any) -> Any:
        x, stacked = _as_slices(img)
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"ClipNormalize expects {len(self.mean)} channels (len(mean)), "
                f"got {x.shape[1]} (shape {tuple(x.shape)})."
            )
        x = (x.as_tensor() if isinstance(x, MetaTensor) else x).to(torch.float32)
        y = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return _rewrap(img, y, stacked)


class PercentileNormalized(ArrayTransformd):
    """Dictionary version of :class:`PercentileNormalize`.

    Args:
        keys: keys to transform.
        lower: lower percentile.
        upper: upper percentile.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = PercentileNormalize(lower, upper)


class RepeatToRGBd(ArrayTransformd):
    """Dictionary version of :class:`RepeatToRGB` (arguments: ``keys``, ``allow_missing_keys``)."""

    array_transform = RepeatToRGB


class ResizeToSquared(ArrayTransformd):
    """Dictionary version of :class:`ResizeToSquare`.

    Args:
        keys: keys to transform.
        size: output side.
        mode: interpolation mode.
        antialias: antialias when downsampling.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int,
        mode: str = "bilinear",
        antialias: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = ResizeToSquare(size, mode, antialias)


class ClipNormalized(ArrayTransformd):
    """Dictionary version of :class:`ClipNormalize`.

    Args:
        keys: keys to transform.
        mean: per-channel mean.
        std: per-channel std.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = ClipNormalize(mean, std)


def clip_slice_transforms(
    keys: KeysCollection = "image",
    image_size: int = 240,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    lower: float = 0.5,
    upper: float = 99.5,
    mode: str = "bilinear",
    augmentation: Callable | None = None,
    allow_missing_keys: bool = False,
) -> Compose:
    """The one preprocessing chain for 2D slices fed to CLIP (training, evaluation and inference).

    ``PercentileNormalized -> RepeatToRGBd -> ResizeToSquared -> [augmentation] -> ClipNormalized``.

    Args:
        keys: image keys.
        image_size: model input side (e.g. 240).
        mean: CLIP mean (default OpenAI CLIP).
        std: CLIP std (default OpenAI CLIP).
        lower: lower percentile for robust scaling.
        upper: upper percentile for robust scaling.
        mode: resize interpolation mode.
        augmentation: optional dictionary transform applied in [0, 1] space after resizing, before CLIP
            normalisation (training only), e.g. :func:`sdmad_monai.transforms.few_shot_augmentation`.
        allow_missing_keys: don't raise for missing keys.

    Returns:
        ``monai.transforms.Compose``: ``[1, H, W]`` (or ``[N, 1, H, W]``) -> ``[3, S, S]`` (or ``[N, 3, S, S]``).
    """
    steps: list[Callable] = [
        PercentileNormalized(keys, lower, upper, allow_missing_keys),
        RepeatToRGBd(keys, allow_missing_keys),
        ResizeToSquared(keys, image_size, mode, allow_missing_keys=allow_missing_keys),
    ]
    if augmentation is not None:
        if not callable(augmentation):
            raise TypeError(f"augmentation must be a callable transform, got {type(augmentation).__name__}.")
        steps.append(augmentation)
    steps.append(ClipNormalized(keys, mean, std, allow_missing_keys))
    return Compose(steps)
