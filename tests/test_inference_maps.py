"""Anomaly maps through volume-level inference: the 3D map NIfTI (input affine and shape, processed planes only),
its sidecar, the overlays and findings.json, on a sagittally acquired, flipped volume."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sdmad_monai.inference import infer_volume, infer_volumes
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.transforms import LoadSlices, clip_slice_transforms

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

SHAPE = (20, 24, 16)
# sagittal acquisition with flips: dim 0 -> -A, dim 1 -> -S, dim 2 -> +R (axial slices lie along array dim 1)
AFFINE = np.array([[0, 0, 1.2, -10], [-1.0, 0, 0, 12], [0, -1.5, 0, 20], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny").eval()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("maps") / "sag.nii.gz"
    data = np.random.default_rng(0).uniform(0, 500, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def test_infer_volume_maps_match_detector(detector, volume):
    result = infer_volume(detector, volume, indices=[1, 4, 9], anomaly_maps=True)
    slices = LoadSlices("axial", indices=[1, 4, 9])(volume)
    preprocess = clip_slice_transforms("image", detector.image_size, detector.image_mean, detector.image_std)
    images = torch.stack([torch.as_tensor(preprocess({"image": s})["image"]) for s in slices])
    with torch.no_grad():
        expected = detector(images, output="all")["anomaly_map"]
    assert result.anomaly_maps.shape == (3, detector.image_size, detector.image_size)
    assert torch.allclose(result.anomaly_maps, expected, atol=1e-5)
    assert result.display_images.shape == (3, detector.image_size, detector.image_size, 3)
    assert result.volume_shape == SHAPE and result.slice_shape == tuple(slices[0].meta["spatial_shape"])
    assert infer_volume(detector, volume, indices=[1]).anomaly_maps is None  # off by default
    # maps without display images (the Parametric Map, MONAI Label): the same maps, nothing drawn
    maps_only = infer_volume(detector, volume, indices=[1, 4, 9], anomaly_maps=True, display_images=False)
    assert maps_only.display_images is None and torch.equal(maps_only.anomaly_maps, result.anomaly_maps)


def test_infer_volumes_writes_aligned_map_and_overlays(detector, volume, tmp_path):
    results = infer_volumes(
        detector,
        [volume],
        tmp_path,
        indices=[2, 7],
        anomaly_maps=True,
        overlays_top=1,
        overlays_random=1,
        overlay_scope="volume",
    )
    assert results[0].anomaly_maps is None and results[0].map_files is not None  # written, arrays released
    image = nib.load(tmp_path / "maps" / "sag_anomaly_map.nii.gz")
    np.testing.assert_allclose(image.affine, AFFINE)
    data = np.asarray(image.dataobj)
    assert data.shape == SHAPE
    # axial canonical slice k lies on array dim 1 (S runs against it): array index 23 - k
    processed = {23 - 2, 23 - 7}
    for j in range(SHAPE[1]):
        plane = data[:, j, :]
        assert (np.count_nonzero(plane) == plane.size) if j in processed else not plane.any()
    sidecar = json.loads((tmp_path / "maps" / "sag_anomaly_map.json").read_text())
    assert sidecar["processed_slices"] == [2, 7] and sidecar["axis"] == "axial"
    findings = json.loads((tmp_path / "findings.json").read_text())
    entry = findings["volumes"][0]["anomaly_map"]
    assert entry["nifti"] == "maps/sag_anomaly_map.nii.gz" and entry["overlays"] == "overlays/sag"
    pngs = sorted(p.name for p in (tmp_path / "overlays" / "sag").rglob("*.png"))
    assert len(pngs) == 2 and pngs[0].startswith("random_001_sag_axial_slice") and pngs[1].startswith("top_001_")
    assert "overlays" not in findings  # no run gallery with per-volume overlays


def test_run_gallery_is_the_top_and_a_sample_of_all_volumes(detector, volume, tmp_path):
    """The default overlays: one gallery over the run, its top slices the highest image scores of all volumes."""
    import csv

    second = tmp_path / "second.nii.gz"
    nib.save(nib.Nifti1Image(np.flip(np.asarray(nib.load(volume).dataobj), 0).copy(), AFFINE), second)
    out = tmp_path / "out"
    results = infer_volumes(detector, [volume, second], out, indices=[1, 3, 5, 7], anomaly_maps=True,
                            overlays_top=3, overlays_random=2)  # fmt: skip
    scores = sorted(((float(s), f"{Path(r.source).name.split('.')[0]}_axial_slice{i:03d}")
                     for r in results for s, i in zip(r.image_scores, r.slice_indices)), reverse=True)  # fmt: skip
    findings = json.loads((out / "findings.json").read_text())
    assert findings["overlays"] == "overlays" and all(v["anomaly_map"]["overlays"] is None for v in findings["volumes"])
    rows = list(csv.DictReader((out / "overlays" / "index.csv").open()))
    top = [r["name"] for r in rows if r["kind"] == "top"]
    sample = [r["name"] for r in rows if r["kind"] == "random"]
    assert top == [name for _, name in scores[:3]]
    assert len(sample) == 2 and not set(sample) & set(top) and set(sample) <= {name for _, name in scores}
    assert list(rows[0]) == ["kind", "rank", "name", "score", "label", "png"] and len(rows) == 3 + 2
    by_name = {name: score for score, name in scores}
    # the index's scores are the results' image scores, written with 6 significant digits
    assert [float(r["score"]) for r in rows] == pytest.approx([by_name[r["name"]] for r in rows], rel=1e-5)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 1, 2]
    assert all((out / "overlays" / r["png"]).is_file() and r["png"].startswith(f"{r['kind']}/") for r in rows)
    pngs = sorted(p.relative_to(out / "overlays").parts[0] for p in (out / "overlays").rglob("*.png"))
    assert pngs == ["random"] * 2 + ["top"] * 3
    assert not [p for p in out.iterdir() if p.name.startswith(".overlays")]


def test_maps_requested_from_detector_without_maps(volume):
    detector = SignDrivenDetector.from_preset("tiny", map_layers=[])
    with pytest.raises(ValueError, match="anomaly maps were asked for"):
        infer_volume(detector, volume, indices=[0], anomaly_maps=True)
