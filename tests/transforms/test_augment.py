"""Tests for few-shot augmentation (sdmad_monai.transforms.augment)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from sdmad_monai.transforms import (
    RandFewShotAugment,
    RandFewShotAugmentd,
    affine_2d,
    clip_slice_transforms,
    few_shot_augmentation,
)


def test_affine_2d_hand_values():
    x = torch.zeros(1, 5, 5)
    x[0, 0, 2] = 1.0  # top middle
    rot = affine_2d(x, 90.0)  # counter-clockwise: top -> left
    assert float(rot[0, 2, 0]) == pytest.approx(1.0, abs=1e-5) and float(rot.sum()) == pytest.approx(1.0, abs=1e-5)
    img = torch.rand(2, 3, 7, 7)
    assert torch.allclose(affine_2d(img, 90.0), torch.rot90(img, 1, dims=(2, 3)), atol=1e-5)
    moved = affine_2d(x, 0.0, (0.2, 0.0))  # 0.2 x 5 rows = 1 row down, zero fill at the top
    assert float(moved[0, 1, 2]) == pytest.approx(1.0, abs=1e-5) and float(moved[0, 0].abs().sum()) < 1e-6
    rect = torch.arange(20.0).reshape(1, 4, 5)
    assert torch.allclose(affine_2d(rect, 0.0), rect, atol=1e-5)


def test_flip_only_and_no_op():
    img = MetaTensor(torch.arange(6.0).reshape(1, 2, 3), meta={"filename_or_obj": "a.nii", "slice_index": 5})
    flipped = RandFewShotAugment(flip_prob=1.0, prob=0.0)(img)
    assert torch.equal(flipped.as_tensor(), torch.tensor([[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]))
    assert flipped.meta["slice_index"] == 5
    same = RandFewShotAugment(flip_prob=0.0, prob=0.0)(img)
    assert torch.equal(same.as_tensor(), img.as_tensor())


def test_seeded_and_same_draw_for_all_keys():
    data = {"image": torch.rand(3, 16, 16), "mask": torch.rand(3, 16, 16)}
    data["mask"] = data["image"].clone()
    a = few_shot_augmentation(["image", "mask"], 20, 0.1, 0.5, 1.0).set_random_state(seed=7)(data)
    b = few_shot_augmentation(["image", "mask"], 20, 0.1, 0.5, 1.0).set_random_state(seed=7)(data)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], a["mask"])
    assert not torch.equal(a["image"], data["image"])  # prob 1: always transformed
    assert isinstance(few_shot_augmentation(), RandFewShotAugmentd)


def test_bad_parameters():
    with pytest.raises(ValueError, match="must be >= 0"):
        RandFewShotAugment(rotate_degrees=-1)
    with pytest.raises(ValueError, match=r"flip_prob and prob must be in \[0, 1\]"):
        RandFewShotAugment(flip_prob=1.5)
    with pytest.raises(TypeError, match="augmentation must be a callable"):
        clip_slice_transforms("image", 32, augmentation=3)


def test_chain_with_augmentation_places_it_before_clip_normalisation():
    chain = clip_slice_transforms("image", 8, augmentation=few_shot_augmentation("image", 0.0, 0.0, 1.0, 0.0))
    img = torch.zeros(1, 8, 8)
    img[0, :, 0] = 1.0  # bright left column
    out = chain({"image": img})["image"]
    assert out.shape == (3, 8, 8)
    # after the flip the bright column is on the right; CLIP normalisation maps 1 -> (1 - mean) / std
    assert float(out[0, 0, 7]) == pytest.approx((1 - 0.48145466) / 0.26862954, abs=1e-5)
    assert float(out[0, 0, 0]) == pytest.approx(-0.48145466 / 0.26862954, abs=1e-5)
