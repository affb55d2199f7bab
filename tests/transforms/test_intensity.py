"""Tests for CLIP slice preprocessing (sdmad_monai.transforms.intensity)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from sdmad_monai.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ArrayTransformd,
    ClipNormalize,
    PercentileNormalize,
    RepeatToRGB,
    RepeatToRGBd,
    ResizeToSquare,
    clip_slice_transforms,
    square_resize_geometry,
    undo_resize_to_square,
)


def _slice(values, name="vol.nii", index=5):
    t = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return MetaTensor(t, meta={"filename_or_obj": name, "slice_index": index, "pixel_spacing": (1.0, 2.0)})


def test_percentile_full_range_hand_values():
    out = PercentileNormalize(0, 100)(_slice([[[1.0, 2.0], [3.0, 5.0]]]))
    assert torch.allclose(out.as_tensor(), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))
    assert out.meta["filename_or_obj"] == "vol.nii"


def test_percentile_default_clips_outliers():
    vals = np.arange(200, dtype=np.float32).reshape(1, 10, 20)
    out = PercentileNormalize()(_slice(vals))  # p0.5 = 0.995, p99.5 = 198.005 (linear interpolation)
    assert out.dtype == torch.float32
    assert float(out[0, 0, 0]) == 0.0 and float(out[0, 9, 19]) == 1.0
    assert abs(float(out[0, 5, 0]) - (100 - 0.995) / (198.005 - 0.995)) < 1e-6


def test_stack_is_normalised_per_slice():
    a = np.array([[[0.0, 1.0], [2.0, 4.0]]], np.float32)
    stack = torch.from_numpy(np.stack([a, 10 * a + 7]))  # [2, 1, 2, 2]
    out = PercentileNormalize(0, 100)(stack)
    expected = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    assert out.shape == (2, 1, 2, 2)
    assert torch.allclose(out[0], expected) and torch.allclose(out[1], expected)


def test_nan_values_become_zero_with_warning_naming_file_and_slice():
    with pytest.warns(RuntimeWarning, match=r"vol\.nii \(slice 5\): 1 non-finite"):
        out = PercentileNormalize(0, 100)(_slice([[[np.nan, 2.0], [4.0, 6.0]]]))
    assert not torch.isnan(out).any()
    assert torch.allclose(out.as_tensor(), torch.tensor([[[0.0, 0.0], [0.5, 1.0]]]))


def test_all_nan_slice_gives_zeros_with_warning():
    with pytest.warns(RuntimeWarning, match=r"scan\.h5 \(slice 0\): 4 non-finite"):
        out = PercentileNormalize()(_slice(np.full((1, 2, 2), np.nan), name="scan.h5", index=0))
    assert torch.equal(out.as_tensor(), torch.zeros(1, 2, 2))


def test_constant_slice_zeros_without_warning_and_finite_after_clip_norm():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = PercentileNormalize()(_slice(np.full((1, 3, 3), 7.0)))
    assert torch.equal(out.as_tensor(), torch.zeros(1, 3, 3))
    rgb = ClipNormalize()(RepeatToRGB()(out))
    assert torch.isfinite(rgb).all()
    assert abs(float(rgb[0, 0, 0]) - (-0.48145466 / 0.26862954)) < 1e-6


def test_repeat_to_rgb():
    out = RepeatToRGB()(_slice([[[1.0, 2.0]]]))
    assert out.shape == (3, 1, 2) and torch.equal(out[2], torch.tensor([[1.0, 2.0]]))
    stack = RepeatToRGB()(torch.zeros(4, 1, 2, 2))
    assert stack.shape == (4, 3, 2, 2)
    with pytest.raises(ValueError, match="expects 1 or 3 channels, got 2"):
        RepeatToRGB()(torch.zeros(2, 2, 2))


def test_resize_to_square_aspect_and_padding():
    img = _slice([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]])  # [1, 2, 4]
    out = ResizeToSquare(8, mode="nearest")(img)
    assert out.shape == (1, 8, 8)
    # scale 2: rows 2..5 hold the image, rows 0-1 and 6-7 are zero padding
    assert torch.equal(out[0, 0], torch.zeros(8)) and torch.equal(out[0, 7], torch.zeros(8))
    assert torch.equal(out[0, 2], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]))
    assert torch.equal(out[0, 5], torch.tensor([5.0, 5.0, 6.0, 6.0, 7.0, 7.0, 8.0, 8.0]))
    assert out.meta["pixel_spacing"] == (0.5, 1.0)
    # output pixel centre (2, 0) lies at input coordinate (-0.25, -0.25)
    assert torch.allclose(out.affine[:2, 3], torch.tensor([-1.25, -0.25], dtype=torch.float64))
    assert torch.allclose(torch.diagonal(out.affine)[:2], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_clip_normalize_hand_values_and_channel_check():
    out = ClipNormalize()(torch.full((3, 2, 2), 0.5))
    expected = [(0.5 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected))
    custom = ClipNormalize(mean=(0.5,), std=(0.25,))(torch.ones(1, 1, 1))
    assert float(custom) == 2.0
    with pytest.raises(ValueError, match="expects 3 channels"):
        ClipNormalize()(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="std values must be > 0"):
        ClipNormalize(mean=(0.0,), std=(0.0,))


def test_clip_slice_transforms_chain():
    chain = clip_slice_transforms("image", image_size=24)
    assert isinstance(chain, Compose)
    img = _slice(np.arange(10 * 20, dtype=np.float32).reshape(1, 10, 20))
    out = chain({"image": img, "label": [1.0]})["image"]
    assert out.shape == (3, 24, 24)
    assert torch.isfinite(out).all()
    # padding rows (0..5) hold normalised zeros: -mean / std per channel
    pad = torch.tensor([-m / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    assert torch.allclose(out[:, 0, 0], pad)
    stack = chain({"image": torch.rand(3, 1, 10, 20)})["image"]
    assert stack.shape == (3, 3, 24, 24)


@pytest.mark.parametrize("shape", [(2, 4), (6, 9), (9, 6), (5, 5), (3, 200)])
def test_square_geometry_is_where_resize_puts_the_slice_and_undo_inverts_it(shape):
    h, w = shape
    size = 12
    rows, cols, top, left = square_resize_geometry(h, w, size)
    assert max(rows, cols) == size and min(rows, cols) >= 1
    out = ResizeToSquare(size, mode="nearest")(torch.ones(1, h, w))
    inside = torch.zeros(size, size)
    inside[top : top + rows, left : left + cols] = 1
    assert torch.equal(out[0], inside)
    back = undo_resize_to_square(out, (h, w), mode="nearest")
    assert back.shape == (1, h, w) and torch.equal(back, torch.ones(1, h, w))


def test_array_transformd_applies_the_array_transform_to_each_key():
    data = {"image": torch.zeros(1, 2, 2), "mask": torch.ones(1, 2, 2), "other": 3}
    out = RepeatToRGBd(["image", "mask"])(data)
    assert out["image"].shape == (3, 2, 2) and out["mask"].shape == (3, 2, 2) and out["other"] == 3
    assert data["image"].shape == (1, 2, 2)  # input dict untouched
    assert isinstance(RepeatToRGBd("image"), ArrayTransformd)
    assert RepeatToRGBd("x", allow_missing_keys=True)({"image": 1}) == {"image": 1}
