"""The DICOM listener (``sdmad listen``, sdmad_monai.deploy.listener) against a real Orthanc with its DICOM server on
(fixture ``orthanc_dicom`` in conftest.py): Orthanc sends studies by C-STORE (``/modalities/{id}/store``), the
listener, run as ``python -m sdmad_monai listen`` in a subprocess, sends the SRs back to Orthanc by C-STORE; Orthanc's
REST API shows exactly one SR per study. The faults: the listener killed (SIGKILL) while receiving and while
processing, then restarted; stopped by SIGTERM mid-job; the SR sent again after a crash between the C-STORE and the
queue update; the destination down, then up; partial studies (completed later, or processed at the timeout); an
unknown calling AE title; 20 studies at once. Everything runs on 127.0.0.1 and is stopped by PID."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from sdmad_monai.cli import SdmadCommands, main
from sdmad_monai.deploy.listener import DicomListener, ListenerConfig, ListenerError, parse_allow_list
from sdmad_monai.deploy.queue import JobQueue, Received, State

if os.environ.get("CI") == "true":  # CI installs the test extra, which has pynetdicom: never skip there
    import pynetdicom
else:
    pynetdicom = pytest.importorskip("pynetdicom", reason='pip install -e ".[pacs]"')

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

REPO = Path(__file__).resolve().parents[2]
LISTENER_AET = "SDMAD"

HTTP = requests.Session()
HTTP.trust_env = False  # never a proxy for 127.0.0.1


# ------------------------------------------------------------------------------------------------------- helpers
# The listener subprocess and the Orthanc helpers (make_study, upload, send, assert_one_sr, ...) are conftest's
# fixtures ``model``, ``listeners`` and ``listener_kit`` (shared with test_orthanc_dicom_tls.py).
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queue_rows(work_dir: Path, query: str, *values: object) -> list[tuple]:
    with sqlite3.connect(work_dir / "queue.sqlite3", timeout=10) as db:
        return db.execute(query, values).fetchall()


def find_study(orthanc, study_uid: str) -> str | None:
    found = HTTP.post(
        f"{orthanc.url}/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}, timeout=30
    ).json()
    return found[0] if found else None


FAST = ("--settle_seconds", "1", "--backoff", "0.2", "--max_backoff", "1", "--timeout", "10")


# ---------------------------------------------------------------------------------------------------------- tests
def test_study_round_trip(orthanc_dicom, model, tmp_path, listeners, listener_kit):
    """Orthanc sends a study; one SR comes back into it, referencing the series; report, log, queue agree; a C-ECHO
    is answered; a second send of the same study adds nothing; SIGTERM ends the listener with status 0."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    listener = listener_kit.start_listener(
        work, model, orthanc, listeners, "--allow", orthanc.aet, *FAST, name="roundtrip"
    )
    assert listener_kit.echo(listener.port)
    study, (series,), files = listener_kit.make_study(tmp_path / "study", seed=1)
    study_id, _ = listener_kit.upload(orthanc, files)
    started = time.monotonic()
    assert listener_kit.send(orthanc, "roundtrip", [study_id]).status_code == 200
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, study) == "done", 60, "the study to be done")
    elapsed = time.monotonic() - started
    sr = listener_kit.assert_one_sr(orthanc, study_id, study, series, files)
    report = json.loads((work / "studies" / study / "report.json").read_text())
    assert report["state"] == "done" and report["partial"] is False and report["instances"] == 12
    assert report["series"] == {series: 12} and report["calling_ae_title"] == orthanc.aet
    assert [a["ok"] for a in report["send_attempts"]] == [True]
    assert sr.SOPInstanceUID in report["reason"]
    log = (work / "studies" / study / "study.log").read_text()
    assert f"receiving from {orthanc.aet}" in log and "12 instance(s) in 1 series" in log
    assert log.strip().splitlines()[-1].endswith(f"DONE: {report['reason']}.")
    print(f"round trip: study sent to SR done in {elapsed:.1f} s")

    # the same study sent again: every instance is a repeat, nothing is reprocessed or sent
    assert listener_kit.send(orthanc, "roundtrip", [study_id]).status_code == 200
    time.sleep(2.5)
    assert listener_kit.queue_state(work, study) == "done" and len(listener_kit.sr_instances(orthanc, study_id)) == 1
    assert queue_rows(work, "SELECT COUNT(*) FROM send_attempts")[0][0] == 1

    assert listener.stop(signal.SIGTERM) == 0
    assert "Stopped." in listener.output()


