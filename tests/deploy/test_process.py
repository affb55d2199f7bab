"""DICOM folder -> SR (sdmad_monai.deploy.process): series grouping and selection, one SR for the axial brain MR
series of a mixed folder, no SR when nothing matches, a clear error for a series with a missing slice."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest

from sdmad_monai.deploy import (
    NoMatchingSeriesError,
    SeriesProcessingError,
    process_dicom_folder,
    read_dicom_headers,
    read_sr_findings,
)
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.inference import infer_volume
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

STUDY = "1.2.826.0.1.3680043.8.498.20"
AXIAL, CORONAL, CT = (f"1.2.826.0.1.3680043.8.498.2{i}" for i in (1, 2, 3))


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny")


def volume(seed=0):
    return np.random.default_rng(seed).uniform(0, 1000, (32, 32, 12))


def write_numbered_series(folder, i, uid, data):
    """Series ``i`` of a study of axial brain MR series: folder ``s<i>``, description ``AX T2 <i>``, number i + 1."""
    write_dicom_series(
        data,
        folder / f"s{i}",
        "axial",
        STUDY,
        uid,
        series_description=f"AX T2 {i}",
        attributes={"BodyPartExamined": "BRAIN"},
        series_number=i + 1,
    )


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """One folder holding an axial brain MR series, a coronal MR series (prefix COR) and a note that is not DICOM."""
    folder = tmp_path_factory.mktemp("study")
    write_dicom_series(
        volume(0),
        folder,
        "axial",
        STUDY,
        AXIAL,
        series_description="AX T2",
        attributes={"BodyPartExamined": "BRAIN"},
        prefix="AX",
    )
    write_dicom_series(
        volume(1), folder, "coronal", STUDY, CORONAL, series_description="COR T2", prefix="COR", series_number=2
    )
    (folder / "README.txt").write_text("not DICOM")
    return folder


def test_read_dicom_headers(mixed_folder):
    series = read_dicom_headers(mixed_folder)
    assert sorted(series) == sorted([AXIAL, CORONAL])
    assert all(len(files) == 12 for files in series.values())


def test_mixed_folder_gives_one_sr(tmp_path, mixed_folder, detector, caplog):
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        written = process_dicom_folder(detector, mixed_folder, tmp_path / "out")
    assert [p.name for p in written] == [f"sdmad_sr_{AXIAL}.dcm", f"sdmad_sr_{AXIAL}.json"]
    assert f"Series {CORONAL} (COR T2) in {mixed_folder} skipped: orientation is coronal" in caplog.text
    read = read_sr_findings(written[0])
    assert list(read["evidence"]) == [AXIAL] and len(read["evidence"][AXIAL]) == 12
    # the same findings as infer_volume on a folder holding only the axial series
    alone = tmp_path / "axial_only"
    write_dicom_series(volume(0), alone, "axial", STUDY, AXIAL, attributes={"BodyPartExamined": "BRAIN"})
    expected = infer_volume(detector, alone, indices=[0, 5, 10]).findings
    for got, want in zip(read["findings"], expected):
        assert got["label"] == want["label"] and got["finding"] == want["finding"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
    # the processed slices 0, 5, 10 are referenced as the source of each group (bottom-up: slice k = file AX000k)
    sr = pydicom.dcmread(written[0])
    groups = sr.ContentSequence[-1].ContentSequence
    referenced = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in groups[0].ContentSequence if i.ValueType == "IMAGE"
    ]
    by_name = {f.path.name: f.header.SOPInstanceUID for f in read_dicom_headers(mixed_folder)[AXIAL]}
    assert referenced == [by_name[f"AX{k:04d}.dcm"] for k in (0, 5, 10)]
    # a re-run replaces the same files with the same UIDs
    again = process_dicom_folder(detector, mixed_folder, tmp_path / "out")
    assert again == written and pydicom.dcmread(again[0]).SOPInstanceUID == sr.SOPInstanceUID


def test_anomaly_map_beside_the_sr(tmp_path, mixed_folder, detector):
    """anomaly_map=True adds the series' Parametric Map (what `sdmad process_folder --anomaly_map` and the listener's
    --anomaly_map send on); its UID is as deterministic as the SR's."""
    written = process_dicom_folder(detector, mixed_folder, tmp_path / "out", anomaly_map=True)
    assert [p.name for p in written] == [f"sdmad_sr_{AXIAL}.dcm", f"sdmad_sr_{AXIAL}.json", f"sdmad_map_{AXIAL}.dcm"]
    parametric = pydicom.dcmread(written[2])
    assert parametric.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert parametric.StudyInstanceUID == STUDY
    assert parametric.ReferencedSeriesSequence[0].SeriesInstanceUID == AXIAL
    again = process_dicom_folder(detector, mixed_folder, tmp_path / "again", anomaly_map=True)
    assert pydicom.dcmread(again[2]).SOPInstanceUID == parametric.SOPInstanceUID


