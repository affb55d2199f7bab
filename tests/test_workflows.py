"""prepare_splits (volume-level split of the generated demo, reuse, rebuild, errors), check_categories and
report_training."""

from __future__ import annotations

import json
import shutil
import types

import pytest

import sdmad_monai.workflows as workflows
from sdmad_monai.data import FASTMRI_BRAIN_CATEGORIES
from sdmad_monai.workflows import DatasetError, check_categories, prepare_splits, report_training

DEMO = dict(demo_volumes=14, k_shot=1)
SPLITS = ("training", "validation", "test")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("workflow")


@pytest.fixture(scope="module")
def splits(work_dir):
    return prepare_splits(work_dir, **DEMO)


def key(item):
    return (item["file"], item["slice"])


def test_splits_are_by_volume(splits):
    files = {name: {item["file"] for item in splits[name]} for name in SPLITS}
    assert all(splits[name] for name in SPLITS)
    assert not files["training"] & files["validation"]
    assert not files["training"] & files["test"]
    assert not files["validation"] & files["test"]
    assert splits["categories"] == list(FASTMRI_BRAIN_CATEGORIES)
    assert splits["settings"]["k_shot"] == 1 and splits["settings"]["demo_volumes"] == 14
    # each category has a positive in the 1-shot support set, plus normals
    for index in range(len(FASTMRI_BRAIN_CATEGORIES)):
        assert any(item["label"][index] > 0 for item in splits["training"])
    assert any(not any(item["label"]) for item in splits["training"])


def test_every_item_accounted_for(splits):
    datalist = json.loads(open(splits["files"]["datalist"]).read())["training"]
    assert {item["slice"] for item in datalist} == {0, 5, 10}
    placed = {name: {key(item) for item in splits[name]} for name in SPLITS}
    training_files = {item["file"] for item in splits["training"]}
    for item in datalist:
        memberships = sum(key(item) in placed[name] for name in SPLITS)
        if memberships == 0:
            # not used, only because its volume gave a support slice (no leak into validation/test)
            assert item["file"] in training_files, item
        else:
            assert memberships == 1, item
    assert sum(len(splits[name]) for name in SPLITS) <= len(datalist)
    # validation + test = the k-shot remaining pool
    kshot = json.loads(open(splits["files"]["kshot"]).read())
    assert {key(i) for i in kshot["remaining"]} == placed["validation"] | placed["test"]


def test_files_written(splits, work_dir):
    for name in ("datalist", "kshot", "splits"):
        assert open(splits["files"][name]).read()
    on_disk = json.loads((work_dir / "splits.json").read_text())
    assert on_disk == splits
    assert (work_dir / "demo" / "manifest.json").is_file()


def test_same_settings_reuse_splits(splits, work_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("build_fastmri_datalist must not be called when splits.json is reused")

    monkeypatch.setattr(workflows, "build_fastmri_datalist", fail)
    again = prepare_splits(work_dir, **DEMO)
    assert again == splits


def test_changed_settings_rebuild(tmp_path, monkeypatch):
    first = prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0)
    calls = []
    original = workflows.build_fastmri_datalist

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(workflows, "build_fastmri_datalist", counting)
    changed = prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0, validation_fraction=0.5)
    assert len(calls) == 1
    assert changed["settings"]["validation_fraction"] == 0.5
    assert len(changed["validation"]) > len(first["validation"])
    assert changed["training"] == first["training"]  # same seed and k: same support set
    on_disk = json.loads((tmp_path / "splits.json").read_text())
    assert on_disk["settings"]["validation_fraction"] == 0.5
    # back to the first settings: rebuilt again, identical to the first result
    assert prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0) == first
    assert len(calls) == 2
    # validation_fraction=0: no validation split, and that is not an error
    none = prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0, validation_fraction=0.0)
    assert none["validation"] == [] and len(none["test"]) == len(first["validation"]) + len(first["test"])
    assert len(calls) == 3
    # same settings but the demo folder is gone: rebuilt (and the demo regenerated)
    prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0)
    assert len(calls) == 4
    shutil.rmtree(tmp_path / "demo")
    assert prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0) == first
    assert len(calls) == 5
    assert (tmp_path / "demo" / "manifest.json").is_file()


def test_changed_file_list_rebuilds(splits, work_dir, tmp_path):
    demo = work_dir / "demo"
    stems = (demo / "brain_file_list.csv").read_text().split()
    options = dict(dataset_dir=demo / "images", annotations_csv=demo / "brain.csv", image_suffix=".nii.gz")
    full = prepare_splits(tmp_path, file_list_csv=demo / "brain_file_list.csv", **options)
    annotated = {line.split(",")[0] for line in (demo / "brain.csv").read_text().splitlines()[1:]}
    normal_stems = [s for s in stems if s not in annotated]
    assert normal_stems  # some volumes have no row at all
    smaller = tmp_path / "smaller_list.csv"
    smaller.write_text("\n".join(s for s in stems if s != normal_stems[-1]) + "\n")
    reduced = prepare_splits(tmp_path, file_list_csv=smaller, **options)
    files = {item["file"] for name in SPLITS for item in reduced[name]}
    assert normal_stems[-1] not in files
    assert reduced != full


