"""sdmad_monai.label without MONAI Label: answers (scores, findings, label volume) through infer_volume, label files,
datastore datalists and the split by volume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from sdmad_monai.anomaly_volume import anomaly_volume
from sdmad_monai.data import build_fastmri_datalist, generate_demo_dataset
from sdmad_monai.data.demo import DEMO_SUFFIX
from sdmad_monai.inference import infer_volume
from sdmad_monai.label import (
    LabelFileError,
    datastore_datalist,
    inference_settings,
    read_slice_labels,
    segment_volume,
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


def test_segment_volume_gives_infer_volumes_study_scores_and_a_label_on_the_scans_grid(demo):
    import nibabel as nib

    detector = SignDrivenDetector.from_preset("tiny")
    volume = min(demo["images_dir"].iterdir())
    reference = infer_volume(detector, volume, axis="axial", indices=[0, 5, 10], anomaly_maps=True)
    threshold = float(reference.anomaly_maps.median())  # about half of each map above it, half below
    answer = segment_volume(detector, volume, axis="axial", indices=[0, 5, 10], threshold=threshold)
    details = answer.details
    # study score = highest slice score per category (study_findings)
    scores = torch.tensor([p["score"] for p in details["prediction"]])
    assert torch.allclose(scores, reference.scores.max(dim=0).values)
    assert torch.equal(study_scores(reference), scores)
    assert [p["label"] for p in details["prediction"]] == reference.category_labels
    assert details["findings"] == reference.findings and details["source"] == str(volume)
    assert [s["slice"] for s in details["slices"]] == [0, 5, 10]
    scan = nib.load(str(volume))
    assert tuple(answer.label.shape) == scan.shape
    assert np.allclose(answer.label.affine.numpy(), scan.affine, atol=1e-4)
    assert details["label_volume"]["labels"] == {name: k + 1 for k, name in enumerate(reference.category_labels)}
    maps = reference.anomaly_volume()
    direct = anomaly_volume(reference.anomaly_maps, reference.slice_indices, reference.slice_shape,
                            reference.volume_affine, reference.volume_shape)  # fmt: skip
    assert np.array_equal(maps, direct) and np.array_equal(reference.slices_to_volume(reference.anomaly_maps), maps)
    label = answer.label.numpy()
    for row, index in enumerate(reference.slice_indices):
        plane = np.zeros_like(reference.anomaly_maps)
        plane[row] = 1.0
        on_slice = reference.slices_to_volume(plane) > 0.5
        positive = reference.predictions[row] > 0
        if not positive.any():
            assert index not in details["label_volume"]["labelled_slices"] and not label[on_slice].any()
            continue
        top = int(reference.scores[row].masked_fill(~positive, -2).argmax()) + 1
        assert index in details["label_volume"]["labelled_slices"]
        assert np.array_equal(label[on_slice] > 0, maps[on_slice] >= threshold)  # thresholded map on the slice
        assert set(np.unique(label[on_slice])) <= {0, top}
    assert details["label_volume"]["labelled_slices"] and 0 < (label > 0).sum() < label.size
    assert not label[(maps == 0)].any()  # nothing off the processed slices


def test_threshold_outside_the_maps_range_is_refused(demo):
    detector = SignDrivenDetector.from_preset("tiny")
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        segment_volume(detector, min(demo["images_dir"].iterdir()), indices=[0], threshold=1.5)


def test_segment_volume_rejects_what_is_not_a_volume(tmp_path):
    detector = SignDrivenDetector.from_preset("tiny")
    with pytest.raises(TypeError, match="expects the image as a path"):
        segment_volume(detector, torch.zeros(1, 8, 8, 8))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz does not exist"):
        segment_volume(detector, tmp_path / "missing.nii.gz")


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
    categories = list(ConfigParser.load_config_file(ROOT / "configs" / "train.json")["categories"])
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

    def key(item):
        return item["image"], item["slice"]

    expected = [{k: item[k] for k in ("image", "file", "slice", "label")} for item in items]
    assert sorted(rebuilt, key=key) == sorted(expected, key=key)


def test_datastore_datalist_needs_labelled_images():
    with pytest.raises(LabelFileError, match="no labelled image"):
        datastore_datalist([], CATEGORIES)


def test_split_by_volume_keeps_volumes_whole():
    items = [{"file": f"v{v}", "slice": s, "image": f"v{v}.nii.gz", "label": [0.0]} for v in range(10) for s in (0, 5)]
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


def test_label_volume_follows_the_findings_decision_rule(demo):
    from sdmad_monai.calibration import fit_calibration

    rng = np.random.default_rng(0)
    labels = rng.random((90, 6)) < 0.4
    detector = SignDrivenDetector.from_preset("tiny", operating_point={"target_sensitivity": 1.0})
    detector.set_calibration(fit_calibration(rng.normal(0, 0.02, (90, 6)) + 0.03 * labels, labels,
                                             detector.category_labels))  # fmt: skip
    volume = min(demo["images_dir"].iterdir())
    answer = segment_volume(detector, volume, indices=[0, 5, 10], threshold=0.0)
    findings = answer.details["findings"]
    by_rule = sorted({i for f in findings for i in f["positive_slices"]})
    assert all(f["decision"]["rule"] == "probability" for f in findings)
    assert answer.details["label_volume"]["labelled_slices"] == by_rule
    reference = infer_volume(detector, volume, indices=[0, 5, 10], anomaly_maps=True)
    for row, index in enumerate(reference.slice_indices):
        plane = np.zeros_like(reference.anomaly_maps)
        plane[row] = 1.0
        on_slice = reference.slices_to_volume(plane) > 0.5
        positive = torch.tensor([index in f["positive_slices"] for f in findings])
        values = set(np.unique(answer.label.numpy()[on_slice]).tolist())
        if positive.any():  # threshold 0: the whole slice carries the rule's top category
            assert values == {int(reference.scores[row].masked_fill(~positive, -2).argmax()) + 1}
        else:
            assert values == {0}
