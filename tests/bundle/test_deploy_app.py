"""The MONAI Deploy application (bundle/deploy_app) with the real SDK: DICOM folder in, DICOM SR out.

Needs ``monai-deploy-app-sdk`` (the ``deploy`` extra, installed by the README's test line). Skipped when the SDK is
missing, unless ``SDMAD_REQUIRE_DEPLOY=1`` or ``CI=true`` - then a missing SDK fails the run, so CI cannot skip these
tests silently.

The series is real anatomy: the MNI152 template shipped in nilearn, subsampled to 3 x 4 x 6 mm voxels (non-square
pixels, so the SDK's in-plane spacing convention matters), written as DICOM with ``deploy.demo.write_dicom_series``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

import pytest

if os.environ.get("SDMAD_REQUIRE_DEPLOY") == "1" or os.environ.get("CI") == "true":
    import monai.deploy  # noqa: F401  (a missing SDK is an error here, not a skip)
else:
    pytest.importorskip(
        "monai.deploy",
        reason="monai-deploy-app-sdk is not installed (set SDMAD_REQUIRE_DEPLOY=1 to make this an error)",
    )

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.deploy.core import Fragment
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

from sdmad_monai.deploy import (
    NoMatchingSeriesError,
    SeriesProcessingError,
    SeriesRulesError,
    load_series_rules,
    process_dicom_folder,
    read_sr_findings,
)
from sdmad_monai.deploy.app_logic import image_to_metatensor
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.map_dicom import anomaly_map_identifiers
from sdmad_monai.deploy.sr import AlgorithmInfo
from sdmad_monai.inference import infer_volume
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.transforms import load_volume

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

APP_DIR = Path(__file__).resolve().parents[2] / "bundle" / "deploy_app"
STUDY = "1.2.826.0.1.3680043.8.498.40"
AXIAL, CORONAL, GAP = (f"1.2.826.0.1.3680043.8.498.4{i}" for i in (1, 2, 3))
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def load_app_module():
    spec = importlib.util.spec_from_file_location("sdmad_deploy_app", APP_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app_module():
    return load_app_module()


def mni_volume() -> tuple[np.ndarray, np.ndarray]:
    """The nilearn MNI152 T1 template on a 3 x 4 x 6 mm grid, 16 axial slices from z = -12 mm, scaled to 0..1000."""
    spec = importlib.util.find_spec("nilearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)[::3, ::4, 60:156:6]
    step = np.array([[3.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 6.0, 60.0], [0, 0, 0, 1]])
    return data / data.max() * 1000.0, image.affine @ step


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An axial brain MR series (MNI anatomy), a coronal series and a file that is not DICOM; and a checkpoint."""
    root = tmp_path_factory.mktemp("deploy")
    volume, affine = mni_volume()
    write_dicom_series(
        volume,
        root / "in" / "ax",
        study_instance_uid=STUDY,
        series_instance_uid=AXIAL,
        affine=affine,
        series_description="AX T1",
        attributes={"BodyPartExamined": "BRAIN"},
    )
    write_dicom_series(
        volume, root / "in" / "cor", "coronal", STUDY, CORONAL, series_description="COR T1", series_number=2
    )
    (root / "in" / "notes.txt").write_text("not DICOM")
    detector = SignDrivenDetector.from_preset("tiny")
    detector.save(root / "model.pt")
    return {"root": root, "input": root / "in", "model": root / "model.pt", "detector": detector}


def run_app(app_module, *args: str) -> None:
    app_module.SDMADApp(["python", str(APP_DIR), *[str(a) for a in args]]).run()


def test_sdk_image_converts_like_the_itk_reader(study, app_module):
    """The SDK's own loader and conversion, then image_to_metatensor: the same array and affine as MONAI's ITK
    reader of the series folder (non-square pixels: 3 mm columns, 4 mm rows)."""
    fragment = Fragment()
    studies = DICOMDataLoaderOperator(fragment, name="loader").load_data_to_studies(study["input"])
    selector = app_module.SDMADSeriesSelectorOperator(fragment, rules=load_series_rules(), name="selector")
    selected = selector.filter(None, studies)
    assert [[s.series.SeriesInstanceUID for s in item.selected_series] for item in selected] == [[AXIAL]]
    to_volume = app_module.SDMADSeriesToVolumeOperator(fragment, name="to_volume")
    array, metadata = to_volume._convert(selected[0].study, selected[0].selected_series[0].series)
    assert array.shape == (16, 59, 66)  # [D, H, W]
    tensor = image_to_metatensor(array, metadata, "ax")
    reference = load_volume(study["input"] / "ax")
    assert tensor.shape == reference.shape == (1, 66, 59, 16)
    assert torch.equal(tensor.as_tensor(), reference.as_tensor())
    np.testing.assert_allclose(tensor.affine.numpy(), reference.affine.numpy(), atol=1e-4)
    # the SDK's own RAS affine scales columns by the row spacing and rows by the column spacing
    sdk = np.asarray(metadata["nifti_affine_transform"])
    np.testing.assert_allclose(np.linalg.norm(sdk[:3, :2], axis=0), [4.0, 3.0], atol=1e-4)
    np.testing.assert_allclose(sdk[:3, 2:], reference.affine.numpy()[:3, 2:], atol=1e-4)


