"""Tests for the deterministic demo dataset (sdmad_monai.data.demo)."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sdmad_monai.data import (
    DEMO_SUFFIX,
    FASTMRI_BRAIN_CATEGORIES,
    build_fastmri_datalist,
    generate_demo_dataset,
    select_k_shot,
)
from sdmad_monai.transforms import LoadSlices


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(generate_demo_dataset(tmp_path / "a", num_volumes=8, seed=3)["root"])
    b = _files(generate_demo_dataset(tmp_path / "b", num_volumes=8, seed=3)["root"])
    c = _files(generate_demo_dataset(tmp_path / "c", num_volumes=8, seed=4)["root"])
    assert len(a) == 8 + 3  # 8 images, brain.csv, brain_file_list.csv, manifest.json
    assert a == b
    assert a["images/file_brain_AXT1_DEMO_0000.nii.gz"] != c["images/file_brain_AXT1_DEMO_0000.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_reuse_regenerate_and_refuse(tmp_path):
    paths = generate_demo_dataset(tmp_path / "demo", num_volumes=7, seed=0)
    csv = paths["annotations_csv"]
    stamp = csv.stat().st_mtime_ns
    again = generate_demo_dataset(tmp_path / "demo", num_volumes=7, seed=0)
    assert again == paths and csv.stat().st_mtime_ns == stamp  # reused, not rewritten
    generate_demo_dataset(tmp_path / "demo", num_volumes=7, seed=1)  # other parameters -> replaced
    assert '"seed": 1' in paths["manifest"].read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"mine exists and is not a demo dataset folder"):
        generate_demo_dataset(tmp_path / "mine", num_volumes=7)
    with pytest.raises(ValueError, match="num_volumes must be an integer >= 7"):
        generate_demo_dataset(tmp_path / "x", num_volumes=3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", num_volumes=40, seed=0)


def test_demo_format_and_builder(demo):
    header = demo["annotations_csv"].read_text().splitlines()[0]
    assert header == "file,slice,study_level,x,y,width,height,label"
    stems = demo["file_list_csv"].read_text().split()
    assert len(stems) == 40 and stems[0] == "file_brain_AXT1_DEMO_0000"
    img = nib.load(demo["images_dir"] / f"{stems[0]}{DEMO_SUFFIX}")
    assert img.shape == (96, 96, 16) and img.get_data_dtype() == np.int16
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.header.get_zooms(), (2.2, 2.2, 5.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown label in the demo CSV
        res = build_fastmri_datalist(
            demo["annotations_csv"], demo["file_list_csv"], demo["images_dir"], suffix=DEMO_SUFFIX
        )
    assert len(res.items) == 120
    for cat in FASTMRI_BRAIN_CATEGORIES:
        assert res.counts[cat]["total"] >= 4, cat  # enough positives on the default slices for 4-shot
    assert res.counts["normal"]["total"] >= 24
    split = select_k_shot(res.items, 4, FASTMRI_BRAIN_CATEGORIES, seed=0)
    assert len(split.remaining) > 0
    # every labelled volume shows each of its slice-level categories on at least one default slice
    rows = [r.split(",") for r in demo["annotations_csv"].read_text().splitlines()[1:]]
    for stem in {r[0] for r in rows if r[7] in FASTMRI_BRAIN_CATEGORIES}:
        cats = {r[7] for r in rows if r[0] == stem and r[7] in FASTMRI_BRAIN_CATEGORIES}
        on_default = {
            c for it in res.items if it["file"] == stem for c, v in zip(FASTMRI_BRAIN_CATEGORIES, it["label"]) if v
        }
        assert cats == on_default, stem


def test_demo_signs_visible_inside_boxes(demo):
    res = build_fastmri_datalist(demo["annotations_csv"], demo["file_list_csv"], demo["images_dir"], suffix=DEMO_SUFFIX)
    checked = {"Nonspecific lesion": 0, "Enlarged ventricles": 0, "Posttreatment change": 0}
    for it in res.items:
        for box in res.boxes_for(it["file"], it["slice"]):
            if box["label"] not in checked:
                continue
            img = LoadSlices("axial", indices=[it["slice"]])(it["image"])[0][0].numpy()
            inside = img[box["y"] : box["y"] + box["height"], box["x"] : box["x"] + box["width"]]
            outside = img.copy()
            outside[box["y"] : box["y"] + box["height"], box["x"] : box["x"] + box["width"]] = np.nan
            head = outside[outside > 100]  # foreground (brain and scalp) outside the box
            brain = np.percentile(head, 95)
            if box["label"] == "Nonspecific lesion":
                assert inside.max() > 1.15 * brain, it["file"]
            else:  # dark CSF-like cavity / ventricles
                assert inside.min() < 0.25 * brain, it["file"]
            checked[box["label"]] += 1
    assert all(n > 0 for n in checked.values()), checked


def test_demo_training_pipeline_batches(demo):
    import torch
    from monai.data import DataLoader, Dataset, list_data_collate
    from monai.transforms import Compose, EnsureTyped

    from sdmad_monai.transforms import LoadSlicesd, clip_slice_transforms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = build_fastmri_datalist(
            demo["annotations_csv"], demo["file_list_csv"], demo["images_dir"], suffix=DEMO_SUFFIX
        )
    items = [{"image": it["image"], "label": it["label"], "slice": it["slice"]} for it in res.items[:6]]
    chain = Compose(
        [
            LoadSlicesd("image", index_key="slice"),
            clip_slice_transforms("image", image_size=64),
            EnsureTyped("label", data_type="tensor", dtype=torch.float32),
        ]
    )
    batch = next(iter(DataLoader(Dataset(items, chain), batch_size=6, collate_fn=list_data_collate)))
    assert tuple(batch["image"].shape) == (6, 3, 64, 64)
    assert torch.equal(batch["label"], torch.tensor([it["label"] for it in items], dtype=torch.float32))
    assert batch["image"].meta["slice_index"].tolist() == [it["slice"] for it in items]
    assert torch.isfinite(batch["image"]).all()
    # one volume, several slices per item: a list of dicts flattened by list_data_collate
    multi = Compose([LoadSlicesd("image", indices=[0, 5, 10]), clip_slice_transforms("image", image_size=32)])
    batch = next(iter(DataLoader(Dataset(items[:2], multi), batch_size=2, collate_fn=list_data_collate)))
    assert tuple(batch["image"].shape) == (6, 3, 32, 32)
