"""Volume-level inference: study_findings by hand, infer_volume against the slices of a NIfTI volume written here
(read back with nibabel), the detector run by hand on them and the study findings worked out by hand,
infer_volumes' files and errors."""

from __future__ import annotations

import csv
import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from sdmad_monai.inference import (
    NotAssessableError,
    VolumesFailedError,
    clear_previous_outputs,
    infer_volume,
    infer_volumes,
    study_findings,
    write_volume_results,
)
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

SHAPE = (32, 32, 12)


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny")


def write_volume(path, seed: int):
    data = np.random.default_rng(seed).uniform(0, 1000, SHAPE).astype(np.float32)
    affine = np.diag([1.5, 1.5, 4.0, 1.0])  # RAS, axial slices along the last array axis
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volumes")
    return [write_volume(folder / f"vol{i}.nii.gz", seed=i) for i in range(2)]


# ---------------------------------------------------------------- study_findings
def test_study_findings_by_hand():
    indices = [0, 5, 10]
    scores = torch.tensor([[0.10, 0.70], [0.40, 0.20], [0.30, 0.65]])
    predictions = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    findings = study_findings(indices, scores, predictions, ["Lesion", "Ventricles"], ["lesion", "ventricles"])
    assert findings == [
        {
            "label": "Lesion",
            "display_name": "lesion",
            "score": pytest.approx(0.40),
            "probability": None,
            "finding": 0,
            "positive_slices": [],
            "eq8_finding": 0,
            "decision": {"rule": "eq8"},
            "max_score_slice": 5,
        },
        {
            "label": "Ventricles",
            "display_name": "ventricles",
            "score": pytest.approx(0.70),
            "probability": None,
            "finding": 1,
            "positive_slices": [0, 10],
            "eq8_finding": 1,
            "decision": {"rule": "eq8"},
            "max_score_slice": 0,
        },
    ]
    # display names default to the labels; a positive slice need not be the highest-scoring one
    findings = study_findings([3, 4, 8], scores, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), ["a", "b"])
    assert [f["display_name"] for f in findings] == ["a", "b"]
    assert findings[0]["positive_slices"] == [4] and findings[0]["max_score_slice"] == 4
    assert findings[1]["finding"] == 0 and findings[1]["max_score_slice"] == 3


def test_study_findings_with_probabilities_and_a_threshold_rule():
    indices = [0, 5, 10]
    scores = torch.tensor([[0.10, 0.70], [0.40, 0.20], [0.30, 0.65]])
    predictions = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    probabilities = np.array([[0.2, 0.9], [0.7, 0.1], [0.4, np.nan]])  # second category: not calibrated
    rules = [{"rule": "probability", "threshold": 0.35}, {"rule": "eq8"}]
    first, second = study_findings(indices, scores, predictions, ["a", "b"], probabilities=probabilities, rules=rules)
    # by the threshold: slices 5 (0.7) and 10 (0.4) are positive, though Eq. 8 predicts none of them
    assert first["finding"] == 1 and first["positive_slices"] == [5, 10] and first["eq8_finding"] == 0
    assert first["probability"] == pytest.approx(0.7) and first["decision"] == rules[0]
    assert second["probability"] is None and second["finding"] == second["eq8_finding"] == 1
    assert second["positive_slices"] == [0, 10]


@pytest.mark.parametrize(
    "indices, scores, predictions",
    [
        ([0, 5], torch.zeros(3, 2), torch.zeros(3, 2)),  # N mismatch
        ([0, 5, 10], torch.zeros(3, 2), torch.zeros(3, 3)),  # scores vs predictions
        ([0, 5, 10], torch.zeros(3), torch.zeros(3)),  # not [N, K]
    ],
)
def test_study_findings_shape_errors(indices, scores, predictions):
    with pytest.raises(ValueError, match=r"must be \[N, K\]"):
        study_findings(indices, scores, predictions, ["a", "b"])


def test_study_findings_zero_slices():
    with pytest.raises(ValueError, match="No slice was processed"):
        study_findings([], torch.zeros(0, 2), torch.zeros(0, 2), ["a", "b"])