def test_anomaly_map_goes_back_with_the_sr(orthanc_dicom, model, tmp_path, listeners, listener_kit):
    """--anomaly_map: the series' Parametric Map goes back beside the SR, both once, in the study they came from,
    and the report says so; the same study sent again adds nothing."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    listener_kit.start_listener(
        work, model, orthanc, listeners, "--allow", orthanc.aet, *FAST, "--anomaly_map", name="withmap"
    )
    study, (series,), files = listener_kit.make_study(tmp_path / "study", seed=4)
    study_id, _ = listener_kit.upload(orthanc, files)
    assert listener_kit.send(orthanc, "withmap", [study_id]).status_code == 200
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, study) == "done", 60, "the study to be done")
    sr = listener_kit.assert_one_sr(orthanc, study_id, study, series, files)

    def sop_classes() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for instance in HTTP.get(f"{orthanc.url}/studies/{study_id}/instances", timeout=30).json():
            tags = HTTP.get(f"{orthanc.url}/instances/{instance['ID']}/simplified-tags", timeout=30).json()
            found.setdefault(tags["SOPClassUID"], []).append(instance["ID"])
        return found

    classes = sop_classes()
    parametric_map = "1.2.840.10008.5.1.4.1.1.30"
    assert sum(map(len, classes.values())) == len(files) + 2 and len(classes[parametric_map]) == 1
    pmap = listener_kit.sr_dataset(orthanc, classes[parametric_map][0])
    assert pmap.StudyInstanceUID == study and pmap.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    report = json.loads((work / "studies" / study / "report.json").read_text())
    assert report["state"] == "done" and "sent 1 SR(s) and 1 anomaly map(s) (" in report["reason"]
    assert sr.SOPInstanceUID in report["reason"] and pmap.SOPInstanceUID in report["reason"]

    assert listener_kit.send(orthanc, "withmap", [study_id]).status_code == 200
    time.sleep(2.5)
    assert listener_kit.queue_state(work, study) == "done" and sop_classes() == classes


def test_killed_while_receiving_and_while_processing(orthanc_dicom, model, tmp_path, listeners, listener_kit):
    """SIGKILL after half a study arrived: the acknowledged half is kept, the study completes when the PACS sends it
    again after the restart. SIGKILL while a study is processing: redone after the restart. One SR each."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    # every slice of a 24-slice series: processing lasts long enough to be caught (seconds, not a race)
    options = (
        "--allow",
        orthanc.aet,
        "--settle_seconds",
        "3",
        "--backoff",
        "0.2",
        "--timeout",
        "10",
        "--slices",
        "all",
    )
    first = listener_kit.start_listener(work, model, orthanc, listeners, *options, name="killed")
    study, (series,), files = listener_kit.make_study(tmp_path / "a", seed=2)
    study_id, instance_ids = listener_kit.upload(orthanc, files)
    assert listener_kit.send(orthanc, "killed", instance_ids[:6]).status_code == 200
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert listener_kit.queue_state(work, study) == "receiving"
    assert queue_rows(work, "SELECT COUNT(*) FROM instances WHERE study_uid = ?", study)[0][0] == 6
    assert len(list((work / "studies" / study / "incoming" / series).glob("*.dcm"))) == 6

    second = listener_kit.start_listener(work, model, orthanc, listeners, *options, name="killed")
    assert listener_kit.send(orthanc, "killed", [study_id]).status_code == 200  # 6 repeats, 6 new
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, study) == "done", 60, "the first study to be done")
    listener_kit.assert_one_sr(orthanc, study_id, study, series, files)

    # killed while processing the next study
    other, (other_series,), other_files = listener_kit.make_study(tmp_path / "b", seed=3, slices=24)
    other_id, _ = listener_kit.upload(orthanc, other_files)
    assert listener_kit.send(orthanc, "killed", [other_id]).status_code == 200
    listener_kit.wait_for(
        lambda: listener_kit.queue_state(work, other) == "processing", 30, "processing to start", interval=0.02
    )
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL
    assert listener_kit.queue_state(work, other) == "processing" and listener_kit.sr_instances(orthanc, other_id) == []

    listener_kit.start_listener(work, model, orthanc, listeners, *options, name="killed")
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, other) == "done", 60, "the second study to be done")
    listener_kit.assert_one_sr(orthanc, other_id, other, other_series, other_files)
    assert queue_rows(work, "SELECT process_attempts FROM studies WHERE study_uid = ?", other) == [(2,)]
    log = (work / "studies" / other / "study.log").read_text()
    assert "was processing when the listener stopped; processing again" in log
    assert len(listener_kit.sr_instances(orthanc, study_id)) == 1  # the first study was not touched by the restarts


