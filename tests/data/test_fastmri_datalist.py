"""Tests for the fastMRI+ datalist builder (sdmad_monai.data.fastmri)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from monai.data import list_data_collate, load_decathlon_datalist

from sdmad_monai.data import (
    FASTMRI_BRAIN_CATEGORIES,
    build_fastmri_datalist,
    read_fastmri_file_list,
)
from sdmad_monai.data.fastmri import decode_boxes

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "fastmri-plus"
GLOBAL = "Global label: Small vessel chronic white matter ischemic change"

CSV = f"""file,slice,study_level,x,y,width,height,label
volA,0,No,10,20,5,6,Craniotomy
volA,0,No,30,40,5,5,Craniotomy
volA,5,No,11,12,3,4,Nonspecific lesion
volA,5,No,50,50,8,8,Enlarged ventricles
volB,0,Yes,,,,,{GLOBAL}
volB,10,No,1,2,3,4,Dural thickening
volC,5,No,7,7,7,7,Mass
volC,10,No,9,9,9,9,Posttreatment change
volD,0,Yes,,,,,Normal for age
volE,0,Yes,,,,,Motion artifact
volE,3,No,1,1,1,1,Craniotomy
"""
STEMS = ["volA", "volB", "volC", "volD", "volE"]


@pytest.fixture
def small(tmp_path):
    (tmp_path / "brain.csv").write_text(CSV)
    (tmp_path / "brain_file_list.csv").write_text("\n".join(STEMS) + "\n")
    images = tmp_path / "images"
    images.mkdir()
    for s in STEMS:
        (images / f"{s}.h5").write_bytes(b"")
    return tmp_path


def _build(root, **kw):
    kw.setdefault("data_dir", root / "images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_fastmri_datalist(root / "brain.csv", root / "brain_file_list.csv", **kw)


def _row(counts, name):
    return [counts[name][0], counts[name][5], counts[name][10], counts[name]["total"]]


def test_default_rules_hand_counts(small):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = build_fastmri_datalist(small / "brain.csv", small / "brain_file_list.csv", small / "images")
    unknown = [w for w in rec if "outside the category list" in str(w.message)]
    assert len(unknown) == 1  # warned once
    assert "'Mass': 1" in str(unknown[0].message) and "'Motion artifact': 1" in str(unknown[0].message)
    assert res.unknown_label_counts == {"Mass": 1, "Motion artifact": 1}
    c = res.counts
    assert _row(c, "Craniotomy") == [1, 0, 0, 1]
    assert _row(c, "Posttreatment change") == [0, 0, 1, 1]
    assert _row(c, "Nonspecific lesion") == [0, 1, 0, 1]
    assert _row(c, "Dural thickening") == [0, 0, 1, 1]
    assert _row(c, "Enlarged ventricles") == [0, 1, 0, 1]
    assert _row(c, GLOBAL) == [1, 0, 0, 1]
    assert _row(c, "normal") == [2, 3, 3, 8]
    assert _row(c, "excluded") == [1, 1, 0, 2]
    assert _row(c, "items") == [4, 4, 5, 13]
    assert len(res.items) == 13
    a0 = next(it for it in res.items if it["file"] == "volA" and it["slice"] == 0)
    assert a0["label"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert set(a0) == {"image", "label", "slice", "file", "boxes", "box_frame"}
    boxes = res.boxes_for("volA", 0)
    assert len(boxes) == 2
    assert boxes[0] == {"file": "volA", "slice": 0, "x": 10, "y": 20, "width": 5, "height": 6, "label": "Craniotomy"}
    assert len(res.boxes) == 6  # slice-level category boxes of kept items (volA x4, volB x1, volC x1)
    a5 = next(it for it in res.items if it["file"] == "volA" and it["slice"] == 5)
    assert a5["label"] == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert Path(a5["image"]) == (small / "images" / "volA.h5").resolve()
    assert not any(it["file"] == "volC" and it["slice"] == 5 for it in res.items)  # Mass -> excluded
    assert "Craniotomy" in res.table and "excluded" in res.table


def _item(res, file, slice_index):
    return next(it for it in res.items if it["file"] == file and it["slice"] == slice_index)


def test_items_carry_their_boxes(small):
    res = _build(small)
    a0 = _item(res, "volA", 0)
    # exact CSV values, as a JSON string so that the default collate keeps one string per item
    assert a0["boxes"] == '[[10, 20, 5, 6, "Craniotomy"], [30, 40, 5, 5, "Craniotomy"]]'
    assert decode_boxes(a0["boxes"]) == [(10, 20, 5, 6, "Craniotomy"), (30, 40, 5, 5, "Craniotomy")]
    assert decode_boxes(_item(res, "volA", 5)["boxes"]) == [
        (11, 12, 3, 4, "Nonspecific lesion"),
        (50, 50, 8, 8, "Enlarged ventricles"),
    ]
    assert decode_boxes(_item(res, "volB", 10)["boxes"]) == [(1, 2, 3, 4, "Dural thickening")]
    assert decode_boxes(_item(res, "volC", 10)["boxes"]) == [(9, 9, 9, 9, "Posttreatment change")]
    # study-level rows (the Global label, "Normal for age") give no box; neither do normal slices
    assert _item(res, "volB", 0)["label"][5] == 1.0 and _item(res, "volB", 0)["boxes"] == "[]"
    assert _item(res, "volD", 0)["boxes"] == "[]" and _item(res, "volE", 5)["boxes"] == "[]"
    # the item boxes are the same boxes as the top-level list
    from_items = sorted((it["file"], it["slice"], *box) for it in res.items for box in decode_boxes(it["boxes"]))
    from_list = sorted((b["file"], b["slice"], b["x"], b["y"], b["width"], b["height"], b["label"]) for b in res.boxes)
    assert from_items == from_list and len(from_items) == 6
    # fastMRI .h5: boxes were drawn on up/down-flipped slices
    assert {it["box_frame"] for it in res.items} == {"flipped_rows"}
    assert res.settings["box_frame"] == "flipped_rows"


def test_items_with_boxes_collate(small):
    items = _build(small).items
    batch = list_data_collate([dict(it, label=list(it["label"])) for it in items[:4]])  # volA 0 has 2 boxes
    assert list(batch["boxes"]) == [it["boxes"] for it in items[:4]]
    assert list(batch["box_frame"]) == ["flipped_rows"] * 4


def test_box_frame(small):
    for s in STEMS:
        (small / "images" / f"{s}.nii.gz").write_bytes(b"")
    demo_like = _build(small, suffix=".nii.gz")
    assert {it["box_frame"] for it in demo_like.items} == {"display"}  # the demo writes display-frame boxes
    assert {it["box_frame"] for it in _build(small, box_frame="display").items} == {"display"}
    with pytest.raises(ValueError, match="box_frame"):
        _build(small, box_frame="upside_down")


def test_decode_boxes():
    assert decode_boxes(None) == [] and decode_boxes("") == [] and decode_boxes("[]") == []
    assert decode_boxes([[1, 2, 3, 4, "a"]]) == [(1, 2, 3, 4, "a")]
    assert decode_boxes('[[1.0, 2, 3, 4, "a"]]') == [(1, 2, 3, 4, "a")]
    with pytest.raises(ValueError, match="x, y, width, height, label"):
        decode_boxes("[[1, 2, 3]]")
    with pytest.raises(ValueError, match="list"):
        decode_boxes('{"x": 1}')


def test_study_level_all_slices(small):
    c = _build(small, study_level="all_slices").counts
    assert _row(c, GLOBAL) == [1, 1, 1, 3]
    assert _row(c, "excluded") == [1, 2, 1, 4]  # Motion artifact now excludes every slice of volE
    assert _row(c, "normal") == [2, 1, 2, 5]
    assert _row(c, "items") == [4, 3, 4, 11]


def test_study_level_ignore(small):
    c = _build(small, study_level="ignore").counts
    assert _row(c, GLOBAL) == [0, 0, 0, 0]
    assert _row(c, "excluded") == [0, 1, 0, 1]
    assert _row(c, "normal") == [4, 3, 3, 10]
    assert _row(c, "items") == [5, 4, 5, 14]


def test_unknown_labels_ignore(small):
    res = _build(small, unknown_labels="ignore")
    assert _row(res.counts, "excluded") == [0, 0, 0, 0]
    assert _row(res.counts, "normal") == [3, 4, 3, 10]
    assert len(res.items) == 15


def test_custom_slices_and_categories(small):
    res = _build(small, slices=(3,), categories=("Craniotomy",))
    assert res.counts["Craniotomy"][3] == 1
    assert [it["file"] for it in res.items if it["label"] == [1.0]] == ["volE"]


def test_json_is_decathlon_compatible(small):
    out = small / "lists" / "fastmri.json"
    res = _build(small, output_json=out)
    doc = json.loads(out.read_text())
    assert doc["categories"] == list(FASTMRI_BRAIN_CATEGORIES)
    assert doc["training"][0]["image"] == "../images/volA.h5"
    loaded = load_decathlon_datalist(out, is_segmentation=False, data_list_key="training")
    assert len(loaded) == 13
    assert loaded[0]["image"] == str((small / "images" / "volA.h5").resolve())
    assert loaded[0]["label"] == res.items[0]["label"] and loaded[0]["slice"] == 0
    assert loaded[0]["boxes"] == '[[10, 20, 5, 6, "Craniotomy"], [30, 40, 5, 5, "Craniotomy"]]'
    assert loaded[0]["box_frame"] == "flipped_rows"
    assert doc["boxes"] == res.boxes
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_missing_image_error_and_skip(small):
    (small / "images" / "volE.h5").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 image\(s\) listed in .*brain_file_list\.csv are not on disk, e\.g\. \[.*volE\.h5"
    ):
        _build(small)
    res = _build(small, missing="skip")
    assert {it["file"] for it in res.items} == {"volA", "volB", "volC", "volD"}
    assert len(_build(small, missing="ignore", data_dir=small / "nowhere").items) == 13


def test_suffix(small):
    for s in STEMS:
        (small / "images" / f"{s}.nii.gz").write_bytes(b"")
    res = _build(small, suffix=".nii.gz")
    assert res.items[0]["image"].endswith("volA.nii.gz")


def test_missing_columns_error(tmp_path):
    (tmp_path / "bad.csv").write_text("file,slice,x,y,width,height\nvolA,0,1,1,1,1\n")
    (tmp_path / "list.csv").write_text("volA\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) \['study_level', 'label'\]"):
        build_fastmri_datalist(tmp_path / "bad.csv", tmp_path / "list.csv", tmp_path, missing="ignore")


@pytest.mark.parametrize(
    "row, message",
    [
        ("volA,x,No,1,1,1,1,Craniotomy", r"line 2: slice 'x' is not an integer"),
        ("volA,0,Maybe,1,1,1,1,Craniotomy", r"line 2: study_level 'Maybe' is not 'Yes' or 'No'"),
        ("volA,0,No,,,,,Craniotomy", r"line 2: slice-level row needs a numeric box"),
        ("volZ,0,No,1,1,1,1,Craniotomy", r"annotates 1 file\(s\) absent from .*list\.csv: \['volZ'\]"),
    ],
)
def test_bad_rows(tmp_path, row, message):
    (tmp_path / "b.csv").write_text("file,slice,study_level,x,y,width,height,label\n" + row + "\n")
    (tmp_path / "list.csv").write_text("volA\n")
    with pytest.raises(ValueError, match=message):
        build_fastmri_datalist(tmp_path / "b.csv", tmp_path / "list.csv", tmp_path, missing="ignore")


def test_file_list_with_header_rejected(tmp_path):
    (tmp_path / "list.csv").write_text("file\nvolA\n")
    with pytest.raises(ValueError, match="one stem per line and no header"):
        read_fastmri_file_list(tmp_path / "list.csv")


@pytest.mark.skipif(not (REAL / "brain.csv").is_file(), reason=f"real fastMRI+ annotations not found under {REAL}")
def test_real_fastmri_plus_files():
    # expected values were counted independently from the CSV (distinct files per label and slice)
    with pytest.warns(UserWarning, match="22 label\\(s\\) outside the category list") as rec:
        res = build_fastmri_datalist(REAL / "brain.csv", REAL / "brain_file_list.csv", "/nonexistent", missing="ignore")
    assert len([w for w in rec if "outside the category list" in str(w.message)]) == 1
    assert len(res.items) == 2477
    assert [res.counts["excluded"][s] for s in (0, 5, 10)] == [262, 172, 92]
    assert res.unknown_label_counts["Mass"] == 380
    assert res.unknown_label_counts["Nonspecific white matter lesion"] == 1826
    assert "Normal for age" not in res.unknown_label_counts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = build_fastmri_datalist(
            REAL / "brain.csv", REAL / "brain_file_list.csv", "/nonexistent", missing="ignore", unknown_labels="ignore"
        )
    assert len(full.items) == 3003  # 1001 volumes x 3 slices
    assert full.counts["Craniotomy"][10] == 67
    assert full.counts["Dural thickening"][0] == 23
    assert full.counts["Enlarged ventricles"][10] == 2
    assert full.counts[GLOBAL][0] == 220 and full.counts[GLOBAL][5] == 0
    # boxes: rows of brain.csv read independently (file_brain_AXFLAIR_200_6002648 has only category boxes)
    stem = "file_brain_AXFLAIR_200_6002648"
    for result in (res, full):
        assert decode_boxes(_item(result, stem, 0)["boxes"]) == [
            (195, 60, 36, 25, "Dural thickening"),
            (128, 109, 21, 43, "Nonspecific lesion"),
        ]
        assert decode_boxes(_item(result, stem, 10)["boxes"]) == [
            (119, 73, 82, 30, "Craniotomy"),
            (222, 144, 14, 29, "Craniotomy"),
            (157, 98, 10, 55, "Dural thickening"),
        ]
        assert _item(result, stem, 10)["box_frame"] == "flipped_rows"
    assert sum(len(decode_boxes(it["boxes"])) for it in res.items) == len(res.boxes)
