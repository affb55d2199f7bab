"""The one series pipeline of the deployment sources (sdmad_monai.deploy.pipeline): the selection's message policy,
a job built from in-memory datasets equals the volume the folder readers give, the folder source gives a series the
same scores whether or not it shares its folder, and a broken series never sinks the good one."""

from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest
import torch

from sdmad_monai.deploy import load_series_rules
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.pipeline import (
    LPS_TO_RAS,
    NoMatchingSeriesError,
    PendingSeries,
    SeriesOptions,
    SeriesProcessingError,
    describe_series,
    job_from_datasets,
    parse_slices,
    raise_failures,
    resolve_detector,
    run_jobs,
    run_series,
    select_series_to_process,
)
from sdmad_monai.deploy.process import process_dicom_folder, read_dicom_headers
from sdmad_monai.inference import infer_volume
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.transforms import load_volume

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

STUDY = "1.2.826.0.1.3680043.8.498.60"
AXIAL, AXIAL2, CORONAL = (f"1.2.826.0.1.3680043.8.498.6{i}" for i in (1, 2, 3))
BRAIN = {"BodyPartExamined": "BRAIN"}


def volume(seed=0, shape=(24, 20, 12)):
    return np.random.default_rng(seed).uniform(0, 1000, shape)


def read_series(folder):
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return SignDrivenDetector.from_preset("tiny")


def scores(json_path):
    document = json.loads(json_path.read_text())
    return {(f["label"], f["finding"]): f["score"] for f in document["findings"]}, document


# ------------------------------------------------------------------------------------------------- selection
def test_selection_message_policy(tmp_path, caplog):
    write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL, series_description="AX T2", attributes=BRAIN)
    write_dicom_series(volume(1), tmp_path / "cor", "coronal", STUDY, CORONAL, series_description="COR T2")
    series = {AXIAL: read_series(tmp_path / "ax"), CORONAL: read_series(tmp_path / "cor")}
    rules = load_series_rules()
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        assert select_series_to_process(series, rules, "in /in", strict=True) == [AXIAL]
    assert f"Series {AXIAL} (AX T2) in {tmp_path / 'ax'} selected (rules: {rules.source})" in caplog.text
    assert f"Series {CORONAL} (COR T2) in {tmp_path / 'cor'} skipped: orientation is coronal" in caplog.text

    only_coronal = {CORONAL: series[CORONAL]}
    message = (
        f"No series in /in matches the series rules ({rules.source}); nothing written. Skipped 1 series - "
        f"{CORONAL}: orientation is coronal, expected axial."
    )
    with pytest.raises(NoMatchingSeriesError) as info:
        select_series_to_process(only_coronal, rules, "in /in", strict=True)
    assert str(info.value) == message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdmad_monai.deploy"):
        assert select_series_to_process(only_coronal, rules, "in /in", strict=False) == []
    assert message in caplog.text  # the same message, as a warning

    with pytest.raises(NoMatchingSeriesError, match=r"No DICOM series found of study 1\.2 on x; nothing stored\."):
        select_series_to_process({}, rules, "of study 1.2 on x", strict=True, done="stored")
    # reasons known from a first pass are taken as they are (the DICOMweb source's modality pass)
    reasons = {CORONAL: "modality CT is not one of ['MR']", AXIAL: None}
    assert select_series_to_process(series, rules, "in /in", strict=True, reasons=reasons) == [AXIAL]


def test_small_pieces(tmp_path, detector):
    assert parse_slices("0, 5,10") == [0, 5, 10] and parse_slices((1,)) == [1]
    assert parse_slices("all") is None and parse_slices(None) is None
    with pytest.raises(ValueError, match="non-negative"):
        parse_slices("0,-1")
    with pytest.raises(ValueError, match="such as 0,5,10"):
        parse_slices("a,b")
    files = write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL, series_description="AX T2")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert describe_series(headers) == f"{AXIAL} (AX T2) in {tmp_path / 'ax'}"
    in_memory = [pydicom.Dataset(ds) for ds in headers]  # no file name: no folder
    assert describe_series(in_memory) == f"{AXIAL} (AX T2)"
    assert describe_series(in_memory, "http://pacs/series/1") == f"{AXIAL} (AX T2) in http://pacs/series/1"
    assert describe_series([]) == "<empty series>"
    assert resolve_detector(detector) is detector and resolve_detector(lambda: detector) is detector