def test_sigterm_mid_job_and_crash_after_send(orthanc_dicom, model, tmp_path, listeners, listener_kit):
    """SIGTERM while a study is processing: exit status 0 at once (grace 0), the job stays in the queue and is done
    after the restart. A crash between the SR's C-STORE and the queue update (the row put back to 'sending'): the
    restart sends the same SR again and Orthanc still holds one."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    options = ("--allow", orthanc.aet, *FAST, "--shutdown_grace", "0", "--slices", "all")  # see the test above
    first = listener_kit.start_listener(work, model, orthanc, listeners, *options, name="sigterm")
    study, (series,), files = listener_kit.make_study(tmp_path / "a", seed=4, slices=24)
    study_id, _ = listener_kit.upload(orthanc, files)
    assert listener_kit.send(orthanc, "sigterm", [study_id]).status_code == 200
    listener_kit.wait_for(
        lambda: listener_kit.queue_state(work, study) == "processing", 30, "processing to start", interval=0.02
    )
    started = time.monotonic()
    assert first.stop(signal.SIGTERM, timeout=30) == 0
    stopped_in = time.monotonic() - started
    assert listener_kit.queue_state(work, study) == "processing"  # abandoned, not lost
    assert "stopping before its job finished; it stays in the queue for the next start" in first.output()
    assert "Stopped; 1 job(s) left in the queue." in first.output()

    second = listener_kit.start_listener(work, model, orthanc, listeners, *options, name="sigterm")
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, study) == "done", 60, "the study to be done")
    assert "was processing when the listener stopped; processing again" in second.output()
    sr = listener_kit.assert_one_sr(orthanc, study_id, study, series, files)
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL

    # the crash window after a successful C-STORE: the queue still says 'sending'
    with sqlite3.connect(work / "queue.sqlite3") as db:
        db.execute("UPDATE studies SET state = 'sending' WHERE study_uid = ?", (study,))
    listener_kit.start_listener(work, model, orthanc, listeners, *options, name="sigterm")
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, study) == "done", 60, "the study to be done again")
    oks = queue_rows(work, "SELECT ok FROM send_attempts WHERE study_uid = ? ORDER BY rowid", study)
    assert oks == [(1,), (1,)]  # sent twice ...
    (instance,) = listener_kit.sr_instances(orthanc, study_id)  # ... stored once: the same SOPInstanceUID
    assert listener_kit.sr_dataset(orthanc, instance).SOPInstanceUID == sr.SOPInstanceUID
    print(f"SIGTERM mid-job: exited in {stopped_in:.2f} s")


def test_destination_down_then_up(orthanc_dicom, model, tmp_path, listeners, start_orthanc_dicom, listener_kit):
    """The destination PACS is not running: each send attempt is recorded and retried with exponential backoff;
    once it runs, the SR is sent and appears there exactly once."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    dest_port = free_port()
    listener = listener_kit.Listener(
        work,
        model,
        f"SDMADDEST@127.0.0.1:{dest_port}",
        *("--allow", orthanc.aet, "--settle_seconds", "1", "--backoff", "0.5", "--max_backoff", "4"),
        *("--retries", "20", "--timeout", "5"),
    )
    listeners.append(listener)
    listener.start()
    listener_kit.register(orthanc, "downup", listener.port)
    study, (series,), files = listener_kit.make_study(tmp_path / "a", seed=5)
    study_id, _ = listener_kit.upload(orthanc, files)
    assert listener_kit.send(orthanc, "downup", [study_id]).status_code == 200

    def failures() -> int:
        return queue_rows(work, "SELECT COUNT(*) FROM send_attempts WHERE study_uid = ? AND ok = 0", study)[0][0]

    listener_kit.wait_for(lambda: failures() >= 3, 60, "three failed send attempts")
    assert listener_kit.queue_state(work, study) == "sending"
    destination = start_orthanc_dicom("SDMADDEST", dest_port)
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, study) == "done", 60, "the study to be done")
    attempts = queue_rows(work, "SELECT at, ok, detail FROM send_attempts WHERE study_uid = ? ORDER BY rowid", study)
    assert [ok for _, ok, _ in attempts] == [0] * (len(attempts) - 1) + [1]
    assert "no association with SDMADDEST@127.0.0.1" in attempts[0][2]
    gaps = np.diff([at for at, _, _ in attempts])
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0 and gaps[2] >= 2.0  # 0.5, 1, 2, 4, 4 ... seconds
    dest_study = listener_kit.wait_for(lambda: find_study(destination, study), 10, "the study in the destination")
    listener_kit.assert_one_sr(destination, dest_study, study, series, files)
    assert listener_kit.sr_instances(orthanc, study_id) == []  # the sender got nothing: SRs go to the destination only
    log = (work / "studies" / study / "study.log").read_text()
    assert "retrying in 0.5 s" in log and "retrying in 1 s" in log
    print(f"destination down then up: {len(attempts) - 1} failed attempts, then sent")