# ---------------------------------------------------------------- errors
def test_dataset_dir_does_not_exist(tmp_path):
    absent = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetError, match="no_such_dataset") as info:
        prepare_splits(tmp_path / "work", dataset_dir=absent)
    assert "does not exist" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_require_dataset_without_dataset_dir(tmp_path):
    with pytest.raises(DatasetError, match="needs real data"):
        prepare_splits(tmp_path, require_dataset=True)
    assert not (tmp_path / "demo").exists()  # did not fall back on the demo


def test_dataset_dir_without_brain_csv(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "brain_file_list.csv").write_text("file_brain_1\n")
    with pytest.raises(DatasetError, match="brain.csv"):
        prepare_splits(tmp_path / "work", dataset_dir=dataset)


def test_bad_validation_fraction(tmp_path):
    with pytest.raises(DatasetError, match="validation_fraction"):
        prepare_splits(tmp_path, validation_fraction=1.0)


def test_empty_datalist(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    stem = "file_brain_AXT2_0001"
    (dataset / "brain.csv").write_text(
        "file,slice,study_level,x,y,width,height,label\n"
        + "".join(f"{stem},{s},No,10,10,5,5,Mass\n" for s in (0, 5, 10))
    )
    (dataset / "brain_file_list.csv").write_text(f"{stem}\n")
    (dataset / f"{stem}.h5").write_bytes(b"")  # exists, never read by the datalist builder
    with pytest.warns(UserWarning, match="Mass"):
        with pytest.raises(DatasetError, match="is empty"):
            prepare_splits(tmp_path / "work", dataset_dir=dataset)
    assert not (tmp_path / "work" / "splits.json").exists()


def test_check_categories():
    splits = {"categories": ["Craniotomy", "Lesion"]}
    check_categories(splits, ["Craniotomy", "Lesion"])
    check_categories(splits, ("Craniotomy", "Lesion"))
    with pytest.raises(DatasetError, match="differ") as info:
        check_categories(splits, ["Lesion", "Craniotomy"])  # same names, other order
    assert "['Craniotomy', 'Lesion']" in str(info.value) and "['Lesion', 'Craniotomy']" in str(info.value)
    with pytest.raises(DatasetError, match="Dural thickening"):
        check_categories(splits, ["Craniotomy", "Dural thickening"])


# ---------------------------------------------------------------- report_training
def fake_evaluator():
    state = types.SimpleNamespace(
        key_metric_name="val_mean_auroc",
        best_metric=0.75,
        best_metric_epoch=3,
        metrics={"val_mean_auroc": 0.7, "sdmad/hamming_score": 0.9, "note": "text"},
    )
    return types.SimpleNamespace(state=state)


def test_report_training_missing_checkpoint(tmp_path):
    with pytest.raises(RuntimeError, match="no checkpoint was written") as info:
        report_training(tmp_path / "best.pt", fake_evaluator())
    assert str(tmp_path / "best.pt") in str(info.value)


def test_report_training_summary(tmp_path, capsys):
    checkpoint = tmp_path / "models" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    summary = report_training(checkpoint, fake_evaluator())
    assert summary == {
        "checkpoint": str(checkpoint.resolve()),
        "best_validation_metric": "val_mean_auroc",
        "best_validation_value": 0.75,
        "best_validation_epoch": 3,
        "last_validation_metrics": {"val_mean_auroc": 0.7, "sdmad/hamming_score": 0.9},
        "calibration": None,
    }
    assert json.loads((checkpoint.parent / "training_summary.json").read_text()) == summary
    assert "Best checkpoint" in capsys.readouterr().out
    other = report_training(checkpoint, fake_evaluator(), output_file=tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == other


def test_prepare_batch_with_masks():
    import torch

    from sdmad_monai.workflows import PrepareBatchWithMasks

    labels = torch.tensor([[0.0], [1.0], [1.0]])
    batch = {"image": torch.zeros(3, 3, 4, 4), "label": labels, "mask": torch.zeros(3, 1, 4, 4)}
    batch["mask"][1, 0, 1, 1] = 1.0
    image, label = PrepareBatchWithMasks(masks=False)(batch)
    assert torch.equal(label, batch["label"])
    image, target = PrepareBatchWithMasks()(batch)
    # normal (empty mask known), outlined lesion, abnormal with an empty mask (not outlined: skipped)
    assert target["mask_valid"].tolist() == [1.0, 1.0, 0.0]
    assert torch.equal(target["mask"], batch["mask"]) and torch.equal(target["label"], batch["label"])
    with pytest.raises(KeyError, match="needs a 'mask'"):
        PrepareBatchWithMasks()({"image": batch["image"], "label": batch["label"]})


def test_seed_changes_the_k_shot_draw_not_the_demo_data(tmp_path):
    first = prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0)
    demo_manifest = (tmp_path / "demo" / "manifest.json").read_text()
    second = prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=1)
    assert (tmp_path / "demo" / "manifest.json").read_text() == demo_manifest
    assert second["settings"]["demo_seed"] == first["settings"]["demo_seed"] == 0
    assert {i["file"] for i in first["training"]} != {i["file"] for i in second["training"]}


def test_split_items_names_the_valid_splits():
    from sdmad_monai.workflows import DatasetError, split_items

    splits = {"training": [1], "validation": [2], "test": [3], "categories": []}
    assert split_items(splits, "test") == [3]
    with pytest.raises(
        DatasetError, match="eval_split 'tset' is not a split; choose one of training, validation, test"
    ):
        split_items(splits, "tset")
