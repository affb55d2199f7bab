"""Tests for 3D anomaly-map volumes: inverse slice mapping, resize undo, NIfTI + sidecar writing."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from sdmad_monai.anomaly_volume import (
    anomaly_volume,
    format_slice_ranges,
    undo_resize_to_square,
    write_anomaly_volume,
)
from sdmad_monai.transforms import (
    ArrayVolumeSource,
    ResizeToSquare,
    extract_slices_from_source,
)
from sdmad_monai.transforms.slices import slices_to_volume

SHAPE = (5, 6, 7)
# LPS-ish: array axes run towards Left, Posterior, Superior (RAS x and y flipped)
LPS = np.array([[-1.0, 0, 0, 4], [0, -1.2, 0, 5], [0, 0, 2.0, -3], [0, 0, 0, 1]])
# sagittal acquisition: array dim 0 runs Anterior->Posterior (-y), dim 1 Superior->Inferior (-z), dim 2 Left->Right (+x)
SAGITTAL = np.array([[0, 0, 1.5, -2], [-1.0, 0, 0, 3], [0, -1.1, 0, 7], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [LPS, SAGITTAL])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_slices_to_volume_inverts_extraction(affine, axis):
    volume = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    source = ArrayVolumeSource(volume, affine)
    slices = extract_slices_from_source(source, axis, indices=[0, 2])
    planes = np.stack([s.numpy()[0] for s in slices])
    rebuilt = slices_to_volume(planes, [0, 2], affine, SHAPE, axis)
    back = extract_slices_from_source(ArrayVolumeSource(rebuilt, affine), axis)
    for k, plane in enumerate(back):
        expected = planes[[0, 2].index(k)] if k in (0, 2) else np.zeros_like(plane.numpy()[0])
        np.testing.assert_array_equal(plane.numpy()[0], expected)


@pytest.mark.parametrize("affine", [LPS, SAGITTAL])
def test_hot_pixel_lands_on_the_voxel_under_it(affine):
    """A map value at display (row, col) of slice k lands on the voxel whose world position the slice affine gives."""
    source = ArrayVolumeSource(np.zeros(SHAPE, np.float32), affine)
    k, row, col = 1, 2, 3
    meta_slice = extract_slices_from_source(source, "axial", indices=[k])[0]
    rows, cols = meta_slice.meta["spatial_shape"]
    plane = torch.zeros(1, 1, rows, cols)
    plane[0, 0, row, col] = 1.0
    size = 2 * max(rows, cols)  # integer scale: the resize is exactly invertible
    square = ResizeToSquare(size, mode="nearest")(plane)[:, 0]  # [1, S, S] as the detector sees the slice
    volume = anomaly_volume(square, [k], (rows, cols), affine, SHAPE, "axial")
    world = meta_slice.affine.numpy() @ np.array([row, col, 0, 1.0])
    expected = tuple(int(v) for v in np.round(np.linalg.inv(affine) @ world)[:3])
    assert volume[expected] == pytest.approx(1.0)
    assert np.count_nonzero(volume) == 1


def test_undo_resize_to_square_non_square():
    x = torch.rand(1, 1, 6, 9)
    square = ResizeToSquare(18, mode="nearest")(x)[:, 0]
    assert torch.allclose(undo_resize_to_square(square, (6, 9), mode="nearest"), x[:, 0])
    with pytest.raises(ValueError, match="square maps"):
        undo_resize_to_square(torch.zeros(1, 4, 5), (4, 5))


def test_slices_to_volume_errors():
    with pytest.raises(ValueError, match="display size"):
        slices_to_volume(np.zeros((1, 3, 3)), [0], LPS, SHAPE, "axial")
    with pytest.raises(ValueError, match="outside"):
        slices_to_volume(np.zeros((1, 6, 5)), [9], LPS, SHAPE, "axial")


def test_write_anomaly_volume(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    source_image = nib.Nifti1Image(np.zeros(SHAPE, np.float32), SAGITTAL)
    source_image.set_qform(SAGITTAL, code=1)
    source_image.set_sform(SAGITTAL, code=2)
    nib.save(source_image, scan)
    volume = np.zeros(SHAPE, np.float32)
    volume[:, :, 3] = 0.5
    paths = write_anomaly_volume(
        tmp_path / "out" / "scan_map.nii.gz",
        volume,
        SAGITTAL,
        [3, 0, 1, 2, 6],
        "sagittal",
        source=str(scan),
        info={"model": {"backbone": "tiny"}},
    )
    image = nib.load(paths["nifti"])
    np.testing.assert_allclose(image.affine, SAGITTAL)
    assert image.shape == SHAPE and np.asarray(image.dataobj).max() == pytest.approx(0.5)
    assert int(image.header["sform_code"]) == 2 and int(image.header["qform_code"]) == 1  # copied from the scan
    assert image.header["descrip"].tobytes().rstrip(b"\0").decode() == "SD-MAD anomaly map; sagittal slices 0-3,6"
    extension = json.loads(image.header.extensions[0].get_content())
    sidecar = json.loads(paths["json"].read_text())
    assert extension["processed_slices"] == sidecar["processed_slices"] == [0, 1, 2, 3, 6]
    assert sidecar["nifti"] == "scan_map.nii.gz" and sidecar["model"] == {"backbone": "tiny"}
    assert not [p for p in paths["nifti"].parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_format_slice_ranges():
    assert format_slice_ranges([7, 0, 1, 2, 5, 8]) == "0-2,5,7-8"
    assert format_slice_ranges([4]) == "4"
