"""Connecting to a secured PACS (sdmad_monai.deploy.security): credentials from an environment variable or an
owner-only file, TLS with a CA given to the client, plain http:// refused off loopback, secrets redacted.

Against real Orthancs (conftest.running_secured_orthanc): one with ``AuthenticationEnabled`` and a registered user,
one with ``SslEnabled`` and a certificate made here (a CA the client is given; an unrelated CA that is refused). Every
output of the runs (stdout, stderr, log records, the written SR and JSON files) is searched for the secret."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

from sdmad_monai.cli import main
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.dicomweb import DicomWebConnection, process_study
from sdmad_monai.deploy.security import (
    PacsCredentials,
    PacsSecurityError,
    RedactingFilter,
    TlsSettings,
    check_url,
    is_loopback_host,
    load_credentials,
    make_session,
    redact,
)
from sdmad_monai.networks import SignDrivenDetector

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

BRAIN = {"BodyPartExamined": "BRAIN"}
USER = "sdmad"


def volume(seed=0):
    return np.random.default_rng(seed).uniform(0, 1000, (32, 32, 12))


def secret_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / f"pacs-{secrets.token_hex(4)}.secret"
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def forms(secret: str, user: str = USER) -> list[str]:
    """The secret as it could leak: itself, and inside an HTTP Basic header."""
    return [secret, base64.b64encode(f"{user}:{secret}".encode()).decode()]


def assert_not_in_outputs(secret: str, texts: list[str], folders: list[Path] = ()) -> None:
    """No form of ``secret`` in any text, nor in any file under ``folders`` (read as bytes)."""
    for form in forms(secret):
        for text in texts:
            assert form not in text
        for folder in folders:
            for path in Path(folder).rglob("*"):
                if path.is_file():
                    assert form.encode() not in path.read_bytes(), path


def srs_in(client: DICOMwebClient, study: str) -> set[str]:
    """The SOPInstanceUIDs of the study's SR instances, asked with the client's (right) credentials / CA."""
    return {
        instance["00080018"]["Value"][0]
        for series in client.search_for_series(study_instance_uid=study)
        if series["00080060"]["Value"][0] == "SR"
        for instance in client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series["0020000E"]["Value"][0]
        )
    }


# ---------------------------------------------------------------------------------------------- no server needed
def test_credentials_from_env_and_owner_only_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SDMAD_TEST_AUTH", "alice:pa:ss word")
    basic = load_credentials(auth_env="SDMAD_TEST_AUTH")
    assert (basic.scheme, basic.username, basic.secret) == ("basic", "alice", "pa:ss word")
    assert "pa:ss word" not in repr(basic) and "pa:ss word" not in basic.describe()
    token = secrets.token_urlsafe(24)
    bearer = load_credentials(auth_file=secret_file(tmp_path, f"bearer:{token}"))
    assert (bearer.scheme, bearer.username, bearer.header()) == ("bearer", None, f"Bearer {token}")

    world = secret_file(tmp_path, "alice:secret", 0o644)
    with pytest.raises(PacsSecurityError, match=rf"readable by its owner only: chmod 600 {world}"):
        load_credentials(auth_file=world)
    with pytest.raises(PacsSecurityError, match="chmod 600"):
        load_credentials(auth_file=secret_file(tmp_path, "alice:secret", 0o640))
    with pytest.raises(PacsSecurityError, match="not set or empty"):
        load_credentials(auth_env="SDMAD_TEST_UNSET_VARIABLE")
    with pytest.raises(PacsSecurityError, match="not the secret itself") as info:  # the secret given by mistake
        load_credentials(auth_env="alice:hunter22")
    assert "hunter22" not in str(info.value)
    with pytest.raises(PacsSecurityError, match="not both"):
        load_credentials(auth_env="SDMAD_TEST_AUTH", auth_file=world)
    with pytest.raises(PacsSecurityError, match="is not '<user>:<password>'"):
        load_credentials(auth_file=secret_file(tmp_path, "no-colon-here"))
    with pytest.raises(FileNotFoundError):
        load_credentials(auth_file=tmp_path / "absent.secret")
    assert load_credentials() is None


def test_plain_http_refused_off_loopback_without_resolving(monkeypatch, caplog):
    def no_dns(*args, **kwargs):
        raise AssertionError("a name was resolved")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for host in ("localhost", "127.0.0.1", "127.8.9.10", "[::1]"):
        assert check_url(f"http://{host}:8042/dicom-web") and is_loopback_host(host)
    check_url("https://pacs.example.org/dicom-web")  # TLS: any host
    for url in ("http://pacs.example.org/dicom-web", "http://10.0.0.5:8042/dicom-web", "http://127.0.0.1.nip.io/"):
        with pytest.raises(PacsSecurityError, match="Refusing plain http://.*--allow_insecure"):
            check_url(url)
        with pytest.raises(PacsSecurityError, match="Refusing plain http://"):
            DicomWebConnection(url)
    with caplog.at_level(logging.WARNING, logger="sdmad_monai.deploy.security"):
        for _ in range(3):
            check_url("http://insecure-once.example.org/dicom-web", allow_insecure=True)
    assert caplog.text.count("--allow_insecure: talking plain http:// to insecure-once.example.org") == 1
    with pytest.raises(PacsSecurityError, match="has credentials in it") as info:
        DicomWebConnection("https://alice:hunter22@pacs.example.org/dicom-web")
    assert "hunter22" not in str(info.value) and "https://***@pacs.example.org" in str(info.value)


def test_redaction_of_logs_messages_and_headers(tmp_path):
    token = secrets.token_urlsafe(24)
    PacsCredentials("bearer", None, token, "test")  # loading registers the secret
    text = (
        f"GET https://bob:pw123456@pacs/x {{'Authorization': 'Bearer {token}'}} "
        "Authorization: Basic YWxpY2U6c2VjcmV0cw== plain " + token
    )
    clean = redact(text)
    assert token not in clean and "pw123456" not in clean and "YWxpY2U6c2VjcmV0cw==" not in clean
    assert "https://***@pacs/x" in clean and "Bearer ***" in clean
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s to %s", (f"Bearer {token}", "pacs"), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "sent Bearer *** to pacs"
    try:
        raise RuntimeError(f"boom {token}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactingFilter().filter(record)
    assert token not in logging.Formatter().format(record)


def test_session_and_tls_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    session = make_session(None, TlsSettings.from_options(ca_bundle=ca))
    assert session.verify == str(ca) and "Authorization" not in session.headers
    # requests would let REQUESTS_CA_BUNDLE replace the session's CA bundle; ours keeps it
    os.environ.setdefault("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert session.merge_environment_settings("https://pacs/", {}, None, None, None)["verify"] == str(ca)
    assert make_session().verify is True  # verification is always on
    with pytest.raises(FileNotFoundError, match="--ca_bundle"):
        TlsSettings.from_options(ca_bundle=tmp_path / "absent.pem")
    key = secret_file(tmp_path, "KEY", 0o644)
    with pytest.raises(PacsSecurityError, match="needs --client_cert"):
        TlsSettings.from_options(client_key=key)
    with pytest.raises(PacsSecurityError, match="chmod 600"):
        TlsSettings.from_options(client_cert=ca, client_key=key)


def test_bearer_token_sent_and_redacted(tmp_path, monkeypatch, capsys, caplog, model, open_canned_http_server):
    token = secrets.token_urlsafe(32)
    monkeypatch.setenv("SDMAD_TEST_TOKEN", f"bearer:{token}")
    answer = open_canned_http_server(401, {"WWW-Authenticate": 'Bearer realm="pacs"'})
    with answer as server, caplog.at_level(logging.DEBUG):
        with pytest.raises(SystemExit) as info:
            main(
                ["process_study", "--url", server.url, "--study_uid", "1.2.3", "--model", str(model)]
                + ["--auth_env", "SDMAD_TEST_TOKEN", "--retries", "0"]
            )
    assert info.value.code == 1 and server.authorizations == [f"Bearer {token}"]  # sent once: a 401 is not retried
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("sdmad: error: DICOMweb server ")
    assert "HTTP 401" in err and "Check the credentials (a Bearer token (from environment variable" in err
    assert_not_in_outputs(token, [out, err, caplog.text])


def test_cli_refuses_plain_http_to_a_remote_name(tmp_path, monkeypatch, capsys, model):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("a name was resolved"))
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("a request was sent"))
    url = "http://pacs.example.org/dicom-web"
    with pytest.raises(SystemExit) as info:
        main(["process_study", "--url", url, "--study_uid", "1.2.3", "--model", str(model)])
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"sdmad: error: Refusing plain http:// to pacs.example.org ({url}): credentials and patient data would "
        "cross the network unencrypted. Use https://, or pass --allow_insecure if this network is trusted."
    ]


# ------------------------------------------------------------------------------------ Orthanc with authentication
@pytest.fixture(scope="module")
def auth_pacs(start_secured_orthanc):
    password = secrets.token_urlsafe(18)
    return start_secured_orthanc(users={USER: password}), password


def authed_client(url: str, password: str) -> DICOMwebClient:
    session = requests.Session()
    session.auth = (USER, password)
    client = DICOMwebClient(url, session=session)
    client.set_http_retry_params(retry=False)
    return client


def run_cli(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m sdmad_monai ...`` in its own process (the logging of a real run), stdout and stderr captured."""
    environment = {**os.environ, **(env or {})}
    environment.pop("SDMAD_DEBUG", None)
    environment["NO_PROXY"] = environment["no_proxy"] = "127.0.0.1,localhost"
    return subprocess.run(
        [sys.executable, "-m", "sdmad_monai", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        cwd=cwd or REPO,
        check=False,
    )


def test_basic_auth_round_trip_and_refusals(auth_pacs, tmp_path, model):
    pacs, password = auth_pacs
    client = authed_client(pacs.dicomweb, password)
    with pytest.raises(requests.HTTPError):  # the PACS does ask for credentials
        DICOMwebClient(pacs.dicomweb).search_for_studies()
    study, axial = generate_uid(), generate_uid()
    files = write_dicom_series(volume(0), tmp_path / "ax", "axial", study, axial, attributes=BRAIN)
    client.store_instances([pydicom.dcmread(p) for p in files])
    common = ["process_study", "--url", pacs.dicomweb, "--study_uid", study, "--model", str(model)]
    common += ["--backoff", "0.01", "--retries", "1"]

    # wrong password: one line, nothing stored
    wrong = secret_file(tmp_path, f"{USER}:{password}x")
    done = run_cli([*common, "--auth_file", str(wrong)])
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sdmad: error: DICOMweb server {pacs.dicomweb} refused to search the series of study")
    assert "HTTP 401" in last and f"Check the credentials (HTTP Basic as user 'sdmad' (from file {wrong}))" in last
    assert [line for line in done.stderr.splitlines() if line.startswith("sdmad: error")] == [last]
    assert srs_in(client, study) == set()
    assert_not_in_outputs(f"{password}x", [done.stdout, done.stderr])

    # no credentials at all: the server's 401, with the options to pass
    done = run_cli(common)
    assert done.returncode == 1 and "HTTP 401" in done.stderr and "pass --auth_file or --auth_env" in done.stderr
    # a missing token variable: refused before the PACS is contacted
    done = run_cli([*common, "--auth_env", "SDMAD_TEST_NOT_SET"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "sdmad: error: Environment variable SDMAD_TEST_NOT_SET (--auth_env) is not set or empty; set it to "
        "'<user>:<password>' or 'bearer:<token>'."
    ]
    # a world-readable secrets file: refused, with the fix
    readable = secret_file(tmp_path, f"{USER}:{password}", 0o644)
    done = run_cli([*common, "--auth_file", str(readable)])
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].endswith(f"chmod 600 {readable}")
    assert srs_in(client, study) == set()

    # the right credentials, from a file: the round trip, the SR stored once; the password in no output
    out = tmp_path / "out"
    right = secret_file(tmp_path, f"{USER}:{password}")
    done = run_cli([*common, "--auth_file", str(right), "--output_dir", str(out)])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("stored: SR ") and lines[0].endswith(f"for series {axial}")
    stored = srs_in(client, study)
    assert len(stored) == 1
    document = json.loads((out / f"sdmad_sr_{axial}.json").read_text())
    assert document["pacs"] == {"url": pacs.dicomweb, "status": "stored"}
    # ... and from an environment variable: found there, not stored again
    done_env = run_cli(
        [*common, "--auth_env", "SDMAD_TEST_PACS_AUTH"], env={"SDMAD_TEST_PACS_AUTH": f"{USER}:{password}"}
    )
    assert done_env.returncode == 0, done_env.stderr
    assert done_env.stdout.splitlines()[0].startswith("already in PACS: SR ")
    assert srs_in(client, study) == stored
    assert_not_in_outputs(password, [done.stdout, done.stderr, done_env.stdout, done_env.stderr], [out])


def test_library_round_trip_logs_redacted(auth_pacs, tmp_path, caplog):
    """The library entry point (process_study with credentials) logs nothing secret, even at DEBUG."""
    pacs, password = auth_pacs
    client = authed_client(pacs.dicomweb, password)
    study, axial = generate_uid(), generate_uid()
    files = write_dicom_series(volume(1), tmp_path / "ax", "axial", study, axial, attributes=BRAIN)
    client.store_instances([pydicom.dcmread(p) for p in files])
    credentials = PacsCredentials("basic", USER, password, "test")
    with caplog.at_level(logging.DEBUG):
        reports = process_study(
            pacs.dicomweb,
            study,
            SignDrivenDetector.from_preset("tiny"),
            output_dir=tmp_path / "out",
            credentials=credentials,
            backoff=0.01,
        )
    assert [r.status for r in reports] == ["stored"] and len(srs_in(client, study)) == 1
    assert_not_in_outputs(password, [caplog.text], [tmp_path / "out"])


# --------------------------------------------------------------------------------------------- Orthanc with TLS
@dataclass
class TlsPacs:
    dicomweb: str  # https://127.0.0.1:<port>/dicom-web
    how: str  # "Orthanc SslEnabled" or "TLS front" (see conftest.tls_front)
    ca: Path
    wrong_ca: Path
    client_dicomweb: str  # the same Orthanc behind a TLS front that requires a client certificate
    client_pem: Path  # the client certificate + key
    client_cert: Path  # the client certificate alone
    client_key: Path  # the client key alone (mode 600)


@pytest.fixture(scope="module")
def tls_pacs(tmp_path_factory, start_secured_orthanc, open_tls_front, pki):
    """Orthanc with ``SslEnabled`` and a certificate of a CA made here; where this Orthanc build's TLS crashes
    (Debian 12: civetweb 1.15 with OpenSSL 3), the same certificate on a TLS front before a plain Orthanc."""
    folder = tmp_path_factory.mktemp("orthanc_tls")
    ca_key, ca_cert, ca = pki.make_ca(folder, "sdmad-test-ca")
    _, _, wrong_ca = pki.make_ca(folder, "unrelated-ca")
    server_pem, _ = pki.issue(folder, ca_key, ca_cert, "sdmad-test-pacs", server=True)
    client_pem, client_key = pki.issue(folder, ca_key, ca_cert, "sdmad-test-client", server=False)
    client_cert = folder / "sdmad-test-client.crt"
    client_cert.write_text(client_pem.read_text().split("-----BEGIN PRIVATE KEY-----")[0])
    native = start_secured_orthanc(ssl_certificate=server_pem)
    try:
        requests.get(f"{native.url}/system", verify=str(ca), timeout=10).raise_for_status()
        working = native.process.poll() is None
    except requests.RequestException:
        working = False
    with contextlib.ExitStack() as stack:
        plain = start_secured_orthanc()
        port = int(plain.url.rsplit(":", 1)[1])
        if working:
            url, how = native.dicomweb, "Orthanc SslEnabled"
        else:
            front, _ = stack.enter_context(open_tls_front(port, server_pem))
            url, how = f"{front}/dicom-web", "TLS front"
        client_front, _ = stack.enter_context(open_tls_front(port, server_pem, client_ca=ca))
        yield TlsPacs(url, how, ca, wrong_ca, f"{client_front}/dicom-web", client_pem, client_cert, client_key)


def tls_client(url: str, ca: Path) -> DICOMwebClient:
    client = DICOMwebClient(url, session=make_session(None, TlsSettings(ca_bundle=ca)))
    client.set_http_retry_params(retry=False)
    return client


def test_tls_round_trip_with_the_right_ca_and_refusal_of_a_wrong_one(tls_pacs, tmp_path, capsys, caplog, model):
    pacs, ca, wrong_ca = tls_pacs, tls_pacs.ca, tls_pacs.wrong_ca
    assert pacs.dicomweb.startswith("https://127.0.0.1:")
    client = tls_client(pacs.dicomweb, ca)
    study, axial = generate_uid(), generate_uid()
    files = write_dicom_series(volume(2), tmp_path / "ax", "axial", study, axial, attributes=BRAIN)
    client.store_instances([pydicom.dcmread(p) for p in files])
    common = ["process_study", "--url", pacs.dicomweb, "--study_uid", study, "--model", str(model)]
    common += ["--backoff", "0.01"]

    # a wrong CA: one line, not retried, nothing stored
    with pytest.raises(SystemExit) as info:
        main([*common, "--ca_bundle", str(wrong_ca)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"sdmad: error: TLS connection to DICOMweb server {pacs.dicomweb} failed (")
    assert "certificate verify failed" in last and f"not trusted by --ca_bundle {wrong_ca}" in last
    assert "; retrying in" not in caplog.text and srs_in(client, study) == set()  # not retried
    # no CA given: the system CAs do not know the test CA either
    with pytest.raises(SystemExit):
        main(common)
    assert "not trusted by the system CAs" in capsys.readouterr().err and srs_in(client, study) == set()

    # the right CA: the round trip
    main([*common, "--ca_bundle", str(ca), "--output_dir", str(tmp_path / "out")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stored: SR ") and lines[0].endswith(f"for series {axial}")
    assert len(srs_in(client, study)) == 1


def test_client_certificate(tls_pacs, tmp_path, capsys, model):
    """A PACS that asks for a client certificate: refused without one (one line), served with one (in one PEM, or
    certificate and key apart); the client key must be owner-only."""
    pacs = tls_pacs
    client = tls_client(pacs.dicomweb, pacs.ca)
    study, axial = generate_uid(), generate_uid()
    files = write_dicom_series(volume(3), tmp_path / "ax", "axial", study, axial, attributes=BRAIN)
    client.store_instances([pydicom.dcmread(p) for p in files])
    common = ["process_study", "--url", pacs.client_dicomweb, "--study_uid", study, "--model", str(model)]
    common += ["--backoff", "0.01", "--ca_bundle", str(pacs.ca)]
    with pytest.raises(SystemExit):
        main(common)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"sdmad: error: TLS connection to DICOMweb server {pacs.client_dicomweb} failed")
    assert "--client_cert" in err[-1] and srs_in(client, study) == set()
    main([*common, "--client_cert", str(pacs.client_pem)])
    assert capsys.readouterr().out.startswith("stored: SR ")
    main([*common, "--client_cert", str(pacs.client_cert), "--client_key", str(pacs.client_key)])
    assert capsys.readouterr().out.startswith("already in PACS: SR ") and len(srs_in(client, study)) == 1
