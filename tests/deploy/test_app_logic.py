"""Operator logic of the MONAI Deploy app (sdmad_monai.deploy.app_logic), without the SDK.

The SDK objects are replaced by small stand-ins with the same methods (a study's ``get_all_series``, a series'
``get_sop_instances``, an instance's ``get_native_sop_instance``), and the SDK's series-to-volume conversion by
``sdk_like_conversion``, which follows DICOMSeriesToVolumeOperator 4.0.0 line by line (array ``[D, H, W]`` sorted along
the slice normal, its ``dicom_affine_transform`` with the pixel spacings as the SDK uses them).
tests/bundle/test_deploy_app.py checks the same against the real SDK.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from sdmad_monai.deploy import (
    NoMatchingSeriesError,
    SeriesProcessingError,
    load_series_rules,
    process_dicom_folder,
    read_sr_findings,
)
from sdmad_monai.deploy.app_logic import (
    DeployAppOptions,
    SeriesVolume,
    image_to_metatensor,
    infer_series,
    infer_series_volumes,
    resolve_checkpoint,
    sdk_image_affine,
    select_study_series,
    series_volumes,
    write_inference_outcome,
)
from sdmad_monai.deploy.codes import load_finding_codes
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.transforms import load_volume

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

STUDY = "1.2.826.0.1.3680043.8.498.30"
AXIAL, CORONAL, SAGITTAL, BROKEN = (f"1.2.826.0.1.3680043.8.498.3{i}" for i in (1, 2, 3, 4))


# ------------------------------------------------------------------------------------------- SDK stand-ins
class Instance:
    def __init__(self, ds):
        self.ds = ds

    def get_native_sop_instance(self):
        return self.ds


class Series:
    def __init__(self, datasets):
        self.SeriesInstanceUID = str(datasets[0].SeriesInstanceUID)
        self.instances = [Instance(ds) for ds in datasets]

    def get_sop_instances(self):
        return self.instances


class Study:
    def __init__(self, *series):
        self.series = list(series)

    def get_all_series(self):
        return self.series


def read_series(folder):
    """Full datasets (as the SDK loader reads them), in file-name order, i.e. not sorted by position."""
    return [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"), reverse=True)]


def sdk_like_conversion(study, series):
    """DICOMSeriesToVolumeOperator.convert_to_image, reduced to what it computes for a monochrome series."""
    del study
    iop = [float(v) for v in series.instances[0].ds.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    series.instances.sort(key=lambda s: float(normal @ np.asarray(s.ds.ImagePositionPatient, dtype=float)))
    first, last, n = series.instances[0].ds, series.instances[-1].ds, len(series.instances)
    vr, vc = (float(v) for v in first.PixelSpacing)
    p1, pn = np.asarray(first.ImagePositionPatient, float), np.asarray(last.ImagePositionPatient, float)
    dicom = np.eye(4)
    dicom[:3, 0] = np.asarray(iop[:3]) * vr  # the SDK's scaling (swapped for non-square pixels)
    dicom[:3, 1] = np.asarray(iop[3:]) * vc
    dicom[:3, 2] = (pn - p1) / (n - 1)
    dicom[:3, 3] = p1
    array = np.stack([s.ds.pixel_array for s in series.instances])
    metadata = {
        "SeriesInstanceUID": series.SeriesInstanceUID,
        "row_pixel_spacing": vr,
        "col_pixel_spacing": vc,
        "row_direction_cosine": iop[:3],
        "col_direction_cosine": iop[3:],
        "dicom_affine_transform": dicom,
        "nifti_affine_transform": np.diag([-1.0, -1.0, 1.0, 1.0]) @ dicom,
        "space": "RAS",
    }
    return array, metadata


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny")


def volume(seed=0, shape=(24, 20, 12)):
    return np.random.default_rng(seed).uniform(0, 1000, shape)


# ------------------------------------------------------------------------------------------------- options
def test_options_defaults_environment_and_command_line(tmp_path):
    options, rest = DeployAppOptions.parse(["app", "-i", "in", "-o", "out", "-m", "model.pt"], environ={})
    assert options == DeployAppOptions() and rest == ["app", "-i", "in", "-o", "out", "-m", "model.pt"]
    assert options.slice_indices == [0, 5, 10] and options.series_rules() == load_series_rules()
    assert options.finding_code_map() == load_finding_codes()

    rules = tmp_path / "site.json"
    rules.write_text('{"modalities": ["MR"], "orientations": ["axial", "coronal"]}')
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"categories": {"Glioma": {"finding": {
        "scheme": "SCT", "value": "52988006", "meaning": "Lesion"}}}}))  # fmt: skip
    environ = {
        "SDMAD_SERIES_RULES": str(rules),
        "SDMAD_SLICES": "all",
        "SDMAD_BATCH_SIZE": "4",
        "SDMAD_ALLOW_NO_MATCH": "yes",
        "SDMAD_AXIS": "coronal",
        "SDMAD_FINDING_CODES": str(codes),
    }
    options, rest = DeployAppOptions.parse(["app", "-i", "in", "--slices", "2,3", "--device", "cpu"], environ)
    assert rest == ["app", "-i", "in"]
    assert (options.rules, options.slices, options.batch_size, options.allow_no_match, options.axis) == (
        str(rules),
        "2,3",
        4,
        True,
        "coronal",
    )
    assert options.slice_indices == [2, 3] and options.torch_device() == "cpu"
    assert options.series_rules().orientations == ("axial", "coronal")
    assert list(options.finding_code_map().categories) == ["Glioma"]
    assert DeployAppOptions.parse(["app", "--finding-codes", "x.json"], environ)[0].finding_codes == "x.json"
    assert DeployAppOptions(slices="all").slice_indices is None


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        (["--batch-size", "many"], {}, "--batch-size must be a positive integer, got 'many'"),
        ([], {"SDMAD_BATCH_SIZE": "0"}, "batch_size must be a positive integer, got 0"),
        (["--axis", "oblique"], {}, "axis must be one of"),
        ([], {"SDMAD_SLICES": "a,b"}, "slices must be slice indices"),
        ([], {"SDMAD_ALLOW_NO_MATCH": "maybe"}, "environment variable SDMAD_ALLOW_NO_MATCH must be 1/true/yes"),
    ],
)
def test_options_bad_values(argv, environ, message):
    with pytest.raises(ValueError, match=message):
        DeployAppOptions.parse(["app", *argv], environ)


def test_options_bad_rules_file_names_it(tmp_path):
    rules = tmp_path / "bad.json"
    rules.write_text('{"orientation": ["axial"]}')
    options, _ = DeployAppOptions.parse(["app", "--rules", str(rules)], {})
    with pytest.raises(ValueError, match=rf"{rules} has unknown key\(s\) \['orientation'\]"):
        options.series_rules()
    codes = tmp_path / "codes.json"
    codes.write_text('{"categories": {"Craniotomy": {"finding": {"scheme": "DCM", "value": "1", "meaning": "x"}}}}')
    options, _ = DeployAppOptions.parse(["app", "--finding-codes", str(codes)], {})
    with pytest.raises(ValueError, match=rf"{codes}: category 'Craniotomy' finding: DCM 1 is not a code"):
        options.finding_code_map()


# ----------------------------------------------------------------------------------------------- selection
@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    write_dicom_series(
        volume(0),
        folder / "ax",
        "axial",
        STUDY,
        AXIAL,
        series_description="AX T2",
        attributes={"BodyPartExamined": "BRAIN"},
    )
    write_dicom_series(volume(1), folder / "cor", "coronal", STUDY, CORONAL, series_description="COR T2")
    return folder


def test_select_study_series(study_folder, caplog):
    axial, coronal = Series(read_series(study_folder / "ax")), Series(read_series(study_folder / "cor"))
    study = Study(coronal, axial)
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        selected = select_study_series([study], load_series_rules())
    assert selected == [(study, [axial])]
    assert f"Series {CORONAL} (COR T2) in {study_folder / 'cor'} skipped: orientation is coronal" in caplog.text
    with pytest.raises(
        NoMatchingSeriesError,
        match=rf"No series in /in matches .* Skipped 1 series - {CORONAL}: "
        "orientation is coronal, expected axial",
    ):
        select_study_series([Study(coronal)], load_series_rules(), source="/in")
    with caplog.at_level(logging.WARNING, logger="sdmad_monai.deploy"):
        assert select_study_series([], load_series_rules(), strict=False, source="/in") == []
    assert "No DICOM series found in /in; nothing written." in caplog.text


# ----------------------------------------------------------------------------------------- SDK Image -> MONAI
@pytest.mark.parametrize("orientation", ["axial", "sagittal"])
def test_image_to_metatensor_matches_itk_reader(tmp_path, orientation):
    """Non-square pixels (row spacing 0.7 mm, column spacing 1.3 mm): the array and affine equal MONAI's ITK read
    of the same folder, although the SDK's own affine scales the two in-plane axes the other way round."""
    folder = tmp_path / orientation
    write_dicom_series(volume(2), folder, orientation, STUDY, AXIAL, pixel_spacing=(0.7, 1.3), slice_thickness=2.5)
    series = Series(read_series(folder))
    array, metadata = sdk_like_conversion(None, series)
    assert array.shape == (12, 20, 24)  # [D, H, W]
    tensor = image_to_metatensor(array, metadata, "series")
    reference = load_volume(folder)  # ITK, [1, X, Y, Z]
    assert tensor.shape == reference.shape == (1, 24, 20, 12) and tensor.dtype == torch.float32
    assert torch.equal(tensor.as_tensor(), reference.as_tensor())
    np.testing.assert_allclose(tensor.affine.numpy(), reference.affine.numpy(), atol=1e-5)
    assert np.linalg.norm(tensor.affine[:3, 0]) == pytest.approx(1.3)  # one column = column spacing
    assert not np.allclose(metadata["nifti_affine_transform"], reference.affine.numpy(), atol=1e-3)
    assert tensor.meta["filename_or_obj"] == "series" and tensor.meta["space"] == "RAS"


