"""prepare_bmad_training (MVFA's few-shot protocol on BMAD valid/) and bmad_transforms with augmentation."""

import json

import pytest
import torch

from sdmad_monai.data import generate_bmad_like_dataset, prepare_bmad_protocol
from sdmad_monai.data.bmad_protocol import (
    BMADProtocolError,
    BMADTrainingPlan,
    bmad_transforms,
    prepare_bmad_training,
)
from sdmad_monai.transforms import RandFewShotAugmentd


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    root = tmp_path_factory.mktemp("bmad") / "BrainMRI"
    return generate_bmad_like_dataset(root, num_train=3, num_normal=4, num_abnormal=5, size=32)


def test_support_set_from_valid_seeded_and_disjoint_from_validation(brain, tmp_path):
    a = prepare_bmad_training(brain, tmp_path / "a", k_shot=3, seed=5, support_views=2)
    b = prepare_bmad_training(brain, tmp_path / "b", k_shot=3, seed=5)
    assert [i["file"] for i in a.support] == [i["file"] for i in b.support]  # seeded
    assert [i["label"] for i in a.support] == [[0.0]] * 3 + [[1.0]] * 3  # k normal + k abnormal (MVFA)
    assert all(i["split"] == "valid" for i in a.support + a.validation)
    assert all("mask" in i for i in a.support[3:]) and a.pixel_level is True
    support = {i["image"] for i in a.support}
    assert not support & {i["image"] for i in a.validation}
    assert len(a.validation) == 4 + 5 - 6 and [i["label"] for i in a.validation].count([1.0]) == 2
    assert len(a.training) == 12 and [i["file"] for i in a.training[:2]] == [a.support[0]["file"]] * 2
    assert a.categories == ["abnormal"]
    record = json.loads((tmp_path / "a" / "bmad_training.json").read_text())
    assert [i["image"] for i in record["support"]] == [i["image"] for i in a.support]
    # the normal draw is the memory bank prepare_bmad_protocol picks from the same split and seed
    memory = prepare_bmad_protocol(brain, tmp_path / "m", k_shot=3, seed=5, memory_split="validation").memory_bank
    assert [i["file"] for i in memory] == [i["file"] for i in a.support[:3]]
    assert [i["file"] for i in prepare_bmad_training(brain, tmp_path / "c", k_shot=3, seed=6).support] != [
        i["file"] for i in a.support
    ]


def test_image_level_dataset_has_no_masks(tmp_path):
    root = generate_bmad_like_dataset(tmp_path / "ChestXray", num_train=1, num_normal=2, num_abnormal=2, size=16)
    result = prepare_bmad_training(root, tmp_path / "w", k_shot=1)
    assert result.pixel_level is False and "image-level only" in result.pixel_level_reason
    assert not any("mask" in item for item in result.training + result.validation)
    # the settings train_bmad.json takes from the plan: no pixel terms, checkpoint selected on image AUROC
    assert result.pixel_loss_weight(4.0) == 0.0
    assert result.key_metric("pixel", "image") == {"val_image_auroc": "image"}
    assert result.additional_metrics("image") is None


def test_plan_settings_and_mapping_view(brain, tmp_path):
    plan = prepare_bmad_training(brain, tmp_path, k_shot=1)
    assert isinstance(plan, BMADTrainingPlan) and plan.pixel_level is True
    assert plan.pixel_loss_weight(4) == 4.0 and isinstance(plan.pixel_loss_weight(4), float)
    assert plan.key_metric("pixel", "image") == {"val_pixel_auroc": "pixel"}
    assert plan.additional_metrics("image") == {"val_image_auroc": "image"}
    # train.json and check_categories read the splits by key, as they read prepare_splits' dict
    assert plan["training"] is plan.training and plan["categories"] == ["abnormal"]
    assert list(plan) == [
        "training",
        "validation",
        "support",
        "categories",
        "dataset",
        "dataset_dir",
        "pixel_level",
        "pixel_level_reason",
        "files",
    ]
    assert len(plan) == 9 and dict(plan)["dataset"] == "BrainMRI"
    with pytest.raises(KeyError, match="no 'test'"):
        plan["test"]


def test_bad_input_is_one_clear_error(brain, tmp_path):
    with pytest.raises(BMADProtocolError, match="takes 4 normal .* there are 4"):
        prepare_bmad_training(brain, tmp_path, k_shot=4)
    with pytest.raises(BMADProtocolError, match="exactly one category"):
        prepare_bmad_training(brain, tmp_path, categories=["a", "b"], k_shot=1)
    with pytest.raises(BMADProtocolError, match="--dataset_dir"):
        prepare_bmad_training(None, tmp_path)
    with pytest.raises(BMADProtocolError, match="support_views"):
        prepare_bmad_training(brain, tmp_path, k_shot=1, support_views=0)
    only_test = generate_bmad_like_dataset(
        tmp_path / "RESC", num_train=1, num_normal=2, num_abnormal=2, size=16, splits=("test",)
    )
    with pytest.raises(BMADProtocolError, match="valid is missing or empty"):
        prepare_bmad_training(only_test, tmp_path, k_shot=1)
    missing = generate_bmad_like_dataset(tmp_path / "LiverCT", num_train=1, num_normal=2, num_abnormal=2, size=16)
    next((missing / "valid" / "Ungood" / "anomaly_mask").iterdir()).unlink()
    with pytest.raises(BMADProtocolError, match="every abnormal valid image .* valid/Ungood/anomaly_mask"):
        prepare_bmad_training(missing, tmp_path, k_shot=1)


def test_augmentation_moves_image_and_mask_together(brain, tmp_path):
    item = next(i for i in prepare_bmad_training(brain, tmp_path, k_shot=1).support if i["label"] == [1.0])
    plain = bmad_transforms(48, pixel_level=True)(dict(item))
    augment = RandFewShotAugmentd(["image", "mask"], rotate_degrees=30, translate_fraction=0.1, flip_prob=1.0, prob=1.0)
    augmented = bmad_transforms(48, pixel_level=True, augmentation=augment.set_random_state(0))(dict(item))
    assert augmented["image"].shape == (3, 48, 48) and augmented["mask"].shape == (1, 48, 48)
    assert not torch.equal(augmented["mask"], plain["mask"])  # the mask moved ...
    gray, lesion = augmented["image"][0], augmented["mask"][0] > 0.5
    assert gray[lesion].mean() > gray[~lesion].mean() + 1.0  # ... and still lies on the (bright) lesion
