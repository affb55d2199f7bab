"""Light, seeded 2D augmentation for few-shot training on CLIP-preprocessed slices.

Applied in [0, 1] intensity space after :class:`~sdmad_monai.transforms.intensity.ResizeToSquare` and before CLIP
normalisation (see ``clip_slice_transforms(..., augmentation=...)``), so regions moved in from outside the image are
zeros, like the square padding. With probability ``prob`` a random rotation (uniform in
``[-rotate_degrees, rotate_degrees]``) and translation (uniform in ``[-translate_fraction, translate_fraction]`` of
the width / height) is applied with bilinear sampling; independently, a left-right flip (columns reversed) happens
with probability ``flip_prob``. The affine in the metadata is not updated (training-time augmentation only).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["affine_2d", "RandFewShotAugment", "RandFewShotAugmentd", "few_shot_augmentation"]


def affine_2d(img: torch.Tensor, angle_degrees: float, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Rotate about the image centre and shift, with bilinear sampling and zero fill.

    Args:
        img: ``[C, H, W]`` or ``[N, C, H, W]``.
        angle_degrees: rotation angle; positive turns the content counter-clockwise as displayed (row 0 at top).
        shift: (down, right) shift as fractions of the height and width.

    Returns:
        tensor of the same shape (float32).
    """
    x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected [C, H, W] or [N, C, H, W], got shape {tuple(x.shape)}.")
    x = x.to(torch.float32)
    h, w = x.shape[-2:]
    a = math.radians(-angle_degrees)  # positive = counter-clockwise as displayed
    cos, sin = math.cos(a), math.sin(a)
    # grid_sample maps output normalised (u=column, v=row) to input coordinates; work in pixel units for isotropy
    theta = torch.tensor(
        [
            [cos, sin * h / w, -2.0 * shift[1]],
            [-sin * w / h, cos, -2.0 * shift[0]],
        ],
        dtype=torch.float32,
    )
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return y[0] if squeeze else y


class RandFewShotAugment(RandomizableTransform):
    """Random rotation + translation (probability ``prob``) and left-right flip (probability ``flip_prob``).

    Args:
        rotate_degrees: maximum absolute rotation in degrees.
        translate_fraction: maximum absolute shift as a fraction of the image size.
        flip_prob: probability of a left-right flip.
        prob: probability of the rotation/translation.

    Shapes: ``[C, H, W]`` or ``[N, C, H, W]`` -> same (the same random draw for the whole stack).
    """

    def __init__(
        self, rotate_degrees: float = 10.0, translate_fraction: float = 0.05, flip_prob: float = 0.5, prob: float = 0.8
    ):
        if rotate_degrees < 0 or translate_fraction < 0:
            raise ValueError(
                f"rotate_degrees and translate_fraction must be >= 0, got {rotate_degrees} and {translate_fraction}."
            )
        if not 0.0 <= flip_prob <= 1.0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip_prob and prob must be in [0, 1], got {flip_prob} and {prob}.")
        RandomizableTransform.__init__(self, prob)
        self.rotate_degrees = float(rotate_degrees)
        self.translate_fraction = float(translate_fraction)
        self.flip_prob = float(flip_prob)
        self._angle = 0.0
        self._shift = (0.0, 0.0)
        self._flip = False

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._angle = float(self.R.uniform(-self.rotate_degrees, self.rotate_degrees))
        shift = self.R.uniform(-self.translate_fraction, self.translate_fraction, 2)
        self._shift = (float(shift[0]), float(shift[1]))
        self._flip = bool(self.R.rand() < self.flip_prob)

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        if randomize:
            self.randomize()
        out = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if self._do_transform:
            out = affine_2d(out, self._angle, self._shift)
        if self._flip:
            out = torch.flip(out, dims=[-1])
        if isinstance(img, MetaTensor):
            return MetaTensor(out, affine=img.affine.clone(), meta={k: v for k, v in img.meta.items() if k != "affine"})
        return out


class RandFewShotAugmentd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandFewShotAugment`; every key gets the same random draw (image and mask align).

    Args:
        keys: keys to augment.
        rotate_degrees: maximum absolute rotation in degrees.
        translate_fraction: maximum absolute shift as a fraction of the image size.
        flip_prob: probability of a left-right flip.
        prob: probability of the rotation/translation.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        rotate_degrees: float = 10.0,
        translate_fraction: float = 0.05,
        flip_prob: float = 0.5,
        prob: float = 0.8,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.augment = RandFewShotAugment(rotate_degrees, translate_fraction, flip_prob, prob)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> RandFewShotAugmentd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.augment.randomize()
        for key in self.key_iterator(d):
            d[key] = self.augment(d[key], randomize=False)
        return d


def few_shot_augmentation(
    keys: KeysCollection = "image",
    rotate_degrees: float = 10.0,
    translate_fraction: float = 0.05,
    flip_prob: float = 0.5,
    prob: float = 0.8,
) -> RandFewShotAugmentd:
    """The training augmentation for ``clip_slice_transforms(..., augmentation=...)``.

    Args:
        keys, rotate_degrees, translate_fraction, flip_prob, prob: as in :class:`RandFewShotAugmentd`.

    Returns:
        :class:`RandFewShotAugmentd`.
    """
    return RandFewShotAugmentd(keys, rotate_degrees, translate_fraction, flip_prob, prob)
