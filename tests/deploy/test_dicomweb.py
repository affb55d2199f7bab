"""PACS round trip over DICOMweb (sdmad_monai.deploy.dicomweb) against a real Orthanc (fixture in conftest.py):
the SR stored back and read again over QIDO-RS/WADO-RS, the source instances untouched, and every fault - PACS not
reachable, HTTP 5xx vs 4xx, study not found, no matching series, a series with a missing slice, a re-run."""

from __future__ import annotations

import inspect
import json
import logging
import re
import socket
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import torch
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

from sdmad_monai.cli import SdmadCommands, main
from sdmad_monai.deploy import (
    NoMatchingSeriesError,
    SeriesProcessingError,
    read_sr_findings,
)
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.dicomweb import (
    DicomWebConnection,
    DicomWebError,
    PacsUnreachableError,
    StudyNotFoundError,
    process_study,
)
from sdmad_monai.inference import infer_volume
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

BRAIN = {"BodyPartExamined": "BRAIN"}


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny")


def volume(seed=0):
    return np.random.default_rng(seed).uniform(0, 1000, (32, 32, 12))


def client(url: str) -> DICOMwebClient:
    dicomweb = DICOMwebClient(url)
    dicomweb.set_http_retry_params(retry=False)
    return dicomweb


def upload(url: str, paths) -> None:
    client(url).store_instances([pydicom.dcmread(p) for p in paths])


def series_modalities(url: str, study: str) -> dict[str, str]:
    return {
        item["0020000E"]["Value"][0]: item["00080060"]["Value"][0]
        for item in client(url).search_for_series(study_instance_uid=study)
    }


def metadata(url: str, study: str, series: str) -> list[dict]:
    return sorted(client(url).retrieve_series_metadata(study, series), key=lambda item: item["00080018"]["Value"][0])


def stored_srs(url: str, study: str) -> list[pydicom.Dataset]:
    """Every SR instance of the study, retrieved over WADO-RS."""
    dicomweb = client(url)
    return [
        dicomweb.retrieve_instance(study, series, item["00080018"]["Value"][0])
        for series, modality in series_modalities(url, study).items()
        if modality == "SR"
        for item in dicomweb.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    ]


def first_instance(url: str, study: str, series: str) -> pydicom.Dataset:
    """One instance of the series, retrieved over WADO-RS as the PACS serves it."""
    dicomweb = client(url)
    item = dicomweb.search_for_instances(study_instance_uid=study, series_instance_uid=series)[0]
    return dicomweb.retrieve_instance(study, series, item["00080018"]["Value"][0])


def test_round_trip(orthanc, detector, tmp_path, caplog, dciodvfy):
    study, axial, coronal = generate_uid(), generate_uid(), generate_uid()
    axial_files = write_dicom_series(
        volume(0), tmp_path / "ax", "axial", study, axial, series_description="AX T2", attributes=BRAIN
    )
    upload(orthanc, axial_files)
    upload(orthanc, write_dicom_series(volume(1), tmp_path / "cor", "coronal", study, coronal))
    before = {uid: metadata(orthanc, study, uid) for uid in (axial, coronal)}

    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        reports = process_study(orthanc, study, detector, output_dir=tmp_path / "out", backoff=0.01)
    assert [(r.series_instance_uid, r.status) for r in reports] == [(axial, "stored")]
    assert f"Study {study} on {orthanc}: 2 series found" in caplog.text
    assert f"Series {coronal} skipped: orientation is coronal" in caplog.text
    assert f"retrieved 12 instances of series {axial}" in caplog.text

    # the SR is in Orthanc, in the study, and its content tree holds the findings of the axial series
    srs = stored_srs(orthanc, study)
    assert len(srs) == 1 and srs[0].SOPInstanceUID == reports[0].sop_instance_uid
    # both the series as the PACS keeps it and the SR it received are valid DICOM for the independent validator
    for name, instance in (("source.dcm", first_instance(orthanc, study, axial)), ("sr.dcm", srs[0])):
        instance.save_as(tmp_path / name, enforce_file_format=True)
        assert dciodvfy(tmp_path / name) == [], name
    read = read_sr_findings(srs[0])
    assert read["study_instance_uid"] == study
    assert {uid: sorted(s) for uid, s in read["evidence"].items()} == {
        axial: sorted(pydicom.dcmread(p).SOPInstanceUID for p in axial_files)
    }
    expected = infer_volume(detector, tmp_path / "ax", indices=[0, 5, 10]).findings
    assert [f["label"] for f in read["findings"]] == [f["label"] for f in expected]
    for got, want in zip(read["findings"], expected):
        assert got["finding"] == want["finding"] and got["score"] == pytest.approx(want["score"], abs=1e-6)

    # the local copy: the same SR, and the JSON names the series on the PACS
    local_sr, local_json = reports[0].files
    assert pydicom.dcmread(local_sr).SOPInstanceUID == srs[0].SOPInstanceUID
    document = json.loads(local_json.read_text())
    assert document["source"] == f"{orthanc}/studies/{study}/series/{axial}"
    assert document["pacs"] == {"url": orthanc, "status": "stored"}

    # nothing else changed on the PACS: the same source instances with the same headers
    assert {uid: metadata(orthanc, study, uid) for uid in (axial, coronal)} == before
    assert sorted(series_modalities(orthanc, study).values()) == ["MR", "MR", "SR"]