def test_partial_studies(orthanc_dicom, model, tmp_path, listeners, listener_kit):
    """A series with a missing slice holds its study: completed later, the study is processed then (one SR over every
    instance); never completed, it is processed at the study timeout with what arrived, reported as partial."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    options = ("--allow", orthanc.aet, *FAST, "--study_timeout", "12")
    listener_kit.start_listener(work, model, orthanc, listeners, *options, name="partial")
    late, (late_series,), late_files = listener_kit.make_study(tmp_path / "late", seed=6)
    late_id, late_instances = listener_kit.upload(orthanc, late_files)
    stuck, (complete, gapped), stuck_files = listener_kit.make_study(tmp_path / "stuck", seed=7, series=2)
    stuck_id, stuck_instances = listener_kit.upload(orthanc, stuck_files)
    started = time.monotonic()
    assert (
        listener_kit.send(orthanc, "partial", late_instances[:5] + late_instances[6:]).status_code == 200
    )  # slice 5 missing
    assert (
        listener_kit.send(orthanc, "partial", stuck_instances[:17] + stuck_instances[18:]).status_code == 200
    )  # B: slice 5

    late_log = work / "studies" / late / "study.log"
    listener_kit.wait_for(lambda: late_log.exists() and "incomplete" in late_log.read_text(), 30, "the study to wait")
    assert "missing" in late_log.read_text() and listener_kit.queue_state(work, late) == "receiving"
    time.sleep(1.5)
    assert listener_kit.sr_instances(orthanc, late_id) == []
    assert listener_kit.send(orthanc, "partial", late_instances[5:6]).status_code == 200
    listener_kit.wait_for(lambda: listener_kit.queue_state(work, late) == "done", 60, "the completed study to be done")
    listener_kit.assert_one_sr(orthanc, late_id, late, late_series, late_files)
    assert json.loads((work / "studies" / late / "report.json").read_text())["partial"] is False
    assert time.monotonic() - started < 12  # done before the timeout

    listener_kit.wait_for(lambda: listener_kit.queue_state(work, stuck) == "done", 60, "the partial study to be done")
    assert time.monotonic() - started >= 11  # not before the timeout
    listener_kit.assert_one_sr(orthanc, stuck_id, stuck, complete, stuck_files[:12])
    report = json.loads((work / "studies" / stuck / "report.json").read_text())
    assert report["partial"] is True and gapped in report["missing"] and complete not in report["missing"]
    assert "PARTIAL" in report["reason"]
    log = (work / "studies" / stuck / "study.log").read_text()
    assert f"PARTIAL: study timeout (12 s) reached with incomplete series: series {gapped}" in log
    assert log.strip().splitlines()[-1].split(": ", 1)[1].startswith("Study ")  # the last line is the outcome
    assert "DONE: sent 1 SR(s)" in log.strip().splitlines()[-1] and "PARTIAL" in log.strip().splitlines()[-1]


def test_twenty_studies_at_once(orthanc_dicom, model, tmp_path, listeners, listener_kit):
    """20 studies sent at once (20 asynchronous Orthanc jobs): 20 SRs, one in each study; at most --workers studies
    are processed at the same time."""
    orthanc, work = orthanc_dicom, tmp_path / "work"
    listener_kit.start_listener(
        work, model, orthanc, listeners, "--allow", orthanc.aet, *FAST, "--workers", "2", name="twenty"
    )
    studies = []
    for number in range(20):
        study, (series,), files = listener_kit.make_study(tmp_path / f"s{number}", seed=100 + number, slices=11)
        studies.append((study, series, files, listener_kit.upload(orthanc, files)[0]))
    started = time.monotonic()
    for *_, study_id in studies:  # 20 Orthanc jobs (Orthanc runs 2 at a time: ConcurrentJobs)
        assert listener_kit.send(orthanc, "twenty", [study_id], asynchronous=True).status_code == 200
    most = 0
    while True:
        states = (
            dict(queue_rows(work, "SELECT study_uid, state FROM studies")) if (work / "queue.sqlite3").exists() else {}
        )
        most = max(most, sum(state == "processing" for state in states.values()))
        if len(states) == 20 and set(states.values()) <= {"done", "failed"}:
            break
        assert time.monotonic() - started < 150, f"not all done after 150 s: {states}"
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    assert set(states.values()) == {"done"}, {k: v for k, v in states.items() if v != "done"}
    for study, series, files, study_id in studies:
        listener_kit.assert_one_sr(orthanc, study_id, study, series, files)
    assert 1 <= most <= 2
    print(f"20 studies at once: all 20 SRs in Orthanc {elapsed:.1f} s after the sends (at most {most} processing)")
    assert elapsed < 120


# ------------------------------------------------------------------------------- in-process listener, fast checks
@pytest.fixture(scope="module")
def detector():
    from sdmad_monai.networks import SignDrivenDetector

    return SignDrivenDetector.from_preset("tiny")


@contextlib.contextmanager
def in_process(tmp_path: Path, detector, destination: str, allowed, **settings) -> Iterator[DicomListener]:
    """A :class:`DicomListener` serving in a thread of this process (stopped at the end)."""
    config = ListenerConfig(
        work_dir=tmp_path / "work", destination=destination, allowed_aets=allowed, port=free_port(), **settings
    )
    listener = DicomListener(config, detector)
    listener.start()
    stop = threading.Event()
    thread = threading.Thread(target=listener.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def store_scu(port: int, paths, calling: str) -> list[int]:
    """C-STORE the files to the listener from this process; the status of each."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = pynetdicom.AE(ae_title=calling)
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AET)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_unknown_calling_ae_is_rejected(orthanc_dicom, detector, tmp_path, caplog, listener_kit):
    """Only the allow-list's calling AE titles, calling the listener's AE title, get an association: Orthanc (not in
    the list) cannot send, nothing is stored; the rejections name the reason on both sides."""
    orthanc = orthanc_dicom
    with (
        caplog.at_level(logging.INFO),
        in_process(
            tmp_path, detector, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", ("OTHERPACS",), settle_seconds=0.5
        ) as listener,
    ):
        listener_kit.register(orthanc, "unknown", listener.config.port)
        study, _, files = listener_kit.make_study(tmp_path / "a", seed=8)
        study_id, _ = listener_kit.upload(orthanc, files)
        assert listener_kit.send(orthanc, "unknown", [study_id]).status_code != 200
        assert not listener_kit.echo(listener.config.port, calling="INTRUDER")
        assert not listener_kit.echo(listener.config.port, calling="OTHERPACS", called="SOMEONE")
        assert listener_kit.echo(listener.config.port, calling="OTHERPACS")
        time.sleep(1)
        assert listener.queue is not None and listener.queue.jobs() == []
    assert not (tmp_path / "work" / "studies" / study).exists()
    server_side = [r.getMessage() for r in caplog.records if r.name == "sdmad_monai.deploy.listener"]
    assert any(
        f"calling AE title {orthanc.aet!r} is not in the allow-list (OTHERPACS): calling AE title not recognised" in m
        for m in server_side
    )
    assert any("calling AE title 'INTRUDER' is not in the allow-list" in m for m in server_side)
    assert any(
        "'OTHERPACS' called AE title 'SOMEONE', not 'SDMAD': called AE title not recognised" in m for m in server_side
    )
    assert "Reason: Calling AE title not recognised" in caplog.text  # what pynetdicom's requestor side received