def test_app_command_line_writes_the_command_line_sr(study, tmp_path, monkeypatch, capfd):
    """``python bundle/deploy_app -i -o -m`` (its ``__main__.py``, run in this process to spare a second start of
    torch and Holoscan): one SR for the axial series, equal to process_dicom_folder's."""
    out = tmp_path / "out"
    monkeypatch.setenv("SDMAD_DEVICE", "cpu")
    monkeypatch.setattr(
        sys, "argv", [str(APP_DIR), "-i", str(study["input"]), "-o", str(out), "-m", str(study["model"])]
    )
    runpy.run_path(str(APP_DIR), run_name="__main__")  # the SDK sets up logging to stderr (INFO)
    log = capfd.readouterr().err
    assert f"Series {CORONAL} (COR T1) in {study['input'] / 'cor'} skipped: orientation is coronal" in log
    assert f"Series {AXIAL} (AX T1) in {study['input'] / 'ax'}: wrote {tmp_path}" in log
    assert sorted(p.name for p in out.iterdir()) == [f"sdmad_sr_{AXIAL}.dcm", f"sdmad_sr_{AXIAL}.json"]

    sr_path = out / f"sdmad_sr_{AXIAL}.dcm"
    sr = pydicom.dcmread(sr_path)
    assert (sr.SOPClassUID, sr.Modality, sr.StudyInstanceUID) == (COMPREHENSIVE_SR, "SR", STUDY)
    read = read_sr_findings(sr)
    instances = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (study["input"] / "ax").iterdir()
    }
    assert list(read["evidence"]) == [AXIAL] and set(read["evidence"][AXIAL]) == instances
    detector = study["detector"]
    assert [f["label"] for f in read["findings"]] == detector.category_labels
    assert read["algorithm"]["name"] == "SD-MAD (sdmad_monai)"
    assert read["algorithm"]["version"] == detector.description()["sdmad_monai_version"]
    assert all(-1.0 <= f["score"] <= 1.0 and f["finding"] in (0, 1) for f in read["findings"])  # Eq. 7: a cosine
    copy = json.loads((out / f"sdmad_sr_{AXIAL}.json").read_text())
    assert copy["sr"]["sop_instance_uid"] == read["sop_instance_uid"]
    assert [s["slice"] for s in copy["slices"]] == [0, 5, 10]
    assert [(f["label"], f["finding"]) for f in copy["findings"]] == [
        (f["label"], f["finding"]) for f in read["findings"]
    ]

    # the command line path on the same folder and checkpoint: same document, same scores
    cli = read_sr_findings(process_dicom_folder(study["model"], study["input"], tmp_path / "cli")[0])
    assert cli["sop_instance_uid"] == read["sop_instance_uid"]
    assert cli["evidence"] == read["evidence"] and cli["algorithm"] == read["algorithm"]
    for got, want in zip(read["findings"], cli["findings"], strict=True):
        assert (got["label"], got["finding"]) == (want["label"], want["finding"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)


def test_app_re_run_gives_the_same_sr(study, app_module, tmp_path):
    run_app(app_module, "-i", study["input"], "-o", tmp_path / "a", "-m", study["model"], "--device", "cpu")
    run_app(app_module, "-i", study["input"], "-o", tmp_path / "b", "-m", study["model"].parent, "--device", "cpu")
    first, second = (pydicom.dcmread(tmp_path / d / f"sdmad_sr_{AXIAL}.dcm") for d in "ab")
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID, second.SeriesInstanceUID)
    assert not list((tmp_path / "a").glob("sdmad_map_*"))  # the anomaly map is off by default


