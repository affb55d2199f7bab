"""Tests for volume readers and the lazy slice path (sdmad_monai.transforms.io)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImaged

from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.transforms import (
    ExtractSlices,
    ExtractSlicesd,
    FastMRIH5Reader,
    LoadSlices,
    LoadSlicesd,
    LoadVolumed,
    load_volume,
    validate_dicom_series,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
PYDICOM_MR2 = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892003" / "MR2"


def write_nifti_as_dicom(img: nib.Nifti1Image, folder: Path) -> None:
    """Write a NIfTI volume as a DICOM series with its exact geometry, file names shuffled (readers must sort by
    position, not by name)."""
    paths = write_dicom_series(
        np.asarray(img.dataobj).astype(np.int16),
        folder,
        affine=img.affine,
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        attributes={"PatientName": "Test^Anatomical", "PatientID": "nib-anatomical"},
    )
    order = np.random.default_rng(0).permutation(len(paths))
    staged = [p.rename(p.with_suffix(".tmp")) for p in paths]
    for k, path in enumerate(staged):
        path.rename(folder / f"im{order[k]:03d}.dcm")


@pytest.fixture(scope="module")
def anatomical_dicom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_nifti_as_dicom(nib.load(NIB_DATA / "anatomical.nii"), folder)
    return folder


# ----------------------------------------------------------------------------------------------- NIfTI lazy == full
@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii"])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_lazy_equals_full_nifti(name, axis):
    path = str(NIB_DATA / name)
    full = ExtractSlices(axis, positions=[0.0, 0.5, 1.0])(load_volume(path))
    lazy = LoadSlices(axis, positions=[0.0, 0.5, 1.0])(path)
    assert len(full) == len(lazy) == 3
    for a, b in zip(full, lazy):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a.as_tensor(), b.as_tensor())
        assert torch.equal(a.affine, b.affine)
        for key in ("filename_or_obj", "slice_index", "slice_array_index", "slice_axis", "num_slices", "pixel_spacing"):
            assert a.meta[key] == b.meta[key]


def test_4d_nifti_with_several_frames_is_refused_one_frame_is_read(tmp_path):
    """A time series is not an RGB image: 3 frames used to be scored as colour channels."""
    path = str(NIB_DATA / "example4d.nii.gz")
    for reader in (LoadSlices("axial", indices=[0]), load_volume):
        with pytest.raises(ValueError, match=r"example4d.nii.gz has 2 frames along its 4th \(time\) dimension"):
            reader(path)
    single = tmp_path / "one_frame.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., :1], image.affine), single)
    s = LoadSlices("axial", indices=[0])(str(single))[0]
    assert tuple(s.shape) == (1, 96, 128)  # rows = A (96), columns = R (128)


def test_header_declaring_a_huge_volume_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)), path)
    monkeypatch.setenv("SDMAD_MAX_VOLUME_BYTES", str(64**3 * 4 - 1))
    with pytest.raises(
        ValueError, match=r"bomb.nii.gz: its header declares shape \(64, 64, 64\).*SDMAD_MAX_VOLUME_BYTES"
    ):
        LoadSlices("axial", indices=[0])(str(path))
    forged = tmp_path / "forged.nii"  # 2000^3 voxels declared in a file of a few hundred bytes
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    forged.write_bytes(header.binaryblock + b"\0" * 4)
    monkeypatch.delenv("SDMAD_MAX_VOLUME_BYTES")
    with pytest.raises(ValueError, match="over the 2,048 MiB limit"):
        LoadSlices("axial", indices=[0])(str(forged))


def test_lazy_nifti_reads_only_requested_slices(monkeypatch):
    calls = []
    original = nib.arrayproxy.ArrayProxy.__getitem__

    def spy(self, key):
        calls.append(key)
        return original(self, key)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the whole volume was decoded")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", spy)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    out = LoadSlices("axial", indices=[0, 5, 10])(str(NIB_DATA / "anatomical.nii"))
    assert len(out) == 3 and len(calls) == 3
    assert all(isinstance(k[2], int) for k in calls)  # one z index per read
    with pytest.raises(ValueError, match="the whole volume was decoded"):  # the full path does decode it all
        load_volume(NIB_DATA / "anatomical.nii")


def test_dict_lazy_equals_load_then_extract():
    data = {"image": str(NIB_DATA / "anatomical.nii"), "label": [0.0, 1.0]}
    lazy = LoadSlicesd("image", indices=[0, 5, 10])(data)
    full = ExtractSlicesd("image", indices=[0, 5, 10])(LoadVolumed("image")(data))
    assert len(lazy) == len(full) == 3
    for a, b in zip(lazy, full):
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor()) and a["label"] == [0.0, 1.0]
    stacked = LoadSlicesd("image", indices=[0, 5, 10], stack=True)(data)
    assert tuple(stacked["image"].shape) == (3, 1, 41, 33)


# ------------------------------------------------------------------------------------------------------ DICOM series
def test_dicom_series_matches_nifti(anatomical_dicom):
    nii = str(NIB_DATA / "anatomical.nii")
    for axis in ("axial", "coronal", "sagittal"):
        from_nii = LoadSlices(axis, stride=4)(nii)
        lazy_dcm = LoadSlices(axis, stride=4)(str(anatomical_dicom))
        full_dcm = ExtractSlices(axis, stride=4)(load_volume(anatomical_dicom))  # ITK path
        assert len(from_nii) == len(lazy_dcm) == len(full_dcm)
        for a, b, c in zip(from_nii, lazy_dcm, full_dcm):
            assert torch.equal(a.as_tensor(), b.as_tensor())
            assert torch.equal(a.as_tensor(), c.as_tensor())
            assert np.allclose(a.meta["pixel_spacing"], c.meta["pixel_spacing"])
            assert torch.allclose(a.affine, c.affine, atol=1e-3)


def test_dicom_lazy_reads_only_needed_files(anatomical_dicom, monkeypatch):
    reads = []
    original = pydicom.dcmread

    def spy(fp, *args, **kwargs):
        if not kwargs.get("stop_before_pixels", False):
            reads.append(Path(fp).name)
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    LoadSlices("axial", indices=[0, 5, 10])(str(anatomical_dicom))
    assert len(reads) == 3


def test_dicom_two_series_error():
    # pydicom ships this folder: 7 files from 3 series
    with pytest.raises(ValueError, match=r"MR2 holds 3 DICOM series .*expected exactly one series"):
        validate_dicom_series(PYDICOM_MR2)
    with pytest.raises(ValueError, match="holds 3 DICOM series"):
        load_volume(PYDICOM_MR2)


def test_dicom_missing_slice_error(anatomical_dicom, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(anatomical_dicom, folder)
    paths, _ = validate_dicom_series(folder)
    assert len(paths) == 25
    Path(paths[12]).unlink()
    with pytest.raises(
        ValueError, match=r"missing slice\(s\) in the series - the position jumps by 4\.000 mm .* expected 2\.000 mm"
    ):
        LoadSlices("axial", indices=[0])(str(folder))


def test_dicom_multiframe_rejected(anatomical_dicom, tmp_path):
    folder = tmp_path / "multi"
    shutil.copytree(anatomical_dicom, folder)
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.NumberOfFrames = 2
    ds.save_as(first)
    with pytest.raises(ValueError, match=rf"\['{first.name}'\] are multi-frame DICOM files"):
        validate_dicom_series(folder)


def test_dicom_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="contains no DICOM file"):
        load_volume(tmp_path)


# ------------------------------------------------------------------------------------------------------ fastMRI HDF5
def _write_h5(path: Path, with_header: bool = False) -> np.ndarray:
    arr = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=arr)
        f.create_dataset("kspace", data=np.zeros((4, 2, 2), np.complex64))
        if with_header:
            xml = (
                '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
                "<reconSpace><matrixSize><x>5</x><y>6</y><z>1</z></matrixSize>"
                "<fieldOfView_mm><x>10.0</x><y>18.0</y><z>5.0</z></fieldOfView_mm></reconSpace>"
                "</encoding></ismrmrdHeader>"
            )
            f.create_dataset("ismrmrd_header", data=xml.encode())
    return arr


def test_h5_reader_with_loadimaged(tmp_path):
    path = tmp_path / "file_brain_AXT1_000.h5"
    arr = _write_h5(path, with_header=True)
    reader = FastMRIH5Reader()
    assert reader.verify_suffix(str(path)) and reader.verify_suffix("a.HDF5") and not reader.verify_suffix("a.nii")
    d = LoadImaged("image", reader=FastMRIH5Reader(), ensure_channel_first=True, image_only=True)({"image": str(path)})
    assert tuple(d["image"].shape) == (1, 4, 6, 5)
    assert torch.equal(d["image"][0], torch.from_numpy(arr))
    # the synthetic affine: axial slice i = stored slice i, 2D image unchanged
    slices = ExtractSlices("axial", indices=[0, 2])(d["image"])
    assert torch.equal(slices[0][0], torch.from_numpy(arr[0]))
    assert torch.equal(slices[1][0], torch.from_numpy(arr[2]))
    assert slices[0].meta["pixel_spacing"] == (3.0, 2.0)  # 18 mm / 6 rows, 10 mm / 5 columns


def test_h5_lazy_equals_full_and_reads_slices_only(tmp_path, monkeypatch):
    path = tmp_path / "vol.h5"
    arr = _write_h5(path)
    full = ExtractSlices("axial", indices=[1, 3])(load_volume(path))
    keys = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        keys.append(key)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    lazy = LoadSlices("axial", indices=[1, 3])(str(path))
    assert keys == [(1, slice(None), slice(None)), (3, slice(None), slice(None))]
    for a, b in zip(full, lazy):
        assert torch.equal(a.as_tensor(), b.as_tensor())
    assert torch.equal(lazy[1][0], torch.from_numpy(arr[3]))
    assert lazy[0].meta["pixel_spacing"] == (1.0, 1.0)  # no ISMRMRD header -> unit spacing


def test_h5_without_reconstruction_rss(tmp_path):
    path = tmp_path / "kspace_only.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"kspace_only\.h5 has no dataset 'reconstruction_rss' \(found \['kspace'\]\)"):
        LoadSlices(indices=[0])(str(path))
    with pytest.raises(ValueError, match="has no dataset 'reconstruction_rss'"):
        load_volume(path)


def test_h5_index_outside_volume(tmp_path):
    path = tmp_path / "short.h5"
    _write_h5(path)
    with pytest.raises(ValueError, match=r"slice index 5 is outside .*short\.h5: the axial axis has 4 slices"):
        LoadSlices(indices=[0, 5, 10])(str(path))


# ------------------------------------------------------------------------------------------------------ bad NIfTI
def test_corrupt_nifti(tmp_path):
    path = tmp_path / "garbage.nii"
    path.write_bytes(b"this is not a nifti file" * 20)
    with pytest.raises(ValueError, match=r"garbage\.nii is not a valid NIfTI file"):
        load_volume(path)
    with pytest.raises(ValueError, match="is not a valid NIfTI file"):
        LoadSlices(indices=[0])(str(path))


def test_truncated_nifti(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.eye(4))
    path = tmp_path / "cut.nii"
    nib.save(img, path)
    full = path.read_bytes()
    assert len(full) == 352 + 3 * 4 * 5 * 2
    path.write_bytes(full[:-50])
    with pytest.raises(ValueError, match=r"cut\.nii is truncated: the header needs 472 bytes, the file has 422"):
        load_volume(path)
    big = nib.Nifti1Image(np.random.default_rng(0).integers(0, 1000, (20, 20, 20)).astype(np.int16), np.eye(4))
    gz = tmp_path / "cut.nii.gz"
    packed = gzip.compress(big.to_bytes())
    gz.write_bytes(packed[: len(packed) // 2])  # header intact, image data cut
    with pytest.raises(
        ValueError, match=r"cannot decode the image data of NIfTI file .*cut\.nii\.gz \(truncated or corrupt\?\)"
    ):
        load_volume(gz)
    with pytest.raises(ValueError, match=r"cannot decode the image data of NIfTI file"):
        LoadSlices(indices=[19])(str(gz))  # the last slice lies in the missing half


def test_2d_nifti_rejected(tmp_path):
    for shape in [(8, 8), (8, 8, 1)]:
        path = tmp_path / f"flat{len(shape)}.nii"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
        with pytest.raises(ValueError, match=rf"flat{len(shape)}\.nii holds a 2D image of shape .*a 3D volume"):
            load_volume(path)


def test_unsupported_and_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"img\.png: unsupported image type"):
        LoadSlices()(str(tmp_path / "img.png"))


def test_load_slices_closes_the_h5_file(tmp_path):
    path = tmp_path / "closed.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=np.random.default_rng(0).random((4, 8, 8), dtype=np.float32))
    slices = LoadSlices("axial", stride=1)(path)
    assert len(slices) == 4
    with h5py.File(path, "w"):  # h5py refuses to truncate a file that is still open
        pass