def test_rerun_stores_no_duplicate(orthanc, detector, tmp_path, caplog):
    study, axial = generate_uid(), generate_uid()
    upload(orthanc, write_dicom_series(volume(2), tmp_path / "ax", "axial", study, axial, attributes=BRAIN))
    first = process_study(orthanc, study, detector)
    caplog.clear()  # only the re-run's lines (an earlier test may have left the root logger at INFO)
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        second = process_study(orthanc, study, detector)
    assert [r.status for r in first] == ["stored"] and [r.status for r in second] == ["already in PACS"]
    assert second[0].sop_instance_uid == first[0].sop_instance_uid
    assert "already in" in caplog.text and "not retrieved" in caplog.text and "retrieved 12" not in caplog.text
    assert len(stored_srs(orthanc, study)) == 1
    # another model (other checkpoint fingerprint) gives another SR, stored beside the first one
    other = SignDrivenDetector.from_preset("tiny")
    with torch.no_grad():
        next(p for p in other.parameters() if p.requires_grad).add_(0.5)
    assert [r.status for r in process_study(orthanc, study, other)] == ["stored"]
    assert len(stored_srs(orthanc, study)) == 2


def test_store_checks_the_pacs_first(orthanc, detector, tmp_path, monkeypatch, caplog):
    """The SR appears on the PACS while the series is processed (e.g. a second run in parallel): it is not sent."""
    study, axial = generate_uid(), generate_uid()
    upload(orthanc, write_dicom_series(volume(3), tmp_path / "ax", "axial", study, axial, attributes=BRAIN))
    connection = DicomWebConnection(orthanc, backoff=0.01)
    process_study(connection, study, detector)  # the SR is there now
    searches, stores = [], []
    real_search = connection.has_instance

    def has_instance(study_uid, sop_uid):  # the first search (before retrieval) does not see the SR yet
        searches.append(sop_uid)
        return len(searches) > 1 and real_search(study_uid, sop_uid)

    monkeypatch.setattr(connection, "has_instance", has_instance)
    monkeypatch.setattr(connection, "store", stores.append)
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        reports = process_study(connection, study, detector)
    assert len(searches) == 2 and stores == []  # searched before retrieval (hidden) and before storing (found)
    assert [r.status for r in reports] == ["already in PACS"] and "not stored again" in caplog.text
    assert len(stored_srs(orthanc, study)) == 1


class _CountingSession(requests.Session):
    def __init__(self):
        super().__init__()
        self.requests = 0

    def request(self, *args, **kwargs):
        self.requests += 1
        return super().request(*args, **kwargs)