def test_no_matching_series(tmp_path, detector, caplog):
    folder = tmp_path / "in"
    write_dicom_series(volume(), folder / "cor", "coronal", STUDY, CORONAL)
    write_dicom_series(volume(), folder / "ct", "axial", STUDY, CT, modality="CT")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="sdmad_monai.deploy"):
        assert process_dicom_folder(lambda: pytest.fail("model loaded"), folder, out) == []
    assert "No series in" in caplog.text and "orientation is coronal" in caplog.text and "modality CT" in caplog.text
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(NoMatchingSeriesError, match="matches the series rules"):
        process_dicom_folder(detector, folder, out, strict=True)
    with pytest.raises(NoMatchingSeriesError, match="No DICOM file"):
        (tmp_path / "empty").mkdir()
        process_dicom_folder(detector, tmp_path / "empty", out, strict=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        process_dicom_folder(detector, tmp_path / "missing", out)


def test_missing_slice(tmp_path, detector):
    folder = tmp_path / "in" / "ax"
    write_dicom_series(volume(), folder, "axial", STUDY, AXIAL, series_description="AX T2")
    (folder / "IM0006.dcm").unlink()
    with pytest.raises(SeriesProcessingError, match="missing slice") as info:
        process_dicom_folder(detector, tmp_path / "in", tmp_path / "out")
    message = str(info.value)
    assert AXIAL in message and "AX T2" in message and "IM0005.dcm and IM0007.dcm" in message
    assert info.value.written == [] and not (tmp_path / "out").exists()


def test_slice_out_of_range_names_series(tmp_path, detector):
    folder = tmp_path / "in"
    write_dicom_series(volume(), folder, "axial", STUDY, AXIAL)
    with pytest.raises(SeriesProcessingError, match=rf"{AXIAL}.*slice index 20 is outside"):
        process_dicom_folder(detector, folder, tmp_path / "out", slices="0,20")


def test_bad_series_do_not_sink_the_good_one(tmp_path, detector):
    """Three axial series: one file without PixelData, one all-zero (blank) series, one good: one SR, two reasons."""
    folder = tmp_path / "in"
    uids = [f"1.2.826.0.1.3680043.8.498.4{i}" for i in range(3)]
    for i, (uid, data) in enumerate(zip(uids, (volume(0), volume(1), np.zeros((32, 32, 12))))):
        write_numbered_series(folder, i, uid, data)
    for broken in sorted((folder / "s1").glob("*.dcm")):  # whichever file holds a requested slice
        ds = pydicom.dcmread(broken)
        del ds.PixelData
        ds.save_as(broken)
    with pytest.raises(SeriesProcessingError) as info:
        process_dicom_folder(detector, folder, tmp_path / "out")
    message = str(info.value)
    assert message.startswith("2 of 3 selected series could not be processed")
    assert ".dcm: cannot read the pixel data" in message and "the file has no pixel data" in message
    assert "cannot be assessed (slice 0: constant intensity 0" in message
    assert [p.name for p in info.value.written] == [f"sdmad_sr_{uids[0]}.dcm", f"sdmad_sr_{uids[0]}.json"]


def test_undecodable_jpeg2000_series_fails_alone(tmp_path, detector):
    """Pixel data that its transfer syntax's decoder cannot read (here JPEG 2000 with a damaged codestream)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    folder = tmp_path / "in"
    good, broken = "1.2.826.0.1.3680043.8.498.50", "1.2.826.0.1.3680043.8.498.51"
    for i, uid in enumerate((good, broken)):
        write_numbered_series(folder, i, uid, volume(i))
    for path in sorted((folder / "s1").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a JPEG 2000 codestream"])
        ds.save_as(path)
    with pytest.raises(SeriesProcessingError) as info:
        process_dicom_folder(detector, folder, tmp_path / "out")
    message = str(info.value)
    assert (
        message.startswith("1 of 2 selected series")
        and "cannot read the pixel data (transfer syntax JPEG 2000" in message
    )
    assert [p.name for p in info.value.written] == [f"sdmad_sr_{good}.dcm", f"sdmad_sr_{good}.json"]


def test_missing_first_instance_is_detected(tmp_path, detector):
    """A missing first slice leaves even steps (no gap) but shifts slices 0/5/10 by one: refused, no SR."""
    folder = tmp_path / "in" / "ax"
    write_dicom_series(volume(), folder, "axial", STUDY, AXIAL, series_description="AX T2")
    (folder / "IM0000.dcm").unlink()  # InstanceNumber 1
    with pytest.raises(
        SeriesProcessingError,
        match=r"incomplete series - its InstanceNumbers run from 2 to 12 .*"
        r"instance\(s\) 1 to 1 at the start are missing",
    ):
        process_dicom_folder(detector, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_last_instance_is_detected_from_images_in_acquisition(tmp_path, detector):
    folder = tmp_path / "in" / "ax"
    write_dicom_series(volume(), folder, "axial", STUDY, AXIAL, series_description="AX T2")
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImagesInAcquisition = 12
        ds.save_as(path)
    (folder / "IM0011.dcm").unlink()  # InstanceNumber 12
    with pytest.raises(SeriesProcessingError, match=r"11 of the 12 instances its headers announce"):
        process_dicom_folder(detector, tmp_path / "in", tmp_path / "out")
