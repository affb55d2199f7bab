"""sdmad_monai.label without MONAI Label: classification answers through infer_volume, label files, datastore
datalists and the split by volume."""

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from sdmad_monai.data import build_fastmri_datalist, generate_demo_dataset
from sdmad_monai.data.demo import DEMO_SUFFIX
from sdmad_monai.inference import infer_volume
from sdmad_monai.label import (
    LabelFileError,
    classify_volume,
    datastore_datalist,
    inference_settings,
    read_slice_labels,
    slice_labels_from_items,
    split_by_volume,
    study_scores,
    write_slice_labels,
)
from sdmad_monai.networks import SignDrivenDetector

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ["A", "B", "C"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), num_volumes=7, seed=0)


def test_classify_volume_gives_infer_volumes_study_scores(demo):
    detector = SignDrivenDetector.from_preset("tiny")
    volume = min(demo["images_dir"].iterdir())
    scores, details = classify_volume(
        detector, volume, axis="axial", indices=[0, 5, 10]
    )
    reference = infer_volume(detector, volume, axis="axial", indices=[0, 5, 10])
    assert scores.shape == (6,)
    # study score = highest slice score per category (study_findings)
    assert torch.allclose(scores, reference.scores.max(dim=0).values)
    assert details["findings"] == reference.findings and details["source"] == str(
        volume
    )
    assert [s["slice"] for s in details["slices"]] == [0, 5, 10]
    assert torch.equal(study_scores(reference), scores)


def test_classify_volume_rejects_what_is_not_a_volume(tmp_path):
    detector = SignDrivenDetector.from_preset("tiny")
    with pytest.raises(TypeError, match="expects the image as a path"):
        classify_volume(detector, torch.zeros(1, 8, 8, 8))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz does not exist"):
        classify_volume(detector, tmp_path / "missing.nii.gz")


def test_inference_settings_read_the_bundle_config(tmp_path):
    parser = ConfigParser({"axis": "coronal", "slices": [1, 2], "batch_size": 4})
    assert inference_settings(parser) == {
        "axis": "coronal",
        "indices": [1, 2],
        "batch_size": 4,
    }
    assert inference_settings(ConfigParser({"slices": None}))["indices"] is None


def test_label_file_round_trip_and_multi_hot(tmp_path):
    path = write_slice_labels(tmp_path / "v.json", {10: ["A", "C"], 0: [], 5: ["B"]})
    assert json.loads(path.read_text()) == {
        "axis": "axial",
        "slices": {"0": [], "5": ["B"], "10": ["A", "C"]},
    }
    assert read_slice_labels(path, CATEGORIES) == {
        0: [0.0, 0.0, 0.0],
        5: [0.0, 1.0, 0.0],
        10: [1.0, 0.0, 1.0],
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not readable JSON"),
        ('{"slices": {}}', "no 'slices' mapping"),
        ('{"axis": "sagittal", "slices": {"0": []}}', "counts slices along 'sagittal'"),
        ('{"slices": {"x": []}}', "slice 'x' is not a non-negative integer"),
        ('{"slices": {"3": "A"}}', "slice 3 must list category names"),
        ('{"slices": {"3": ["A", "Z"]}}', r"unknown categories \['Z'\]"),
    ],
)
def test_bad_label_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(LabelFileError, match=message) as error:
        read_slice_labels(path, CATEGORIES)
    assert str(path) in str(error.value)


def test_datastore_datalist_matches_the_bundle_datalist(demo, tmp_path):
    # label files written from the demo annotations give back the bundle's own slice items
    categories = list(
        ConfigParser.load_config_file(ROOT / "configs" / "train.json")["categories"]
    )
    items = build_fastmri_datalist(
        demo["annotations_csv"],
        demo["file_list_csv"],
        demo["images_dir"],
        categories=categories,
        suffix=DEMO_SUFFIX,
    ).items
    records = []
    for image, slices in slice_labels_from_items(items, categories).items():
        label = write_slice_labels(tmp_path / f"{len(records)}.json", slices)
        records.append({"image": image, "label": str(label)})
    rebuilt = datastore_datalist(records, categories)
    key = lambda item: (item["image"], item["slice"])
    expected = [
        {k: item[k] for k in ("image", "file", "slice", "label")} for item in items
    ]
    assert sorted(rebuilt, key=key) == sorted(expected, key=key)


def test_datastore_datalist_needs_labelled_images():
    with pytest.raises(LabelFileError, match="no labelled image"):
        datastore_datalist([], CATEGORIES)


def test_split_by_volume_keeps_volumes_whole():
    items = [
        {"file": f"v{v}", "slice": s, "image": f"v{v}.nii.gz", "label": [0.0]}
        for v in range(10)
        for s in (0, 5)
    ]
    training, validation = split_by_volume(items, 0.3, seed=1)
    assert len(validation) == 3 * 2 and len(training) == 7 * 2
    assert not {i["file"] for i in training} & {i["file"] for i in validation}
    assert split_by_volume(items, 0.3, seed=1) == (training, validation)
    # one volume each side at least
    assert len(split_by_volume(items[:4], 0.01)[1]) == 2
    with pytest.raises(LabelFileError, match="at least two volumes"):
        split_by_volume(items[:2], 0.5)
    with pytest.raises(LabelFileError, match=r"val_split must be in \(0, 1\)"):
        split_by_volume(items, -1)