def test_unreachable_pacs_bounded_retries(tmp_path):
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dicom-web"
    session, delays = _CountingSession(), []
    connection = DicomWebConnection(url, retries=3, backoff=0.01, timeout=5, session=session, sleep=delays.append)
    with pytest.raises(PacsUnreachableError) as info:
        process_study(connection, "1.2.3", lambda: pytest.fail("model loaded"))
    assert info.value.attempts == 4 and session.requests == 4
    assert delays == pytest.approx([0.01, 0.02, 0.04])  # backoff * 2**k
    assert (
        url in str(info.value) and "after 4 attempt(s)" in str(info.value) and "Connection refused" in str(info.value)
    )


@pytest.mark.parametrize("status", [503, 500, 429])
def test_5xx_and_429_are_retried(status, open_canned_http_server):
    with open_canned_http_server(status) as server:
        connection = DicomWebConnection(server.url, retries=2, backoff=0.0, timeout=5)
        with pytest.raises(PacsUnreachableError, match=f"after 3 attempt.*HTTP {status}"):
            process_study(connection, "1.2.3", lambda: pytest.fail("model loaded"))
    assert len(server.authorizations) == 3


@pytest.mark.parametrize("status", [400, 401, 404])
def test_4xx_is_not_retried(status, open_canned_http_server):
    with open_canned_http_server(status) as server:
        connection = DicomWebConnection(server.url, retries=3, backoff=0.0, timeout=5)
        with pytest.raises(DicomWebError, match=f"refused to search the series of study 1.2.3: HTTP {status}") as info:
            process_study(connection, "1.2.3", lambda: pytest.fail("model loaded"))
    assert not isinstance(info.value, PacsUnreachableError) and len(server.authorizations) == 1


def test_bad_connection_settings():
    with pytest.raises(ValueError, match="not an http"):
        DicomWebConnection("127.0.0.1:8042/dicom-web")
    with pytest.raises(ValueError, match="retries"):
        DicomWebConnection("http://127.0.0.1:8042/dicom-web", retries=-1)


def test_study_not_found(orthanc):
    study = generate_uid()
    with pytest.raises(StudyNotFoundError) as info:
        process_study(orthanc, study, lambda: pytest.fail("model loaded"))
    assert f"Study {study} not found on DICOMweb server {orthanc}" in str(info.value)


def test_no_matching_series(orthanc, detector, tmp_path, caplog):
    study, coronal, ct = generate_uid(), generate_uid(), generate_uid()
    upload(orthanc, write_dicom_series(volume(), tmp_path / "cor", "coronal", study, coronal))
    upload(orthanc, write_dicom_series(volume(), tmp_path / "ct", "axial", study, ct, modality="CT"))
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy"):
        assert process_study(orthanc, study, lambda: pytest.fail("model loaded")) == []
    assert f"{coronal}: orientation is coronal" in caplog.text and f"{ct}: modality CT" in caplog.text
    assert "nothing stored" in caplog.text
    with pytest.raises(NoMatchingSeriesError, match=f"No series of study {study} on {orthanc} matches"):
        process_study(orthanc, study, detector, strict=True)
    assert series_modalities(orthanc, study) == {coronal: "MR", ct: "CT"}  # no SR stored


def test_missing_slice_gets_no_sr(orthanc, detector, tmp_path):
    """A broken series gets no SR and a clear error; the good series of the same study still gets its SR."""
    study, broken, good = generate_uid(), generate_uid(), generate_uid()
    files = write_dicom_series(
        volume(4), tmp_path / "broken", "axial", study, broken, series_description="AX T2", attributes=BRAIN
    )
    missing = pydicom.dcmread(files[6]).SOPInstanceUID
    upload(orthanc, files[:6] + files[7:])
    upload(
        orthanc,
        write_dicom_series(volume(5), tmp_path / "good", "axial", study, good, attributes=BRAIN, series_number=2),
    )
    with pytest.raises(SeriesProcessingError) as info:
        process_study(orthanc, study, detector)
    message = str(info.value)
    assert f"series {broken} (AX T2)" in message and "missing slice" in message
    assert (
        f"{orthanc}/studies/{study}/series/{broken}" in message and "No SR was stored for the failed series" in message
    )
    assert "stored: SR" in message and f"for series {good}" in message
    assert missing not in message
    srs = stored_srs(orthanc, study)
    assert len(srs) == 1 and list(read_sr_findings(srs[0])["evidence"]) == [good]


