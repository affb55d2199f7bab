"""Tests for affine-aware slice extraction (sdmad_monai.transforms.slices)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from sdmad_monai.transforms import (
    ExtractSlices,
    ExtractSlicesd,
    load_volume,
    resolve_slice_indices,
    slice_geometry,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
MNI_FILE = (
    Path(importlib.util.find_spec("nilearn").origin).parent
    / "datasets"
    / "data"
    / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)


def _coded_volume(affine=None, name="coded.nii"):
    """arr[x, y, z] = 100 x + 10 y + z, shape (3, 4, 5), RAS diagonal affine unless given."""
    x, y, z = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    arr = (100 * x + 10 * y + z).astype(np.float32)
    aff = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    return MetaTensor(torch.from_numpy(arr)[None], affine=torch.as_tensor(aff), meta={"filename_or_obj": name})


def _reoriented(vol: MetaTensor, ornt_to) -> MetaTensor:
    """Same anatomy stored with another axis order/flips and the matching affine (via nibabel)."""
    img = nib.Nifti1Image(vol[0].numpy(), vol.affine.numpy())
    cur = nib.orientations.io_orientation(img.affine)
    new = img.as_reoriented(nib.orientations.ornt_transform(cur, ornt_to))
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(new.get_fdata(dtype=np.float32)))[None],
        affine=torch.as_tensor(new.affine),
        meta={"filename_or_obj": "reoriented"},
    )


def test_axial_slice_hand_values_display_orientation():
    # slice 0 = lowest z; rows anterior->posterior (y = 3 - r), columns right->left (x = 2 - c)
    out = ExtractSlices("axial", indices=[0, 4])(_coded_volume())
    assert len(out) == 2
    s0 = out[0][0].numpy()
    assert s0.shape == (4, 3)
    assert s0[0, 0] == 230.0  # x=2 (right), y=3 (anterior), z=0
    assert s0[3, 2] == 0.0  # x=0, y=0, z=0
    assert s0[1, 0] == 220.0
    assert out[1][0].numpy()[0, 0] == 234.0
    assert out[1].meta["slice_index"] == 4 and out[1].meta["slice_axis"] == "axial"
    assert out[1].meta["num_slices"] == 5 and out[1].meta["filename_or_obj"] == "coded.nii"


def test_coronal_and_sagittal_hand_values():
    cor = ExtractSlices("coronal", indices=[1])(_coded_volume())[0][0].numpy()
    # coronal slice 1 = y=1; rows superior->inferior (z = 4 - r); columns right->left (x = 2 - c)
    assert cor.shape == (5, 3)
    assert cor[0, 0] == 200 + 10 + 4
    assert cor[4, 2] == 0 + 10 + 0
    sag = ExtractSlices("sagittal", indices=[0])(_coded_volume())[0][0].numpy()
    # sagittal slice 0 = most left = x=0; rows superior->inferior; columns anterior->posterior (y = 3 - c)
    assert sag.shape == (5, 4)
    assert sag[0, 0] == 0 + 30 + 4
    assert sag[4, 3] == 0.0


def test_flipped_volume_slice_zero_is_still_inferior():
    # z axis stored top-down: the affine says so, slice 0 must still be the lowest world z
    aff = np.diag([1.0, 1.0, -1.0, 1.0])
    aff[2, 3] = 4.0
    s = ExtractSlices("axial", indices=[0])(_coded_volume(aff))[0]
    assert s[0].numpy()[0, 0] == 234.0  # array z=4 is world z=0, the lowest
    assert s.meta["slice_array_index"] == 4


@pytest.mark.parametrize("target", [(("L", "P", "S")), (("S", "R", "A")), (("A", "I", "L"))])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_reoriented_copy_gives_identical_slices(target, axis):
    vol = _coded_volume(np.diag([2.0, 1.5, 3.0, 1.0]))
    other = _reoriented(vol, nib.orientations.axcodes2ornt(target))
    assert nib.aff2axcodes(other.affine.numpy()) == target
    a = ExtractSlices(axis)(vol)
    b = ExtractSlices(axis)(other)
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert torch.equal(sa, sb)
        assert sa.meta["pixel_spacing"] == sb.meta["pixel_spacing"]
        assert torch.allclose(sa.affine, sb.affine)


def test_pixel_spacing_and_slice_affine():
    vol = _coded_volume(np.diag([0.5, 0.8, 3.0, 1.0]))
    s = ExtractSlices("axial", indices=[2])(vol)[0]
    assert s.meta["pixel_spacing"] == (0.8, 0.5)  # (row = A spacing, column = R spacing)
    # pixel (r, c) -> world: x = 0.5 (2 - c), y = 0.8 (3 - r), z = 3 * 2
    aff = s.affine.numpy()
    assert np.allclose(aff @ [0, 0, 0, 1], [1.0, 2.4, 6.0, 1.0])
    assert np.allclose(aff @ [3, 2, 0, 1], [0.0, 0.0, 6.0, 1.0])


def test_nibabel_anatomical_canonical_vs_original():
    img = nib.load(NIB_DATA / "anatomical.nii")  # stored LAS
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    can = nib.as_closest_canonical(img)
    v1 = load_volume(NIB_DATA / "anatomical.nii")
    v2 = MetaTensor(
        torch.from_numpy(np.asarray(can.dataobj).astype(np.float32))[None], affine=torch.as_tensor(can.affine)
    )
    for axis in ("axial", "coronal", "sagittal"):
        for a, b in zip(ExtractSlices(axis, stride=3)(v1), ExtractSlices(axis, stride=3)(v2)):
            assert torch.equal(a, b)


def test_mni152_template_reoriented_copy(tmp_path):
    vol = load_volume(MNI_FILE)
    assert tuple(vol.shape) == (1, 197, 233, 189)
    img = nib.Nifti1Image(vol[0].numpy(), vol.affine.numpy())
    ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt("PIR"))
    nib.save(img.as_reoriented(ornt), tmp_path / "mni_pir.nii")
    other = load_volume(tmp_path / "mni_pir.nii")
    assert nib.aff2axcodes(other.affine.numpy()) == ("P", "I", "R")
    a = ExtractSlices("axial", positions=[0.5])(vol)[0]
    b = ExtractSlices("axial", positions=[0.5])(other)[0]
    assert a.meta["slice_index"] == 94 and tuple(a.shape) == (1, 233, 197)
    assert torch.equal(a, b)
    # the middle axial slice of a brain template has brain in its centre and air in its corner
    assert float(a[0, 116, 98]) > 0 and float(a[0, 0, 0]) == 0


def test_index_policies():
    assert resolve_slice_indices(5, positions=[0.0, 0.5, 1.0]) == [0, 2, 4]
    assert resolve_slice_indices(16, positions=[0.5]) == [8]  # floor(7.5 + 0.5)
    assert resolve_slice_indices(5, stride=2) == [0, 2, 4]
    assert resolve_slice_indices(3) == [0, 1, 2]
    assert resolve_slice_indices(16, indices=(0, 5, 10)) == [0, 5, 10]


def test_index_outside_volume_names_file_axis_and_count():
    with pytest.raises(ValueError, match=r"slice index 5 is outside coded\.nii: the axial axis has 5 slices"):
        ExtractSlices("axial", indices=[0, 5])(_coded_volume())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"indices": [0], "positions": [0.5]}, "choose one slice policy"),
        ({"stride": 0}, "stride must be a positive integer"),
        ({"axis": "oblique"}, "unknown slice axis 'oblique'"),
    ],
)
def test_bad_policies(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractSlices(**kwargs)


def test_bad_position_and_2d_image():
    with pytest.raises(ValueError, match=r"relative slice position 1.5 is outside \[0, 1\]"):
        ExtractSlices(positions=[1.5])(_coded_volume())
    img2d = MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "flat.png", "spatial_shape": (8, 8)})
    with pytest.raises(ValueError, match=r"flat\.png: a 2D image"):
        ExtractSlices()(img2d)
    with pytest.raises(ValueError, match="expected a 3D volume"):
        slice_geometry(np.eye(4), (8, 8), "axial", source="x.nii")


def test_dict_items_and_stack_modes():
    vol = _coded_volume()
    data = {"image": vol, "mask": _coded_volume(), "label": [1.0, 0.0], "file": "coded"}
    items = ExtractSlicesd(["image", "mask"], indices=[1, 3])(data)
    assert isinstance(items, list) and len(items) == 2
    assert items[1]["label"] == [1.0, 0.0] and items[1]["file"] == "coded"
    assert tuple(items[1]["image"].shape) == (1, 4, 3)
    assert items[1]["image"].meta["slice_index"] == 3
    assert float(items[1]["image"][0, 0, 0]) == 233.0

    stacked = ExtractSlicesd("image", indices=[1, 3], stack=True)(data)
    assert tuple(stacked["image"].shape) == (2, 1, 4, 3)
    assert stacked["image"].meta["slice_indices"] == [1, 3]
    assert [m["slice_index"] for m in stacked["image_slice_meta"]] == [1, 3]
    assert torch.equal(stacked["image"][1], items[1]["image"].as_tensor())


def test_index_key_reads_indices_from_data():
    data = {"image": _coded_volume(), "slice": 2, "label": [1.0]}
    one = ExtractSlicesd("image", index_key="slice")(data)
    assert isinstance(one, dict) and tuple(one["image"].shape) == (1, 4, 3)
    assert one["image"].meta["slice_index"] == 2 and float(one["image"][0, 0, 0]) == 232.0
    many = ExtractSlicesd("image", index_key="slice")({**data, "slice": [0, 4]})
    assert [it["image"].meta["slice_index"] for it in many] == [0, 4]
    with pytest.raises(KeyError, match="slice index key 'slice' not found"):
        ExtractSlicesd("image", index_key="slice")({"image": _coded_volume()})
    with pytest.raises(ValueError, match="do not also pass indices"):
        ExtractSlicesd("image", indices=[0], index_key="slice")
    with pytest.raises(ValueError, match=r"slice index 7 is outside coded\.nii"):
        ExtractSlicesd("image", index_key="slice")({**data, "slice": 7})