def test_destination_never_up_fails_after_the_retries(detector, tmp_path, caplog, listener_kit):
    """Sending to a port nobody listens on: ``retries + 1`` attempts with doubling waits, then ``failed`` with one
    clear line in the study's log and report. Also: an instance is acknowledged once, a repeat changes nothing."""
    dead = free_port()
    with (
        caplog.at_level(logging.INFO),
        in_process(
            tmp_path,
            detector,
            f"NOBODY@127.0.0.1:{dead}",
            ("SDMADPACS",),
            settle_seconds=0.3,
            retries=2,
            backoff=0.2,
            network_timeout=2,
        ) as listener,
    ):
        study, (series,), files = listener_kit.make_study(tmp_path / "a", seed=9)
        assert store_scu(listener.config.port, files, "SDMADPACS") == [0] * 12
        assert store_scu(listener.config.port, files[:2], "SDMADPACS") == [0, 0]  # repeats: recorded once
        assert listener.queue is not None
        listener_kit.wait_for(lambda: listener.queue.get(study).state == State.FAILED, 60, "the study to fail")  # type: ignore
        job = listener.queue.get(study)
        attempts = listener.queue.attempts(study)
    assert job is not None and job.instances == 12
    assert [a.ok for a in attempts] == [False, False, False]
    gaps = np.diff([a.at for a in attempts])
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4
    expected = f"could not send the SR(s) to NOBODY@127.0.0.1:{dead} after 3 attempt(s) (last: no association with"
    assert job.reason.startswith(expected)
    work = tmp_path / "work" / "studies" / study
    assert json.loads((work / "report.json").read_text())["state"] == "failed"
    last = (work / "study.log").read_text().strip().splitlines()[-1]
    assert f"FAILED: {expected}" in last
    # the SR was written: the local copy stays in the work folder
    assert len(list((work / "out" / "1").glob("sdmad_sr_*.dcm"))) == 1


