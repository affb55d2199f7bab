"""MedIAnomaly readers (sdmad_monai.data.medianomaly): exact counts and labels on small generated layouts of each
kind, the held-out validation normals, and one-line errors naming the file."""

from __future__ import annotations

import json

import pytest

from sdmad_monai.data.medianomaly import build_medianomaly_datalist, detect_medianomaly_layout


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG")
    return path


def counts(datalist):
    return {s: (sum(i["label"] == [0.0] for i in items), sum(i["label"] == [1.0] for i in items))
            for s, items in datalist.items()}  # fmt: skip


def test_data_json_layout(tmp_path):
    names = {"train": {"0": [f"n{i}.png" for i in range(10)]},
             "test": {"0": ["t0.png", "t1.png", "t2.png"], "1": ["a0.png", "a1.png"]}}  # fmt: skip
    for name in names["train"]["0"] + names["test"]["0"] + names["test"]["1"]:
        touch(tmp_path / "images" / name)
    (tmp_path / "data.json").write_text(json.dumps(names))
    assert detect_medianomaly_layout(tmp_path) == "data_json"
    datalist = build_medianomaly_datalist(tmp_path, validation_fraction=0.2, seed=3)
    assert counts(datalist) == {"training": (8, 0), "validation": (2, 0), "test": (3, 2)}
    assert [i["file"] for i in datalist["test"]] == ["t0.png", "t1.png", "t2.png", "a0.png", "a1.png"]
    held = {i["file"] for i in datalist["validation"]}
    assert not held & {i["file"] for i in datalist["training"]} and all(i["split"] == "validation"
                                                                      for i in datalist["validation"])  # fmt: skip
    again = build_medianomaly_datalist(tmp_path, validation_fraction=0.2, seed=3)
    assert held == {i["file"] for i in again["validation"]}
    assert counts(build_medianomaly_datalist(tmp_path, validation_fraction=0))["validation"] == (0, 0)
    names["test"]["1"].append("missing.png")
    (tmp_path / "data.json").write_text(json.dumps(names))
    with pytest.raises(FileNotFoundError, match=r"data.json lists 'missing.png' under test/1"):
        build_medianomaly_datalist(tmp_path)


def test_isic2018_layout(tmp_path):
    header = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
    rows = {"Training": [("ISIC_1", "NV"), ("ISIC_2", "NV"), ("ISIC_3", "MEL"), ("ISIC_4", "NV"), ("ISIC_5", "BCC")],
            "Test": [("ISIC_9", "NV"), ("ISIC_8", "DF"), ("ISIC_7", "VASC")]}  # fmt: skip
    for part, entries in rows.items():
        text = header
        for image, cls in entries:
            touch(tmp_path / f"ISIC2018_Task3_{part}_Input" / f"{image}.jpg")
            text += image + "," + ",".join("1.0" if c == cls else "0.0" for c in header.strip().split(",")[1:]) + "\n"
        truth = tmp_path / f"ISIC2018_Task3_{part}_GroundTruth"
        truth.mkdir()
        (truth / f"ISIC2018_Task3_{part}_GroundTruth.csv").write_text(text)
    datalist = build_medianomaly_datalist(tmp_path, validation_fraction=0)
    assert counts(datalist) == {"training": (3, 0), "validation": (0, 0), "test": (1, 2)}  # NV only in training
    bad = tmp_path / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    bad.write_text(header + "ISIC_9,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n")
    with pytest.raises(ValueError, match=r"line 2: image ISIC_9 has classes \['MEL', 'NV'\]; expected one"):
        build_medianomaly_datalist(tmp_path)


def test_camelyon16_layout(tmp_path):
    for i in range(4):
        touch(tmp_path / "train" / "good" / f"g{i}.png")
    for i in range(3):
        touch(tmp_path / "test" / "good" / f"t{i}.png")
    touch(tmp_path / "test" / "Ungood" / "u0.png")
    assert counts(build_medianomaly_datalist(tmp_path, validation_fraction=0.25)) == {
        "training": (3, 0), "validation": (1, 0), "test": (3, 1)}  # fmt: skip


def test_brats2021_layout_with_masks(tmp_path):
    for i in range(5):
        touch(tmp_path / "train" / f"BraTS_{i}_flair_80.png")
    touch(tmp_path / "test" / "normal" / "BraTS_10_flair_20.png")
    for i in (11, 12):
        touch(tmp_path / "test" / "tumor" / f"BraTS_{i}_flair_70.png")
        touch(tmp_path / "test" / "annotation" / f"BraTS_{i}_seg_70.png")
    datalist = build_medianomaly_datalist(tmp_path, validation_fraction=0.2, output_json=tmp_path / "list.json")
    assert counts(datalist) == {"training": (4, 0), "validation": (1, 0), "test": (1, 2)}
    tumors = [i for i in datalist["test"] if i["label"] == [1.0]]
    assert [i["mask"].rsplit("/", 2)[-2:] for i in tumors] == [["annotation", "BraTS_11_seg_70.png"],
                                                                ["annotation", "BraTS_12_seg_70.png"]]  # fmt: skip
    written = json.loads((tmp_path / "list.json").read_text())
    assert written["test"][1]["mask"] == "test/annotation/BraTS_11_seg_70.png"
    (tmp_path / "test" / "annotation" / "BraTS_12_seg_70.png").unlink()
    with pytest.raises(FileNotFoundError, match="BraTS_12_flair_70.png has no mask"):
        build_medianomaly_datalist(tmp_path)


def test_unknown_folder_says_what_each_layout_needs(tmp_path):
    with pytest.raises(ValueError, match="not a MedIAnomaly dataset folder: expected data.json"):
        build_medianomaly_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_medianomaly_datalist(tmp_path / "nope")