def test_sdk_image_affine_errors():
    with pytest.raises(ValueError, match=r"one: the SDK image metadata lacks \['dicom_affine_transform'\]"):
        sdk_image_affine(
            {
                "row_direction_cosine": [1, 0, 0],
                "col_direction_cosine": [0, 1, 0],
                "row_pixel_spacing": 1.0,
                "col_pixel_spacing": 1.0,
            },
            "one",
        )
    with pytest.raises(ValueError, match="degenerate affine"):
        sdk_image_affine(
            {
                "row_direction_cosine": [1, 0, 0],
                "col_direction_cosine": [1, 0, 0],
                "row_pixel_spacing": 1.0,
                "col_pixel_spacing": 1.0,
                "dicom_affine_transform": np.eye(4),
            }
        )
    with pytest.raises(ValueError, match=r"expected an SDK image array \[slices, rows, columns\]"):
        image_to_metatensor(np.zeros((4, 4)), {})


# ------------------------------------------------------------------------------------------ volume + inference
def test_series_volumes_checks_headers_before_converting(tmp_path, caplog):
    write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL, series_description="AX T2")
    write_dicom_series(volume(1), tmp_path / "gap", "axial", STUDY, BROKEN, series_description="GAP")
    (tmp_path / "gap" / "IM0006.dcm").unlink()
    good, broken = Series(read_series(tmp_path / "ax")), Series(read_series(tmp_path / "gap"))
    converted = []

    def convert(study, series):
        converted.append(series.SeriesInstanceUID)
        return sdk_like_conversion(study, series)

    with caplog.at_level(logging.ERROR, logger="sdmad_monai.deploy"):
        volumes = series_volumes([(None, broken), (None, good)], convert)
    assert converted == [AXIAL]  # the broken series' pixels are never decoded
    assert volumes[0].array is None and "missing slice(s)" in volumes[0].error
    assert "IM0005.dcm and IM0007.dcm" in volumes[0].error and f"{BROKEN} (GAP)" in caplog.text
    assert volumes[1].error is None and volumes[1].array.shape == (12, 20, 24)
    positions = [float(ds.ImagePositionPatient[2]) for ds in volumes[1].datasets]
    assert positions == sorted(positions)  # in the SDK's (sorted) order, not the loader's