def test_queue_states_and_generations(tmp_path):
    """The queue on its own (a clock of our own): settle, the generation guard against stale work, recovery."""
    now = [1000.0]
    queue = JobQueue(tmp_path / "q.sqlite3", clock=lambda: now[0])
    assert queue.record_instance("1.2", "1.2.1", "1.2.1.1", "a", "PACS") == Received.OPENED
    assert queue.record_instance("1.2", "1.2.1", "1.2.1.2", "b", "PACS") == Received.ADDED
    assert queue.record_instance("1.2", "1.2.1", "1.2.1.2", "b", "PACS") == Received.REPEATED
    now[0] += 0.5
    assert queue.settle(1.0) == []
    now[0] += 1.0
    assert [j.study_uid for j in queue.settle(1.0)] == ["1.2"]
    job = queue.start_processing("1.2")
    assert job is not None and job.state == State.PROCESSING and job.generation == 1 and job.instances == 2
    assert queue.start_processing("1.2") is None  # one worker per study
    # an instance arrives while it is processed: the result for generation 1 is not recorded
    assert queue.record_instance("1.2", "1.2.1", "1.2.1.3", "c", "PACS") == Received.REOPENED
    assert not queue.processed("1.2", 1, ["sr.dcm"], "")
    reopened = queue.get("1.2")
    assert reopened is not None and reopened.state == State.RECEIVING and reopened.generation == 2
    now[0] += 2
    queue.settle(1.0)
    job = queue.start_processing("1.2")
    assert job is not None and queue.processed("1.2", 2, ["sr.dcm"], "")
    assert [j.state for j in queue.due()] == [State.SENDING]
    assert queue.record_attempt("1.2", 2, False, "down") == 1
    assert queue.send_failed("1.2", 2, "down", now[0] + 10)
    assert queue.due() == []  # not before its time
    assert queue.record_instance("1.3", "1.3.1", "1.3.1.1", "d", "PACS") == Received.OPENED
    queue.close()
    # a restart 5 s later: 'sending' is due at once; 'receiving' gets a full settle time again
    now[0] += 5
    queue = JobQueue(tmp_path / "q.sqlite3", clock=lambda: now[0])
    assert [j.state for j in queue.recover()] == [State.SENDING]
    assert queue.settle(1.0) == []
    now[0] += 1
    assert [j.study_uid for j in queue.settle(1.0)] == ["1.3"]
    assert [j.study_uid for j in queue.due()] == ["1.2", "1.3"]
    assert queue.finish("1.2", 2, State.DONE, "sent")
    queue.record_sent("1.2", ["1.2.9"])
    assert queue.was_sent("1.2.9") and not queue.was_sent("1.2.1.1")
    assert queue.record_instance("1.2", "1.2.1", "1.2.1.3", "c", "PACS") == Received.REPEATED  # done stays done
    assert queue.get("1.2").state == State.DONE  # type: ignore[union-attr]
    queue.close()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--destination", "ORTHANC:4242"], "--destination 'ORTHANC:4242' is not AET@host:port"),
        (["--allow", ""], "--allow is required"),
        ([], "--allow is required"),
        (["--allow", "A_TITLE_LONGER_THAN_16"], "--allow 'A_TITLE_LONGER_THAN_16' is not a DICOM AE title"),
        (["--allow", "PACS", "--port", "70000"], "--port 70000 is not a TCP port"),
        (["--allow", "PACS", "--settle_seconds", "30", "--study_timeout", "10"], "--study_timeout 10 is shorter"),
        (["--allow", "PACS", "--workers", "0"], "--workers 0 is not a whole number >= 1"),
        (["--allow", "PACS", "--port", "abc"], "listen: --port 'abc' is not a valid int value"),
        (["--allow", "PACS", "--setle_seconds", "1"], "did you mean --settle_seconds?"),
    ],
)
def test_cli_refuses_bad_settings(model, tmp_path, capsys, options, message):
    """Bad settings end ``sdmad listen`` with one ``sdmad: error:`` line naming the option, before it listens."""
    command = ["listen", "--work_dir", str(tmp_path / "w"), "--model", str(model), "--destination", "PACS@h:1"]
    with pytest.raises(SystemExit) as info:
        main(command + options)
    assert info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sdmad: error: ") and message in line