def test_app_anomaly_map_option_writes_the_map_series(study, app_module, tmp_path, monkeypatch):
    """SDMAD_ANOMALY_MAP=1: the app also writes the 3D anomaly map as a Parametric Map on the series' geometry,
    equal to the command line path's map (infer_volume on the ITK-read folder) on slices 0, 5, 10 and 0 elsewhere."""
    monkeypatch.setenv("SDMAD_ANOMALY_MAP", "1")
    run_app(app_module, "-i", study["input"], "-o", tmp_path / "out", "-m", study["model"], "--device", "cpu")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"sdmad_map_{AXIAL}.dcm",
        f"sdmad_sr_{AXIAL}.dcm",
        f"sdmad_sr_{AXIAL}.json",
    ]
    pmap = pydicom.dcmread(tmp_path / "out" / f"sdmad_map_{AXIAL}.dcm")
    detector = study["detector"]
    assert (pmap.SeriesInstanceUID, pmap.SOPInstanceUID) == anomaly_map_identifiers(
        STUDY, AXIAL, AlgorithmInfo.from_detector(detector)
    )
    assert str(pmap.ReferencedSeriesSequence[0].SeriesInstanceUID) == AXIAL
    sources = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in (study["input"] / "ax").iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    reference = infer_volume(detector, load_volume(study["input"] / "ax"), indices=[0, 5, 10], anomaly_maps=True)
    expected = reference.anomaly_volume()  # [X, Y, Z] on the series' grid
    frames = {
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID): (frame, item)
        for frame, item in zip(pmap.pixel_array, pmap.PerFrameFunctionalGroupsSequence, strict=True)
    }
    assert len(frames) == len(sources) == 16
    for k, source in enumerate(sources):
        frame, item = frames[str(source.SOPInstanceUID)]
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in source.ImagePositionPatient]
        )
        np.testing.assert_allclose(frame, expected[:, :, k].T, atol=1e-5)
        assert np.any(frame != 0) == (k in (0, 5, 10))


def test_app_missing_slice_fails_after_writing_the_good_series(study, app_module, tmp_path):
    folder = tmp_path / "in"
    volume, affine = mni_volume()
    write_dicom_series(volume, folder / "ax", study_instance_uid=STUDY, series_instance_uid=AXIAL, affine=affine)
    write_dicom_series(
        volume,
        folder / "gap",
        study_instance_uid=STUDY,
        series_instance_uid=GAP,
        affine=affine,
        series_description="GAP",
    )
    (folder / "gap" / "IM0006.dcm").unlink()
    with pytest.raises(SeriesProcessingError, match=rf"1 of 2 selected series .*{GAP} \(GAP\).*missing slice"):
        run_app(app_module, "-i", folder, "-o", tmp_path / "out", "-m", study["model"], "--device", "cpu")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"sdmad_sr_{AXIAL}.dcm", f"sdmad_sr_{AXIAL}.json"]


def test_app_no_matching_series(study, app_module, tmp_path):
    coronal_only = study["input"] / "cor"
    with pytest.raises(NoMatchingSeriesError, match=rf"No series in {coronal_only} matches .* orientation is coronal"):
        run_app(app_module, "-i", coronal_only, "-o", tmp_path / "out", "-m", study["model"])
    assert not any((tmp_path / "out").iterdir())
    # a site that expects such studies lets them pass without an SR
    run_app(app_module, "-i", coronal_only, "-o", tmp_path / "out", "-m", study["model"], "--allow-no-match")
    assert not any((tmp_path / "out").iterdir())


def test_app_site_rules_file(study, app_module, tmp_path, monkeypatch):
    rules = tmp_path / "site_rules.json"
    rules.write_text(json.dumps({"modalities": ["MR"], "orientations": ["coronal"]}))
    monkeypatch.setenv("SDMAD_SERIES_RULES", str(rules))
    monkeypatch.setenv("SDMAD_SLICES", "all")
    monkeypatch.setenv("SDMAD_AXIS", "coronal")
    run_app(app_module, "-i", study["input"], "-o", tmp_path / "out", "-m", study["model"], "--device", "cpu")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"sdmad_sr_{CORONAL}.dcm",
        f"sdmad_sr_{CORONAL}.json",
    ]
    assert len(json.loads((tmp_path / "out" / f"sdmad_sr_{CORONAL}.json").read_text())["slices"]) == 16
    rules.write_text('{"orientation": "coronal"}')
    with pytest.raises(SeriesRulesError, match=rf"{rules} has unknown key"):
        run_app(app_module, "-i", study["input"], "-o", tmp_path / "bad", "-m", study["model"])
