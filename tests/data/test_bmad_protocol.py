"""Protocol-1 data side: per-dataset pixel-level choice, k-shot memory bank, BMAD transforms with masks."""

import json

import numpy as np
import pytest
import torch

from sdmad_monai.data import generate_bmad_like_dataset, prepare_bmad_protocol
from sdmad_monai.data.bmad_protocol import (
    BMADProtocolError,
    bmad_pixel_level,
    bmad_transforms,
)

ABNORMAL = {"image": "a.png", "label": [1.0], "mask": "m.png", "file": "a.png"}
NO_MASK = {"image": "b.png", "label": [1.0], "file": "b.png"}
NORMAL = {"image": "n.png", "label": [0.0], "file": "n.png"}


def test_pixel_level_choice():
    assert bmad_pixel_level("BrainMRI", [NORMAL, ABNORMAL])[0] is True
    assert bmad_pixel_level("liver_ct", [NORMAL, ABNORMAL])[0] is True
    assert bmad_pixel_level("OCT17", [NORMAL, ABNORMAL])[0] is False  # paper: image level only, masks or not
    assert bmad_pixel_level("MyData", [NORMAL, ABNORMAL])[0] is True  # unknown: masks decide
    assert bmad_pixel_level("MyData", [NORMAL, ABNORMAL, NO_MASK])[0] is False
    assert bmad_pixel_level("RESC", [NORMAL, ABNORMAL], pixel_metrics=False)[0] is False
    with pytest.raises(BMADProtocolError, match="b.png"):
        bmad_pixel_level("RESC", [NORMAL, ABNORMAL, NO_MASK])
    with pytest.raises(BMADProtocolError, match="holds none"):
        bmad_pixel_level("HIS", [NORMAL], pixel_metrics=True)


def test_prepare_protocol_and_transforms(tmp_path):
    root = generate_bmad_like_dataset(tmp_path / "BrainMRI", num_train=6, num_normal=2, num_abnormal=2, size=40)
    a = prepare_bmad_protocol(root, tmp_path / "work", k_shot=4, seed=3)
    b = prepare_bmad_protocol(root, tmp_path / "work2", k_shot=4, seed=3)
    assert [i["file"] for i in a.memory_bank] == [i["file"] for i in b.memory_bank]  # seeded
    assert all(i["label"] == [0.0] and i["split"] == "train" for i in a.memory_bank)
    record = json.loads((tmp_path / "work" / "bmad_protocol.json").read_text())
    assert record["pixel_level"] is True and record["num_test_abnormal"] == 2
    transform = bmad_transforms(64, pixel_level=True)
    lesion = transform(dict(next(i for i in a.test if i["label"] == [1.0])))
    normal = transform(dict(next(i for i in a.test if i["label"] == [0.0])))
    assert lesion["image"].shape == (3, 64, 64) and lesion["mask"].shape == (1, 64, 64)
    assert set(torch.unique(lesion["mask"]).tolist()) == {0.0, 1.0} and not normal["mask"].any()
    # the lesion is the brightest region: the resized mask lies on the image's bright pixels
    gray = lesion["image"][0]
    assert gray[lesion["mask"][0] > 0].mean() > gray[lesion["mask"][0] == 0].mean() + 1.0
    # the evaluation settings evaluate_bmad.json takes from the protocol
    assert a.pixel_metric_name == "pixel_auroc" and a.mask_key == "pixel_label"
    assert a.additional_metrics("metric") == {"pixel_auroc": "metric"}
    assert a.memory_bank_files == [i["file"] for i in a.memory_bank] and a.files["protocol"].endswith(".json")
    image_level = prepare_bmad_protocol(root, tmp_path / "w0", k_shot=4, seed=3, pixel_metrics=False)
    assert image_level.pixel_metric_name is None and image_level.mask_key is None
    assert image_level.additional_metrics("metric") is None and not any("mask" in i for i in image_level.test)
    with pytest.raises(BMADProtocolError, match="needs 9 normal"):
        prepare_bmad_protocol(root, tmp_path / "w", k_shot=9)
    with pytest.raises(BMADProtocolError, match="--dataset_dir"):
        prepare_bmad_protocol(None, tmp_path / "w")


def test_mask_size_mismatch_is_one_clear_error(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp_path / "m.png")
    item = {"image": str(tmp_path / "i.png"), "mask": str(tmp_path / "m.png"), "label": [1.0], "file": "i.png"}
    with pytest.raises(RuntimeError) as caught:  # MONAI's Compose names the transform and chains the cause
        bmad_transforms(16, pixel_level=True)(item)
    assert "m.png is 8x6 pixels but i.png is 8x8" in str(caught.value.__cause__)