def test_parse_allow_list():
    assert parse_allow_list("ORTHANC") == ("ORTHANC",)
    assert parse_allow_list(("ORTHANC", "PACS2")) == ("ORTHANC", "PACS2")  # fire's reading of ORTHANC,PACS2
    assert parse_allow_list("any") is None
    with pytest.raises(ListenerError, match="is not a DICOM AE title"):
        parse_allow_list("BAD\\AE")


def test_walkthroughs_listen_commands_match_the_cli():
    """The ``listen`` commands of bundle/pacs/README.md and README.md use existing options."""
    parameters = set(inspect.signature(SdmadCommands.listen).parameters)
    for name in ("bundle/pacs/README.md", "README.md"):
        text = (REPO / name).read_text()
        commands = re.findall(r"(?:^sdmad|python -m sdmad_monai) listen((?:.*\\\n)*.*)$", text, re.MULTILINE)
        assert commands, name
        for arguments in commands:
            assert set(re.findall(r"--(\w+)", arguments)) <= parameters, name


def test_one_listener_per_folder_and_port(detector, tmp_path, listener_kit):
    """A second listener on the same work folder, or on a port in use, does not start; the error names it."""
    with in_process(tmp_path, detector, "PACS@127.0.0.1:1", ("PACS",)) as listener:
        same_folder = ListenerConfig(
            work_dir=tmp_path / "work", destination="PACS@127.0.0.1:1", allowed_aets=None, port=free_port()
        )
        with pytest.raises(ListenerError, match=r"--work_dir .*work is in use by another sdmad listener"):
            DicomListener(same_folder, detector).start()
        same_port = ListenerConfig(
            work_dir=tmp_path / "other", destination="PACS@127.0.0.1:1", allowed_aets=None, port=listener.config.port
        )
        with pytest.raises(ListenerError, match=rf"cannot listen on 127.0.0.1:{listener.config.port}: .*--port"):
            DicomListener(same_port, detector).start()
        assert listener_kit.echo(listener.config.port, calling="PACS")  # the first one still serves
