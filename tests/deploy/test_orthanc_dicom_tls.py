"""DICOM TLS between a real Orthanc and the listener (issue 20): Orthanc with ``DicomTlsEnabled`` (its certificate,
the CA it trusts, client certificates required) and the listener registered as a modality with ``UseDicomTls``.
The round trip runs over mutual TLS both ways (Orthanc's C-STORE of the study to the listener, the listener's C-STORE
of the SR back); the refusals: a client certificate of another CA, none at all, and an Orthanc certificate the
listener's CA bundle does not vouch for, each one clear line, and nothing stored in Orthanc. Certificates made here
(conftest ``pki``); Orthanc (conftest ``start_orthanc_dicom``) and the listener subprocess (conftest
``listener_kit``) on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdmad_monai.deploy.listener_config import Destination, SendError
from sdmad_monai.deploy.listener_io import send_reports
from sdmad_monai.deploy.security import TlsSettings, client_ssl_context

pytest.importorskip("pynetdicom", reason='pip install -e ".[pacs]"')
pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

PACS_AET = "SDMADPACS"
FAST = ("--settle_seconds", "1", "--backoff", "0.2", "--max_backoff", "1", "--timeout", "10")


@pytest.fixture
def tls(tmp_path, pki) -> SimpleNamespace:
    """One site CA signing Orthanc's and the listener's certificates (both server and client: each listens and sends),
    and a certificate of an unrelated CA."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key, ca_cert, ca = pki.make_ca(folder, "site-dicom-ca")
    other_key, other_cert, other_ca = pki.make_ca(folder, "unrelated-ca")
    orthanc_pem, orthanc_key = pki.issue(folder, ca_key, ca_cert, "orthanc", server=True, client=True)
    listener_pem, _ = pki.issue(folder, ca_key, ca_cert, "listener", server=True, client=True)
    stranger_pem, _ = pki.issue(folder, other_key, other_cert, "stranger", server=True, client=True)
    orthanc_settings = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(orthanc_pem),
        "DicomTlsPrivateKey": str(orthanc_key),
        "DicomTlsTrustedCertificates": str(ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    return SimpleNamespace(
        ca=ca,
        other_ca=other_ca,
        orthanc=orthanc_pem,
        listener=listener_pem,
        stranger=stranger_pem,
        settings=orthanc_settings,
    )


def client_context(ca: Path, cert: Path | None) -> ssl.SSLContext:
    """The listener's own sending context (``--destination_tls --ca_bundle ca [--client_cert cert]``)."""
    return client_ssl_context(TlsSettings.from_options(str(ca), str(cert) if cert else None, None))


def listener_options(tls: SimpleNamespace, client_cert: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("--allow", PACS_AET, *FAST, *extra),
        *("--tls_cert", str(tls.listener), "--tls_client_ca", str(tls.ca)),
        *("--destination_tls", "--ca_bundle", str(tls.ca), "--client_cert", str(client_cert)),
    )


def instance_count(orthanc, listener_kit) -> int:
    return int(listener_kit.HTTP.get(f"{orthanc.url}/statistics", timeout=30).json()["CountInstances"])


def test_study_and_sr_round_trip_over_mutual_tls(start_orthanc_dicom, tls, model, tmp_path, listeners, listener_kit):
    """Orthanc sends a study to the listener over DICOM TLS (its certificate checked against the listener's
    --tls_client_ca); the listener sends the SR back over TLS (Orthanc's certificate checked against --ca_bundle, the
    listener's client certificate against Orthanc's trusted CA): exactly one SR in the Orthanc study. Neither side
    speaks plain DICOM."""
    kit, work = listener_kit, tmp_path / "work"
    orthanc = start_orthanc_dicom(PACS_AET, settings=tls.settings)
    assert not kit.echo(orthanc.dicom_port, calling=kit.LISTENER_AET, called=PACS_AET)  # plain DICOM to Orthanc
    listener = kit.start_listener(
        work,
        model,
        orthanc,
        listeners,
        *listener_options(tls, tls.listener),
        name="tls",
        tls=client_context(tls.ca, tls.orthanc),
    )
    assert not kit.echo(listener.port)  # plain DICOM to the listener
    assert kit.echo(listener.port, tls=client_context(tls.ca, tls.orthanc))
    study, (series,), files = kit.make_study(tmp_path / "study", seed=30)
    study_id, _ = kit.upload(orthanc, files)

    assert kit.send(orthanc, "tls", [study_id]).status_code == 200
    kit.wait_for(lambda: kit.queue_state(work, study) in ("done", "failed"), 60, "the study to be done")
    log = (work / "studies" / study / "study.log").read_text()
    assert kit.queue_state(work, study) == "done", log
    kit.assert_one_sr(orthanc, study_id, study, series, files)
    assert instance_count(orthanc, kit) == len(files) + 1
    assert f"receiving from {PACS_AET}" in log and "DONE: sent 1 SR(s)" in log.strip().splitlines()[-1]
    output = listener.output()
    assert "TLS only, client certificates of site-dicom-ca.pem required" in output
    assert f"SRs go to {PACS_AET}@127.0.0.1:{orthanc.dicom_port} (TLS)" in output
    assert output.count("TLS handshake from 127.0.0.1:") == 1  # the plain echo; Orthanc's associations were TLS


def test_listener_with_a_foreign_client_certificate_is_refused_by_orthanc(
    start_orthanc_dicom, tls, model, tmp_path, listeners, listener_kit
):
    """The listener sends with a client certificate of another CA: Orthanc refuses the TLS handshake; the study ends
    'failed' with one line naming the reason (the certificate refused, the TLS alert), and Orthanc stores no SR."""
    kit, work = listener_kit, tmp_path / "work"
    orthanc = start_orthanc_dicom(PACS_AET, settings=tls.settings)
    options = listener_options(tls, tls.stranger, "--retries", "0")
    kit.start_listener(
        work, model, orthanc, listeners, *options, name="foreign", tls=client_context(tls.ca, tls.orthanc)
    )
    study, _, files = kit.make_study(tmp_path / "study", seed=31)
    study_id, _ = kit.upload(orthanc, files)

    assert kit.send(orthanc, "foreign", [study_id]).status_code == 200  # the way in is fine
    kit.wait_for(lambda: kit.queue_state(work, study) in ("done", "failed"), 60, "the study to end")
    assert kit.queue_state(work, study) == "failed"
    last = (work / "studies" / study / "study.log").read_text().strip().splitlines()[-1]
    destination = f"{PACS_AET}@127.0.0.1:{orthanc.dicom_port}"
    assert (
        f"FAILED: could not send the SR(s) to {destination} after 1 attempt(s) (last: no TLS association with "
        f"{destination}: the TLS handshake failed (the destination refused this client's certificate: " in last
    ), last
    assert "unknown ca" in last, last
    assert kit.sr_instances(orthanc, study_id) == [] and instance_count(orthanc, kit) == len(files)
    assert "Receiving Association failed: TLS error" in orthanc.log.read_text(errors="replace")


REFUSALS = [  # (CA bundle, client certificate, the reason named)
    ("ca", None, "the destination refused this client's certificate: "),  # none: TLS 1.3 "certificate required"
    ("ca", "stranger", "the destination refused this client's certificate: tlsv1 alert unknown ca"),
    ("other_ca", "listener", "self-signed certificate in certificate chain"),  # Orthanc's certificate not trusted
]


def test_refused_sends_name_the_reason(start_orthanc_dicom, tls, tmp_path, listener_kit):
    """The listener's sending step (``send_reports``, the context of ``--destination_tls``) against the TLS Orthanc,
    in this process: no client certificate, one of another CA, or a CA bundle that does not vouch for Orthanc's
    certificate: each refusal is one SendError line naming the TLS reason, and Orthanc stores nothing; with the right
    certificates the same files are stored."""
    orthanc = start_orthanc_dicom(PACS_AET, settings=tls.settings)
    _, _, files = listener_kit.make_study(tmp_path / "study", seed=32, slices=2)
    destination = Destination.parse(f"{PACS_AET}@127.0.0.1:{orthanc.dicom_port}")
    for ca, cert, reason in REFUSALS:
        context = client_context(getattr(tls, ca), getattr(tls, cert) if cert else None)
        with pytest.raises(SendError) as refused:
            send_reports(files, destination, listener_kit.LISTENER_AET, 5.0, context)
        message = str(refused.value)
        assert "\n" not in message and reason in message, (ca, cert, message)
        assert message.startswith(f"no TLS association with {destination}: the TLS handshake failed ("), message
        assert instance_count(orthanc, listener_kit) == 0
    send_reports(files, destination, listener_kit.LISTENER_AET, 5.0, client_context(tls.ca, tls.listener))
    assert instance_count(orthanc, listener_kit) == len(files)  # the right certificates: stored