# ------------------------------------------------------------------------------------------------------ jobs
@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal"])
def test_job_from_datasets_equals_the_folder_readers(tmp_path, orientation):
    """Non-square pixels, a rescale slope and intercept, instances in any order: the job's volume and affine are
    those of MONAI's ITK read of the folder (load_volume), and its instances are sorted along the slice normal."""
    folder = tmp_path / orientation
    write_dicom_series(
        volume(2),
        folder,
        orientation,
        STUDY,
        AXIAL,
        pixel_spacing=(0.7, 1.3),
        slice_thickness=2.5,
        attributes={"RescaleSlope": 2.0, "RescaleIntercept": -7.0},
    )
    datasets = read_series(folder)[::-1]
    job = job_from_datasets(datasets)
    reference = load_volume(folder)  # ITK, [1, X, Y, Z]
    assert job.volume.shape == reference.shape and job.volume.dtype == torch.float32
    assert torch.equal(job.volume.as_tensor(), reference.as_tensor())
    np.testing.assert_allclose(job.volume.affine.numpy(), reference.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(job.affine, LPS_TO_RAS @ job.lps_affine)
    assert job.source == str(folder) and job.volume.meta["filename_or_obj"] == str(folder)
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, dtype=float), (2, 3)))
    positions = [float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal) for ds in job.datasets]
    assert positions == sorted(positions)
    # the same scores as inference on the folder itself
    torch.manual_seed(0)
    detector = SignDrivenDetector.from_preset("tiny")
    findings = run_series(detector, job, SeriesOptions.create("axial", "0,5,10"))
    expected = infer_volume(detector, folder, indices=[0, 5, 10])
    np.testing.assert_allclose(findings.result.scores.numpy(), expected.scores.numpy(), atol=1e-6)
    assert findings.result.source == str(folder)


def test_job_checks_name_the_instances(tmp_path):
    files = write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL)
    datasets = [pydicom.dcmread(p) for p in files[:5] + files[6:]]
    with pytest.raises(ValueError, match=r"^missing slice\(s\) in the series .* IM0004\.dcm and IM0006\.dcm"):
        job_from_datasets(datasets, name="the axial series")
    in_memory = [pydicom.dcmread(p) for p in files]
    for ds in in_memory:
        ds.filename = None
    del in_memory[3].PixelData
    with pytest.raises(ValueError, match=rf"instance {in_memory[3].SOPInstanceUID}: cannot read the pixel data"):
        job_from_datasets(in_memory)


# ------------------------------------------------------------------------------------------------ the sources
def test_folder_source_same_scores_shared_or_alone(tmp_path, detector):
    """Two axial series in one folder: each gets the SR + scores it gets alone in its own folder."""
    shared = tmp_path / "shared"
    for uid, seed, prefix in ((AXIAL, 0, "A"), (AXIAL2, 1, "B")):
        write_dicom_series(volume(seed), shared, "axial", STUDY, uid, attributes=BRAIN, prefix=prefix)
        write_dicom_series(volume(seed), tmp_path / uid, "axial", STUDY, uid, attributes=BRAIN, prefix=prefix)
    assert sorted(read_dicom_headers(shared)) == sorted([AXIAL, AXIAL2])
    together = process_dicom_folder(detector, shared, tmp_path / "out_shared")
    assert sorted(p.name for p in together) == sorted(
        f"sdmad_sr_{u}.{e}" for u in (AXIAL, AXIAL2) for e in ("dcm", "json")
    )
    for uid in (AXIAL, AXIAL2):
        [sr, json_path] = process_dicom_folder(detector, tmp_path / uid, tmp_path / f"out_{uid}")
        got, document = scores(tmp_path / "out_shared" / json_path.name)
        want, alone = scores(json_path)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-6)
        assert document["source"] == str(shared) and alone["source"] == str(tmp_path / uid)
        shared_sr = pydicom.dcmread(tmp_path / "out_shared" / sr.name)
        assert shared_sr.SOPInstanceUID == pydicom.dcmread(sr).SOPInstanceUID


def test_broken_series_does_not_sink_the_good_one(tmp_path, detector, caplog):
    write_dicom_series(volume(0), tmp_path / "ax", "axial", STUDY, AXIAL, attributes=BRAIN)
    good = job_from_datasets(read_series(tmp_path / "ax"))

    def broken():
        raise ValueError("missing slice(s) in the series")

    written = []
    pending = [PendingSeries("broken (GAP)", broken), PendingSeries(good.name, lambda: good)]
    with caplog.at_level(logging.ERROR, logger="sdmad_monai.deploy"):
        outcome = run_jobs(
            lambda: detector, pending, SeriesOptions(), sink=lambda f: written.append(f.name) or [tmp_path / "x"]
        )
    assert outcome.failures == ["series broken (GAP): missing slice(s) in the series"]
    assert [f.name for f in outcome.findings] == written == [good.name] and outcome.written == [tmp_path / "x"]
    assert outcome.selected == 2 and "broken (GAP) cannot be processed" in caplog.text
    with pytest.raises(
        SeriesProcessingError, match=r"^1 of 2 selected series .* series broken \(GAP\): missing"
    ) as info:
        raise_failures(outcome)
    assert info.value.written == [tmp_path / "x"]
    # a sink's ValueError is that series' failure; a broken series alone never loads the model
    outcome = run_jobs(detector, [PendingSeries(good.name, lambda: good)], SeriesOptions(), sink=lambda f: broken())
    assert outcome.findings == [] and outcome.failures == [f"series {good.name}: missing slice(s) in the series"]
    outcome = run_jobs(lambda: pytest.fail("model loaded"), [PendingSeries("b", broken)], SeriesOptions())
    assert outcome.findings == [] and len(outcome.failures) == 1
    raise_failures(run_jobs(detector, [], SeriesOptions()))  # nothing failed: no error
