"""Tests for the BMAD datalist builder (sdmad_monai.data.bmad)."""

from __future__ import annotations

import json

import pytest
from monai.data import load_decathlon_datalist

from sdmad_monai.data import build_bmad_datalist


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"png")


@pytest.fixture
def bmad(tmp_path):
    root = tmp_path / "BraTS2021_slice"
    for name in ("a.png", "b.png"):
        _touch(root / "train" / "good" / "img" / name)
    _touch(root / "valid" / "good" / "img" / "c.png")
    _touch(root / "valid" / "Ungood" / "img" / "d.png")
    _touch(root / "valid" / "Ungood" / "anomaly_mask" / "d.png")
    _touch(root / "test" / "good" / "img" / "e.png")
    _touch(root / "test" / "Ungood" / "img" / "f.png")
    _touch(root / "test" / "Ungood" / "img" / "g.png")
    _touch(root / "test" / "Ungood" / "anomaly_mask" / "g.png")
    return root


def test_bmad_sections_labels_and_masks(bmad, tmp_path):
    out = build_bmad_datalist(bmad, output_json=tmp_path / "bmad.json")
    assert [it["file"] for it in out["training"]] == ["a.png", "b.png"]
    assert all(it["label"] == [0.0] and "mask" not in it for it in out["training"])
    val = {it["file"]: it for it in out["validation"]}
    assert val["c.png"]["label"] == [0.0] and val["d.png"]["label"] == [1.0]
    assert val["d.png"]["mask"] == str(bmad / "valid" / "Ungood" / "anomaly_mask" / "d.png")
    test = {it["file"]: it for it in out["test"]}
    assert test["f.png"]["label"] == [1.0] and "mask" not in test["f.png"]
    assert "mask" in test["g.png"]
    loaded = load_decathlon_datalist(tmp_path / "bmad.json", is_segmentation=False, data_list_key="test")
    assert [it["image"] for it in loaded] == [t["image"] for t in out["test"]]
    assert json.loads((tmp_path / "bmad.json").read_text())["test"][0]["image"].startswith("BraTS2021_slice/")


def test_bmad_errors(tmp_path, bmad):
    with pytest.raises(FileNotFoundError, match="BMAD root not found"):
        build_bmad_datalist(tmp_path / "nope")
    (bmad / "train" / "Ungood" / "img").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"train must contain only 'good'"):
        build_bmad_datalist(bmad)


def test_bmad_empty_and_unexpected(tmp_path):
    root = tmp_path / "r"
    (root / "train" / "good" / "img").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"img holds no image file"):
        build_bmad_datalist(root)
    _touch(root / "train" / "good" / "img" / "x.png")
    (root / "test" / "bad").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"unexpected class folder\(s\) \['bad'\]"):
        build_bmad_datalist(root)