# ---------------------------------------------------------------- infer_volume
def preprocess_by_hand(plane: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """clip_slice_transforms as its docstring and intensity.py's describe it, written out with numpy and torch: clip
    to the 0.5 / 99.5 percentiles and scale to [0, 1], repeat to 3 channels, resize the longer side to ``size``
    (bilinear, centred zero padding; here square to square), then ``(x - mean) / std``."""
    lo, hi = np.percentile(plane.astype(np.float64), [0.5, 99.5])
    scaled = np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    rgb = torch.from_numpy(scaled)[None, None].repeat(1, 3, 1, 1)
    resized = torch.nn.functional.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)[0]
    return (resized - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_infer_volume_matches_manual_pipeline(detector, volumes):
    """Expected values from an independent path: the file read with nibabel, the axial slices cut and put in the
    documented radiological display orientation by hand, preprocessed by hand, and the detector's forward called on
    them (none of LoadSlices, ExtractSlices, clip_slice_transforms or prepare_volume/score_volume)."""
    result = infer_volume(detector, volumes[0], indices=[0, 5, 10])
    assert result.slice_indices == [0, 5, 10]
    assert result.axis == "axial" and result.source == str(volumes[0])
    assert result.scores.shape == (3, 6)
    assert result.predictions.shape == (3, 6)
    assert result.image_scores.shape == (3,)
    assert result.category_labels == detector.category_labels

    image = nib.load(str(volumes[0]))
    assert np.allclose(image.affine, np.diag([1.5, 1.5, 4.0, 1.0]))  # RAS: array axes i -> R, j -> A, k -> S
    data = np.asarray(image.dataobj, dtype=np.float32)
    # axial slice k = data[:, :, k] (slice 0 most inferior); display rows run anterior -> posterior (j decreasing),
    # columns right -> left (i decreasing): plane[r, c] = data[X - 1 - c, Y - 1 - r, k]
    planes = [data[::-1, ::-1, k].T for k in (0, 5, 10)]
    assert planes[0][0, 0] == data[-1, -1, 0] and planes[0][0, 1] == data[-2, -1, 0]
    images = torch.stack(
        [preprocess_by_hand(p, detector.image_size, detector.image_mean, detector.image_std) for p in planes]
    )
    assert images.shape == (3, 3, 64, 64)
    with torch.no_grad():
        expected = detector.eval()(images, output="all")
        flipped = detector(images.flip(-1), output="all")  # the orientation matters to the scores
    assert not torch.allclose(flipped["scores"], expected["scores"], atol=1e-4)
    torch.testing.assert_close(result.scores, expected["scores"], atol=1e-5, rtol=1e-5)
    assert torch.equal(result.predictions, expected["predictions"])
    torch.testing.assert_close(result.image_scores, expected["image_score"], atol=1e-5, rtol=1e-5)

    # the study findings by hand: highest slice score, positive when any slice is predicted positive
    for k, finding in enumerate(result.findings):
        column = result.scores[:, k]
        positive = [s for s, p in zip([0, 5, 10], result.predictions[:, k].tolist()) if p > 0]
        assert finding["label"] == detector.category_labels[k]
        assert finding["score"] == pytest.approx(float(column.max()))
        assert finding["max_score_slice"] == [0, 5, 10][int(column.argmax())]
        assert (finding["finding"], finding["positive_slices"]) == (int(bool(positive)), positive)
    assert result.model["backbone"] == "sdmad-tiny"
    assert result.model["sign_selection"] is True

    as_dict = result.to_dict()
    assert [s["slice"] for s in as_dict["slices"]] == [0, 5, 10]
    assert list(as_dict["slices"][1]["scores"]) == detector.category_labels
    json.dumps(as_dict)  # JSON-ready


def test_infer_volume_every_slice_in_batches(detector, volumes):
    every = infer_volume(detector, volumes[1], batch_size=5)  # no policy: every slice, 3 batches (5 + 5 + 2)
    assert every.slice_indices == list(range(SHAPE[2]))
    assert every.scores.shape == (SHAPE[2], 6)
    chosen = infer_volume(detector, volumes[1], indices=[2, 11])
    torch.testing.assert_close(chosen.scores, every.scores[[2, 11]], atol=1e-5, rtol=1e-5)
    strided = infer_volume(detector, volumes[1], stride=4)
    assert strided.slice_indices == [0, 4, 8]


def test_prepared_volume_affine_is_an_array_of_its_own(detector, volumes):
    """The affine a prepared volume carries (into the map's JSON) is the file's, in memory of its own: not a view
    of the slices' metadata tensors, nor the slices' of one another, so that nothing done to one changes another."""
    from sdmad_monai.inference import prepare_volume
    from sdmad_monai.transforms import LoadSlices

    prepared = prepare_volume(volumes[0], detector.image_size, detector.image_mean, detector.image_std, indices=[0, 5])
    assert prepared.volume_affine.flags.owndata
    np.testing.assert_array_equal(prepared.volume_affine, nib.load(str(volumes[0])).affine)
    first, second = LoadSlices("axial", [0, 5])(volumes[0])
    assert not np.shares_memory(first.meta["volume_affine"].numpy(), second.meta["volume_affine"].numpy())


# ---------------------------------------------------------------- infer_volumes
def test_infer_volume_accepts_a_loaded_volume(detector, volumes):
    """A MetaTensor volume (what LoadImage and the MONAI Deploy operator hand over) scores exactly like its file."""
    from monai.transforms import LoadImage

    volume = LoadImage(image_only=True, ensure_channel_first=True)(str(volumes[0]))
    from_file = infer_volume(detector, volumes[0], indices=[0, 5, 10])
    in_memory = infer_volume(detector, volume, indices=[0, 5, 10])
    assert in_memory.slice_indices == from_file.slice_indices == [0, 5, 10]
    torch.testing.assert_close(in_memory.scores, from_file.scores)
    torch.testing.assert_close(in_memory.image_scores, from_file.image_scores)
    assert in_memory.findings == from_file.findings
    assert in_memory.source == str(volumes[0])


def test_infer_volumes_writes_files(detector, volumes, tmp_path):
    output = tmp_path / "out"
    results = infer_volumes(detector, [str(v) for v in volumes], output, indices=[0, 5, 10])
    assert len(results) == 2
    document = json.loads((output / "findings.json").read_text())
    assert [v["source"] for v in document["volumes"]] == [str(v) for v in volumes]
    assert all(len(v["findings"]) == 6 and len(v["slices"]) == 3 for v in document["volumes"])
    with open(output / "slices.csv", newline="") as handle:
        slice_rows = list(csv.reader(handle))
    labels = detector.category_labels
    assert slice_rows[0] == (
        ["source", "axis", "slice", "image_score"]
        + [f"score:{label}" for label in labels]
        + [f"prediction:{label}" for label in labels]
        + [f"probability:{label}" for label in labels]
    )
    assert len(slice_rows) == 1 + 2 * 3
    assert [int(r[2]) for r in slice_rows[1:]] == [0, 5, 10, 0, 5, 10]
    # the values are the results' own: per slice, the image score, every category's score and prediction
    for row, (result, i) in zip(slice_rows[1:], [(r, i) for r in results for i in range(3)]):
        assert row[0] == result.source and row[1] == "axial"
        assert float(row[3]) == pytest.approx(float(result.image_scores[i]), abs=1e-6)
        assert [float(v) for v in row[4 : 4 + len(labels)]] == pytest.approx(result.scores[i].tolist(), abs=1e-6)
        predictions = row[4 + len(labels) : 4 + 2 * len(labels)]
        assert [int(float(v)) for v in predictions] == [int(v) for v in result.predictions[i].tolist()]
        assert row[4 + 2 * len(labels) :] == [""] * len(labels)  # an uncalibrated detector has no probability
    with open(output / "findings.csv", newline="") as handle:
        finding_rows = list(csv.DictReader(handle))
    assert list(finding_rows[0])[:4] == ["source", "label", "display_name", "finding"]
    assert len(finding_rows) == 2 * 6
    assert [r["label"] for r in finding_rows[:6]] == labels
    for row, finding in zip(finding_rows, [f for r in results for f in r.findings]):
        assert int(row["finding"]) == finding["finding"]
        assert float(row["score"]) == pytest.approx(finding["score"], abs=1e-6)
    assert not list(output.rglob("*.tmp"))


def test_infer_volumes_missing_input(detector, volumes, tmp_path):
    missing = tmp_path / "absent.nii.gz"
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        infer_volumes(detector, [volumes[0], missing], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before any work


def test_infer_volumes_empty_list(detector, tmp_path):
    with pytest.raises(ValueError, match="No input volume"):
        infer_volumes(detector, [], tmp_path / "out")


def test_write_volume_results_empty(tmp_path):
    paths = write_volume_results([], tmp_path)
    assert json.loads(paths["json"].read_text()) == {"volumes": [], "failed": []}
    assert paths["slices_csv"].read_text().splitlines() == ["source,axis,slice,image_score"]


def test_find_volumes_takes_nifti_h5_and_dicom_folders(tmp_path):
    from sdmad_monai.inference import find_volumes

    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.nii").write_bytes(b"x")
    (tmp_path / "c.h5").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a volume")
    (tmp_path / "series1").mkdir()
    (tmp_path / "series1" / "IM0001").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert [p.name for p in find_volumes(tmp_path)] == ["a.nii.gz", "b.nii", "c.h5", "series1"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_volumes(tmp_path / "missing")


# ---------------------------------------------------------------- nothing wrong passes as "no finding"
def _write(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([1.5, 1.5, 4.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize(
    "fill, reason",
    [(0.0, "constant intensity 0"), (np.nan, "all voxels are NaN or infinite")],
)
def test_blank_or_nan_volume_is_not_assessable(detector, tmp_path, fill, reason):
    path = _write(tmp_path / "bad.nii.gz", np.full(SHAPE, fill))
    with pytest.raises(NotAssessableError, match=f"bad.nii.gz: cannot be assessed \\(slice 0: {reason}"):
        infer_volume(detector, path, indices=[0, 5, 10])


def test_mostly_nan_slice_named_and_scan_leaves_out_blank_slices(detector, tmp_path):
    data = np.random.default_rng(0).uniform(0, 1000, SHAPE)
    data[:, :, 5] = np.where(np.arange(SHAPE[0])[:, None] < 8, np.nan, data[:, :, 5])  # a quarter NaN
    data[:, :, 11] = 0.0  # a blank end slice
    path = _write(tmp_path / "partly.nii.gz", data)
    with pytest.raises(NotAssessableError, match="slice 5: 25% of its voxels are NaN"):
        infer_volume(detector, path, indices=[0, 5, 10])
    result = infer_volume(detector, path, stride=1)  # scanning every slice: the bad ones are left out and listed
    assert result.not_assessed == {5: "25% of its voxels are NaN or infinite", 11: "constant intensity 0"}
    assert 5 not in result.slice_indices and 11 not in result.slice_indices and len(result.slice_indices) == 10
    assert result.to_dict()["not_assessed_slices"] == {"5": result.not_assessed[5], "11": result.not_assessed[11]}


def test_checkpoint_with_nan_weights_is_refused(detector, tmp_path):
    from sdmad_monai.networks.detector import DetectorStateError

    broken = SignDrivenDetector.from_preset("tiny")
    with torch.no_grad():
        next(iter(broken.image_adapters.values())).parameters().__next__().fill_(float("nan"))
    path = broken.save(tmp_path / "nan.pt")
    with pytest.raises(
        DetectorStateError, match=r"nan.pt holds non-finite weights \(NaN or infinity\) in image_adapters"
    ):
        SignDrivenDetector.load(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DetectorStateError, match="empty.pt: the file is empty"):
        SignDrivenDetector.load(tmp_path / "empty.pt")


def test_non_finite_scores_are_not_reported(detector, volumes, monkeypatch):
    original = SignDrivenDetector.score

    def nan_scores(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return dataclasses.replace(out, scores=torch.full_like(out.scores, float("nan")))

    monkeypatch.setattr(SignDrivenDetector, "score", nan_scores)
    with pytest.raises(NotAssessableError, match="non-finite"):
        infer_volume(detector, volumes[0], indices=[0, 5])


def test_one_bad_volume_does_not_sink_the_others(detector, volumes, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good_a, good_b = _write(folder / "a.nii.gz", nib.load(volumes[0]).get_fdata()), folder / "c.nii.gz"
    _write(good_b, nib.load(volumes[1]).get_fdata())
    (folder / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    with pytest.raises(VolumesFailedError, match=r"1 of 3 volume\(s\) could not be processed .*b.nii.gz"):
        infer_volumes(detector, [good_a, folder / "b.nii.gz", good_b], out, indices=[0, 5], anomaly_maps=True)
    document = json.loads((out / "findings.json").read_text())
    assert [v["source"] for v in document["volumes"]] == [str(good_a), str(good_b)]  # the third one still ran
    assert document["failed"][0]["source"] == str(folder / "b.nii.gz") and document["failed"][0]["error"]
    assert not list(out.glob("b*"))  # nothing of the bad volume


def test_reused_output_folder_keeps_no_stale_maps(detector, volumes, tmp_path):
    out = tmp_path / "out"
    infer_volumes(detector, [volumes[0]], out, indices=[0, 5], anomaly_maps=True, overlays_top=1, overlays_random=0)
    first = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert any("vol0" in str(p) for p in first)
    infer_volumes(detector, [volumes[1]], out, indices=[0, 5], anomaly_maps=True, overlays_top=1, overlays_random=0)
    second = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not any("vol0" in p for p in second) and any("vol1" in p for p in second)
    (out / "findings.json").write_text("not json")  # an unreadable record: nothing is removed
    assert clear_previous_outputs(out) == [] and any("vol1" in str(p) for p in out.rglob("*"))


def test_a_volume_whose_outputs_fail_half_way_leaves_none(detector, volumes, tmp_path, monkeypatch):
    import sdmad_monai.inference as inference

    def disk_full(selector, folder, **kwargs):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "top_001.png").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inference.outputs, "write_overlays", disk_full)  # per-volume overlays
    monkeypatch.setattr(inference.run, "write_overlays", disk_full)  # the run's gallery
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        infer_volumes(
            detector, [volumes[0]], out, indices=[0, 5], anomaly_maps=True, overlays_top=1, overlay_scope="volume"
        )
    assert [p for p in out.rglob("*") if p.is_file()] == []  # neither the 3D map nor the partial overlay
    # the run's gallery: the volumes' maps are complete, the gallery is all or nothing
    with pytest.raises(OSError, match="No space left"):
        infer_volumes(detector, [volumes[0]], out, indices=[0, 5], anomaly_maps=True, overlays_top=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "maps/vol0_anomaly_map.json", "maps/vol0_anomaly_map.nii.gz"]  # fmt: skip