def test_app_path_equals_command_line_path(tmp_path, study_folder, detector):
    """Same folder, same checkpoint: the SR of the app's logic and of process_dicom_folder agree (one path)."""
    study = Study(Series(read_series(study_folder / "cor")), Series(read_series(study_folder / "ax")))
    selected = select_study_series([study], load_series_rules())
    volumes = series_volumes([(s, series) for s, matching in selected for series in matching], sdk_like_conversion)
    outcome = infer_series_volumes(lambda: detector, volumes)
    app_files = write_inference_outcome(outcome, tmp_path / "app")
    cli_files = process_dicom_folder(detector, study_folder, tmp_path / "cli")
    assert (
        [p.name for p in app_files]
        == [p.name for p in cli_files]
        == [f"sdmad_sr_{AXIAL}.dcm", f"sdmad_sr_{AXIAL}.json"]
    )
    app, cli = read_sr_findings(app_files[0]), read_sr_findings(cli_files[0])
    assert app["sop_instance_uid"] == cli["sop_instance_uid"]
    assert app["evidence"] == cli["evidence"] and len(app["evidence"][AXIAL]) == 12
    assert app["algorithm"] == cli["algorithm"]
    for got, want in zip(app["findings"], cli["findings"], strict=True):
        assert (got["label"], got["finding"]) == (want["label"], want["finding"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
    # the processed slices 0, 5, 10 are the sources of every group, as on the command line
    groups = [pydicom.dcmread(f).ContentSequence[-1].ContentSequence[0] for f in (app_files[0], cli_files[0])]
    refs = [
        [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in g.ContentSequence if i.ValueType == "IMAGE"]
        for g in groups
    ]
    assert refs[0] == refs[1] and len(refs[0]) == 3
    findings = outcome.findings[0]
    assert findings.result.slice_indices == [0, 5, 10] and findings.result.source == str(study_folder / "ax")
    assert findings.volume.shape == (1, 24, 20, 12)


def test_failed_series_reported_after_writing_the_others(tmp_path, detector):
    write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL, series_description="AX T2")
    volumes = series_volumes([(None, Series(read_series(tmp_path / "ax")))], sdk_like_conversion)
    volumes.append(SeriesVolume(name=f"{BROKEN} (GAP)", error="missing slice(s) in the series"))
    loads = []
    outcome = infer_series_volumes(lambda: loads.append(1) or detector, volumes)
    assert len(loads) == 1 and outcome.selected == 2
    with pytest.raises(
        SeriesProcessingError, match=rf"1 of 2 selected series .* series {BROKEN} \(GAP\): missing"
    ) as info:
        write_inference_outcome(outcome, tmp_path / "out")
    assert [p.name for p in info.value.written] == [f"sdmad_sr_{AXIAL}.dcm", f"sdmad_sr_{AXIAL}.json"]
    assert all(p.is_file() for p in info.value.written)
    # a broken series alone never loads the model
    outcome = infer_series_volumes(lambda: pytest.fail("model loaded"), volumes[1:])
    assert outcome.findings == [] and len(outcome.failures) == 1


def test_infer_series_rejects_inconsistent_sdk_image(tmp_path, detector):
    write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL)
    series = Series(read_series(tmp_path / "ax"))
    array, metadata = sdk_like_conversion(None, series)
    datasets = [s.ds for s in series.instances]
    unsorted = SeriesVolume(name="ax", datasets=datasets[::-1], array=array[::-1], metadata=metadata)
    with pytest.raises(ValueError, match="slice order differs"):
        infer_series(detector, unsorted)
    moved = dict(metadata, dicom_affine_transform=metadata["dicom_affine_transform"] + np.eye(4) * 0)
    moved["dicom_affine_transform"][:3, 3] += 10.0
    with pytest.raises(ValueError, match="geometry .* differs from the one of its DICOM headers"):
        infer_series(detector, SeriesVolume(name="ax", datasets=datasets, array=array, metadata=moved))
    with pytest.raises(ValueError, match=r"has shape \(12, 20, 23\), expected \(12, 20, 24\)"):
        infer_series(detector, SeriesVolume(name="ax", datasets=datasets, array=array[..., 1:], metadata=metadata))
    with pytest.raises(ValueError, match="slice index 20 is outside"):
        infer_series(
            detector, SeriesVolume(name="ax", datasets=datasets, array=array, metadata=metadata), slices=[0, 20]
        )


# ------------------------------------------------------------------------------------------------------ model
def test_resolve_checkpoint(tmp_path):
    checkpoint = tmp_path / "a" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    assert resolve_checkpoint(checkpoint) == checkpoint
    assert resolve_checkpoint(checkpoint.parent) == checkpoint
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "sdmad.pth").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "b") == tmp_path / "b" / "sdmad.pth"
    (tmp_path / "b" / "other.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"holds 2 .pt/.pth files and no model.pt"):
        resolve_checkpoint(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing.pt")