def test_series_completed_later_gets_its_own_sr(orthanc, detector, tmp_path):
    """An SR made before the last instance arrived (not detectable from these headers) is not "already in PACS" once
    the series is complete: the SR identity includes the instances used, and the new SR says what it supersedes."""
    study, series = generate_uid(), generate_uid()
    files = write_dicom_series(volume(6), tmp_path / "s", "axial", study, series, attributes=BRAIN)
    upload(orthanc, files[:-1])
    (first,) = process_study(orthanc, study, detector)
    assert first.status == "stored" and first.supersedes == ()
    assert [r.status for r in process_study(orthanc, study, detector)] == ["already in PACS"]
    upload(orthanc, files[-1:])
    (second,) = process_study(orthanc, study, detector)
    assert second.status == "stored" and second.sop_instance_uid != first.sop_instance_uid
    assert second.supersedes == (first.sop_instance_uid,) and f"supersedes SR {first.sop_instance_uid}" in str(second)
    srs = stored_srs(orthanc, study)
    assert len(srs) == 2 and len({sr.SeriesInstanceUID for sr in srs}) == 1  # both kept, in one SR series


def test_cli_round_trip(orthanc, tmp_path, capsys):
    """``sdmad process_study`` (in-process; tests/test_cli.py runs ``python -m sdmad_monai`` in a subprocess) against
    Orthanc: the SR is stored and the local copy written; a re-run stores nothing and prints so."""
    study, axial = generate_uid(), generate_uid()
    upload(orthanc, write_dicom_series(volume(6), tmp_path / "ax", "axial", study, axial, attributes=BRAIN))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sign selection kept no prompt")
        model = SignDrivenDetector.from_preset("tiny").save(tmp_path / "model.pt")
    command = [
        "process_study",
        "--url",
        orthanc,
        "--study_uid",
        study,
        "--model",
        str(model),
        "--backoff",
        "0.01",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    main(command)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stored: SR 2.25.") and lines[0].endswith(f"for series {axial}")
    out = tmp_path / "out"
    assert lines[1:] == [str(out / f"sdmad_sr_{axial}.dcm"), str(out / f"sdmad_sr_{axial}.json")]
    main(command)
    assert capsys.readouterr().out.splitlines() == [lines[0].replace("stored:", "already in PACS:")]
    assert len(stored_srs(orthanc, study)) == 1
    with pytest.raises(SystemExit) as info:
        main(["process_study", "--url", orthanc, "--study_uid", "1.2.3.999", "--model", str(model)])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sdmad: error: Study 1.2.3.999 not found on DICOMweb server {orthanc}: a QIDO-RS search for its series "
        "returned nothing. Check the StudyInstanceUID and that the study was sent to this server."
    )


def test_walkthrough_commands_match_the_cli():
    """bundle/pacs/README.md's ``sdmad`` commands use existing commands and options; its Orthanc config is JSON with
    the settings the walk-through promises."""
    folder = Path(__file__).resolve().parents[2] / "bundle" / "pacs"
    text = (folder / "README.md").read_text()
    commands = re.findall(r"^sdmad (\w+)((?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert {name for name, _ in commands} == {"write_demo_study", "process_study"}
    for name, arguments in commands:
        parameters = inspect.signature(getattr(SdmadCommands, name)).parameters
        assert set(re.findall(r"--(\w+)", arguments)) <= set(parameters), name
    config = json.loads((folder / "orthanc.json").read_text())
    assert config["RemoteAccessAllowed"] is False and config["DicomWeb"]["Enable"] is True
    assert config["HttpPort"] == 8042 and "http://127.0.0.1:8042/dicom-web" in text
