"""A real PACS for the DICOMweb tests: Orthanc with its DICOMweb plugin, started once per test session; and
``dciodvfy`` (Debian's ``dicom3tools``), the independent validator every DICOM object the project writes must pass.

The configuration is ``bundle/pacs/orthanc.json`` (the walk-through's file) with the test's own values: a free port
on 127.0.0.1, remote access and authentication off, storage in a temporary folder, the DICOM network server off.
Orthanc is stopped by its process id at the end (terminate, then kill if it has not stopped after 10 s).

``orthanc_dicom`` (session) and ``start_orthanc_dicom`` (a function starting more, per test) are the same Orthanc with
its DICOM network server on a free 127.0.0.1 port, for the DICOM listener's tests; they are stopped the same way
(``settings`` adds to the config, e.g. DICOM TLS). ``model``, ``listeners`` and ``listener_kit`` are the listener
subprocess (``python -m sdmad_monai listen``, killed by PID at the end of the test) and its helpers.

Without the Orthanc binary (or its DICOMweb plugin), or without ``dciodvfy``, the tests that need them are skipped -
except when the environment variable ``CI`` is ``true``: CI must never skip them silently, so there they fail.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BUNDLE_CONFIG = REPO / "bundle" / "pacs" / "orthanc.json"
#: Where Debian's ``orthanc`` package puts the binary (``/usr/sbin`` is not on every user's PATH).
DEFAULT_BINARY = "/usr/sbin/Orthanc"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(reason: str, packages: str = "orthanc orthanc-dicomweb") -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} CI=true: these tests must run in CI (apt-get install {packages}).")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def dciodvfy():
    """A function ``path -> list of error lines`` that runs dicom3tools' ``dciodvfy`` on one DICOM file (its
    warnings are not errors and are left out)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        _unavailable("dciodvfy not found; install the Debian package dicom3tools.", "dicom3tools")

    def errors(path) -> list[str]:
        done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)
        lines = (done.stdout + done.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return errors


def orthanc_config(storage: Path, port: int) -> dict:
    """``bundle/pacs/orthanc.json`` with the test values (see the module docstring)."""
    config = json.loads(BUNDLE_CONFIG.read_text(encoding="utf-8"))
    config.update(
        {
            "Name": "SDMAD-TEST-PACS",
            "HttpPort": port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomServerEnabled": False,
            "OrthancExplorerEnabled": False,
        }
    )
    config["DicomWeb"] = {**config.get("DicomWeb", {}), "Enable": True, "Root": "/dicom-web/"}
    return config


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> str:
    """Start Orthanc (see the module docstring) and yield its DICOMweb base URL, ``http://127.0.0.1:<port>/dicom-web``."""
    _orthanc_binary()  # skip (fail under CI) before any work when Orthanc is missing
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = orthanc_config(folder / "storage", port)
    missing = [p for p in config.get("Plugins", []) if not Path(p).exists()]
    if missing:
        _unavailable(f"Orthanc DICOMweb plugin not found ({', '.join(missing)}); install orthanc-dicomweb.")
    base = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in ("NO_PROXY", "no_proxy")}
    for name, value in saved.items():  # a proxy set for the CI machine must not see the test traffic
        os.environ[name] = ",".join(v for v in (value, "127.0.0.1", "localhost") if v)
    try:
        with orthanc_process(
            folder, config, lambda: requests.get(f"{base}/dicom-web/studies", timeout=2).status_code == 200, base
        ):
            yield f"{base}/dicom-web"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------------------------------------------
# Orthanc with its DICOM network server on, for the DICOM listener (tests/deploy/test_listener.py): the same config,
# plus DicomServerEnabled on a free 127.0.0.1 port; modalities are registered over REST by each test.


@dataclass
class OrthancDicom:
    """A running Orthanc: REST base URL, DICOM AE title and port, its process and log."""

    url: str
    aet: str
    dicom_port: int
    process: subprocess.Popen
    log: Path


def _orthanc_binary() -> str:
    binary = os.environ.get("ORTHANC_BINARY") or shutil.which("Orthanc") or DEFAULT_BINARY
    if not Path(binary).is_file():
        _unavailable(f"Orthanc binary not found ({binary}); install the Debian packages orthanc and orthanc-dicomweb.")
    return binary


@contextlib.contextmanager
def orthanc_process(folder: Path, config: dict, ready: Callable[[], bool], where: str) -> Iterator[tuple]:
    """Start Orthanc on ``config`` (written to ``folder/orthanc.json``, owner-only: it may hold a test password), wait
    until ``ready()`` (failing with its log if it exits or does not get there in time), yield ``(process, log)``, and
    stop it by PID at the end."""
    binary = _orthanc_binary()
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    config_path.chmod(0o600)
    log_path = folder / "orthanc.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"Orthanc exited with status {process.returncode} at start-up; log:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            try:
                if ready():
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Orthanc did not answer on {where} within {START_TIMEOUT_S:.0f} s; log:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)
        yield process, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def orthanc_dicom_config(storage: Path, http_port: int, dicom_port: int, aet: str) -> dict:
    """``orthanc_config`` with the DICOM server on ``dicom_port`` (AE title ``aet``), accepting C-STORE and C-ECHO
    from any AE title (Orthanc's defaults, stated), sending to the modalities registered over REST."""
    config = orthanc_config(storage, http_port)
    config.update(
        {
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": dicom_port,
            "DicomModalities": {},
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 30,
        }
    )
    return config


@contextlib.contextmanager
def running_orthanc(
    folder: Path, aet: str = "SDMADPACS", dicom_port: int | None = None, settings: dict | None = None
) -> Iterator[OrthancDicom]:
    """Start Orthanc with its DICOM server (config in ``folder``, updated with ``settings``, e.g. DICOM TLS), wait for
    its REST API, stop it by PID at the end."""
    _orthanc_binary()  # skip (fail under CI) before any work when Orthanc is missing
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {**orthanc_dicom_config(folder / "storage", http_port, dicom_port, aet), **(settings or {})}
    missing = [p for p in config.get("Plugins", []) if not Path(p).exists()]
    if missing:
        _unavailable(f"Orthanc DICOMweb plugin not found ({', '.join(missing)}); install orthanc-dicomweb.")
    base = f"http://127.0.0.1:{http_port}"
    session = requests.Session()
    session.trust_env = False  # no proxy for 127.0.0.1
    try:
        with orthanc_process(
            folder, config, lambda: session.get(f"{base}/system", timeout=2).status_code == 200, base
        ) as (
            process,
            log_path,
        ):
            yield OrthancDicom(base, aet, dicom_port, process, log_path)
    finally:
        session.close()


@pytest.fixture(scope="session")
def orthanc_dicom(tmp_path_factory) -> Iterator[OrthancDicom]:
    """One Orthanc for the session with its DICOM server on a free 127.0.0.1 port (AE title SDMADPACS)."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc_dicom")) as orthanc:
        yield orthanc


@pytest.fixture
def start_orthanc_dicom(tmp_path) -> Iterator[Callable[..., OrthancDicom]]:
    """A function starting another Orthanc with its DICOM server (``aet``, ``dicom_port``: a free port when
    ``None``); every one started is stopped by PID at the end of the test."""
    stack = contextlib.ExitStack()

    def start(aet: str = "SDMADDEST", dicom_port: int | None = None, settings: dict | None = None) -> OrthancDicom:
        folder = tmp_path / f"orthanc-{aet}-{free_port()}"
        return stack.enter_context(running_orthanc(folder, aet, dicom_port, settings))

    with stack:
        yield start


# ------------------------------------------------------------------------------------------------------------------
# A secured Orthanc, for tests/deploy/test_pacs_security.py: the same config with HTTP authentication (registered
# users) and/or TLS (a PEM with the server certificate and its key), on a free 127.0.0.1 port.


@dataclass
class SecuredOrthanc:
    """A running secured Orthanc: its base URL (``http(s)://127.0.0.1:<port>``), DICOMweb URL, log and process."""

    url: str
    dicomweb: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def running_secured_orthanc(
    folder: Path,
    users: dict[str, str] | None = None,
    ssl_certificate: Path | None = None,
    trusted_client_certificates: Path | None = None,
) -> Iterator[SecuredOrthanc]:
    """Start Orthanc with ``AuthenticationEnabled`` and ``RegisteredUsers`` (when ``users``), ``SslEnabled`` with
    ``SslCertificate`` (when ``ssl_certificate``), and client certificates required (``SslVerifyPeers``, when
    ``trusted_client_certificates``); wait until it answers (any HTTP status), stop it by PID at the end."""
    _orthanc_binary()  # skip (fail under CI) before any work when Orthanc is missing
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = orthanc_config(folder / "storage", port)
    missing = [p for p in config.get("Plugins", []) if not Path(p).exists()]
    if missing:
        _unavailable(f"Orthanc DICOMweb plugin not found ({', '.join(missing)}); install orthanc-dicomweb.")
    if users:
        config.update({"AuthenticationEnabled": True, "RegisteredUsers": dict(users)})
    if ssl_certificate is not None:
        config.update({"SslEnabled": True, "SslCertificate": str(ssl_certificate)})
    if trusted_client_certificates is not None:
        config.update({"SslVerifyPeers": True, "SslTrustedClientCertificates": str(trusted_client_certificates)})
    base = f"{'https' if ssl_certificate is not None else 'http'}://127.0.0.1:{port}"

    def listening() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    with orthanc_process(folder, config, listening, base) as (process, log_path):
        time.sleep(0.3)  # the plugins are loaded before the HTTP server starts; give it a moment to accept
        yield SecuredOrthanc(base, f"{base}/dicom-web", process, log_path)


@pytest.fixture(scope="module")
def start_secured_orthanc(tmp_path_factory) -> Iterator[Callable[..., SecuredOrthanc]]:
    """A function starting a secured Orthanc (the arguments of ``running_secured_orthanc`` but the folder); every one
    started is stopped by PID at the end of the test module."""
    stack = contextlib.ExitStack()

    def start(**settings) -> SecuredOrthanc:
        return stack.enter_context(running_secured_orthanc(tmp_path_factory.mktemp("orthanc_secured"), **settings))

    with stack:
        yield start


@contextlib.contextmanager
def tls_front(
    target_port: int, certificate: Path, client_ca: Path | None = None
) -> Iterator[tuple[str, list[BaseException]]]:
    """A TLS terminator on a free 127.0.0.1 port in front of ``127.0.0.1:target_port`` (stdlib ``ssl``): it presents
    ``certificate`` (PEM, certificate + key) and, with ``client_ca``, requires a client certificate signed by it.
    Yields its ``https://127.0.0.1:<port>`` URL and the handshake errors it saw.

    For Orthanc builds whose own TLS crashes: Debian 12's Orthanc 1.10 with civetweb 1.15 and OpenSSL 3 segfaults on
    the first TLS connection (civetweb/civetweb#1316)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(client_ca))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()
    errors: list[BaseException] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def serve(raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            secure = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as error:
            errors.append(error)
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=30)
        back = threading.Thread(target=pipe, args=(upstream, secure), daemon=True)
        back.start()
        pipe(secure, upstream)
        back.join(timeout=30)
        secure.close()
        upstream.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}", errors
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@contextlib.contextmanager
def canned_http_server(status: int, headers: dict[str, str] | None = None) -> Iterator[SimpleNamespace]:
    """An HTTP server on 127.0.0.1 that answers every GET with ``status`` (and ``headers``), empty body.

    Yields ``SimpleNamespace(url, authorizations)``: the DICOMweb base URL and the ``Authorization`` header of each
    request received, in order (``None`` where a request had none; ``len`` is the request count). Stopped on exit.
    """
    seen = SimpleNamespace(url="", authorizations=[])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.authorizations.append(self.headers.get("Authorization"))
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    seen.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def open_canned_http_server() -> Callable[..., contextlib.AbstractContextManager]:
    """``canned_http_server`` (a context manager), for test modules (they cannot import conftest)."""
    return canned_http_server


@pytest.fixture(scope="session")
def open_tls_front() -> Callable[..., contextlib.AbstractContextManager]:
    """``tls_front`` (a context manager), for test modules (they cannot import conftest)."""
    return tls_front


# ------------------------------------------------------------------------------------------------------------------
# Certificates made in the test (the `cryptography` package of the `test` extra): a CA, and certificates it signs.


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, name: str):
    """A self-signed CA: (key, certificate, PEM path of the certificate)."""
    pytest.importorskip("cryptography")  # the `test` extra brings it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def issue(folder: Path, ca_key, ca_cert, name: str, server: bool, client: bool | None = None) -> tuple[Path, Path]:
    """A certificate signed by the CA: (PEM with certificate + key, PEM of the key alone (mode 600)). ``server``: for
    TLS servers (names 127.0.0.1 and localhost); ``client`` (default: ``not server``): for TLS clients; a DICOM node
    that both listens and sends over TLS needs both."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] * server
                + [ExtendedKeyUsageOID.CLIENT_AUTH] * (not server if client is None else client)
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    both, key_only = folder / f"{name}.pem", folder / f"{name}.key"
    both.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    key_only.write_bytes(key_pem)
    for path in (both, key_only):
        path.chmod(0o600)
    return both, key_only


@pytest.fixture(scope="session")
def pki() -> SimpleNamespace:
    """``make_ca`` and ``issue`` (above), for test modules."""
    return SimpleNamespace(make_ca=make_ca, issue=issue)


# ------------------------------------------------------------------------------------------------------------------
# The DICOM listener (``python -m sdmad_monai listen``) in a subprocess against an Orthanc above, and the helpers of
# its tests (tests/deploy/test_listener.py, test_orthanc_dicom_tls.py): fixtures ``model``, ``listeners`` and
# ``listener_kit`` (the helpers, for test modules). With ``tls`` (a client ``ssl.SSLContext``) the listener is one
# that takes DICOM TLS only: its readiness C-ECHO and Orthanc's modality entry (``UseDicomTls``) use TLS.

LISTENER_AET = "SDMAD"
LISTENER_READY_TIMEOUT_S = 120.0
BRAIN = {"BodyPartExamined": "BRAIN"}
_HTTP = requests.Session()
_HTTP.trust_env = False  # never a proxy for 127.0.0.1


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny random-weight detector the other deploy tests use, saved as a checkpoint for the subprocess."""
    import warnings

    from sdmad_monai.networks import SignDrivenDetector

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sign selection kept no prompt")
        return SignDrivenDetector.from_preset("tiny").save(tmp_path_factory.mktemp("model") / "model.pt")


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """``condition()``'s first true value, polled every ``interval`` s; an AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def echo(port: int, calling: str = "SDMADPACS", called: str = LISTENER_AET, tls=None) -> bool:
    """Whether a C-ECHO to 127.0.0.1:``port`` succeeds (over TLS with ``tls``, a client ``ssl.SSLContext``)."""
    import pynetdicom

    ae = pynetdicom.AE(ae_title=calling)
    ae.add_requested_context(pynetdicom.sop_class.Verification)
    ae.acse_timeout = ae.network_timeout = 5
    tls_args = (tls, "127.0.0.1") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


class Listener:
    """``python -m sdmad_monai listen`` in a subprocess, with its output in ``work_dir/../listener-<n>.log``; ``tls``:
    the client context of its readiness C-ECHO (a listener started with ``--tls_cert``)."""

    def __init__(self, work_dir: Path, model: Path, destination: str, *options: str, tls=None):
        self.work_dir, self.port, self.tls = work_dir, free_port(), tls
        self.command = [
            sys.executable,
            "-m",
            "sdmad_monai",
            "listen",
            "--work_dir",
            str(work_dir),
            "--destination",
            destination,
            "--model",
            str(model),
            "--port",
            str(self.port),
            "--ae_title",
            LISTENER_AET,
            *options,
        ]
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def start(self) -> Listener:
        number = len(list(self.work_dir.parent.glob(f"{self.work_dir.name}-listener-*.log")))
        log = self.work_dir.parent / f"{self.work_dir.name}-listener-{number}.log"
        self.logs.append(log)
        with open(log, "wb") as stream:
            self.process = subprocess.Popen(self.command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + LISTENER_READY_TIMEOUT_S
        while not echo(self.port, tls=self.tls):
            if self.process.poll() is not None:
                raise AssertionError(f"listener exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"listener not answering C-ECHO after {LISTENER_READY_TIMEOUT_S:g} s:\n{self.output()}"
                )
            time.sleep(0.2)
        return self

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    """Every listener a test starts is killed (by PID) at its end if it still runs."""
    started: list[Listener] = []
    yield started
    for listener in started:
        listener.close()


def queue_state(work_dir: Path, study: str) -> str | None:
    """The study's state in the listener's queue, read with a separate connection (WAL: readers do not block)."""
    import sqlite3

    path = work_dir / "queue.sqlite3"
    if not path.exists():
        return None
    with sqlite3.connect(path, timeout=10) as db:
        row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study,)).fetchone()
    return row[0] if row else None


def make_study(folder: Path, seed: int = 0, slices: int = 12, series: int = 1) -> tuple[str, list[str], list[Path]]:
    """A brain MR study: ``series`` axial series of ``slices`` instances each; (study UID, series UIDs, files)."""
    import numpy as np
    from pydicom.uid import generate_uid

    from sdmad_monai.deploy.demo import write_dicom_series

    study, series_uids, files = generate_uid(), [], []
    for number in range(series):
        uid = generate_uid()
        volume = np.random.default_rng(seed * 10 + number).uniform(0, 1000, (32, 32, slices))
        files += write_dicom_series(
            volume,
            folder / f"s{number}",
            "axial",
            study,
            uid,
            series_number=number + 1,
            attributes={**BRAIN, "PatientID": f"sdmad-listener-{seed}"},
        )
        series_uids.append(uid)
    return study, series_uids, files


def upload(orthanc, paths) -> tuple[str, list[str]]:
    """POST each file to Orthanc; the Orthanc IDs of the (last) study and of each instance."""
    study, instances = "", []
    for path in paths:
        answer = _HTTP.post(f"{orthanc.url}/instances", data=Path(path).read_bytes(), timeout=30)
        answer.raise_for_status()
        study = answer.json()["ParentStudy"]
        instances.append(answer.json()["ID"])
    return study, instances


def register(orthanc, name: str, port: int, aet: str = LISTENER_AET, tls: bool = False) -> None:
    """Register 127.0.0.1:``port`` as Orthanc modality ``name`` (over DICOM TLS with ``tls``)."""
    modality = {"AET": aet, "Host": "127.0.0.1", "Port": port, **({"UseDicomTls": True} if tls else {})}
    _HTTP.put(f"{orthanc.url}/modalities/{name}", json=modality, timeout=30).raise_for_status()


def send(orthanc, name: str, resources: list[str], asynchronous: bool = False) -> requests.Response:
    """Orthanc sends the resources (studies, series or instances) to the modality by C-STORE."""
    body = {"Resources": resources, ("Asynchronous" if asynchronous else "Synchronous"): True}
    return _HTTP.post(f"{orthanc.url}/modalities/{name}/store", json=body, timeout=120)


def sr_instances(orthanc, study_id: str) -> list[str]:
    """Orthanc IDs of every SR instance of the study (REST: /studies/{id}/series, Modality SR)."""
    series = _HTTP.get(f"{orthanc.url}/studies/{study_id}/series", timeout=30).json()
    return [i for s in series if s["MainDicomTags"].get("Modality") == "SR" for i in s["Instances"]]


def sr_dataset(orthanc, instance_id: str):
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(_HTTP.get(f"{orthanc.url}/instances/{instance_id}/file", timeout=30).content))


def assert_one_sr(orthanc, study_id: str, study: str, series: str, files):
    """Exactly one SR in the Orthanc study; it references the source series and every instance of it."""
    import pydicom

    from sdmad_monai.deploy import read_sr_findings

    (instance,) = sr_instances(orthanc, study_id)
    sr = sr_dataset(orthanc, instance)
    assert sr.StudyInstanceUID == study
    findings = read_sr_findings(sr)
    assert {uid: sorted(uids) for uid, uids in findings["evidence"].items()} == {
        series: sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)
    }
    return sr


def start_listener(work_dir, model, orthanc, listeners, *options: str, name: str | None = None, tls=None) -> Listener:
    """A listener sending to ``orthanc`` (``options`` default: ``--allow <its AE title>``), registered there as
    modality ``name`` (default: the work folder's name); ``tls``: see :class:`Listener` (registered with
    ``UseDicomTls``)."""
    options = options or ("--allow", orthanc.aet)
    listener = Listener(work_dir, model, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", *options, tls=tls)
    listeners.append(listener)
    listener.start()
    register(orthanc, name or work_dir.name, listener.port, tls=tls is not None)
    return listener


@pytest.fixture(scope="session")
def listener_kit() -> SimpleNamespace:
    """The listener helpers above, for test modules (they cannot import conftest)."""
    return SimpleNamespace(
        LISTENER_AET=LISTENER_AET,
        HTTP=_HTTP,
        Listener=Listener,
        wait_for=wait_for,
        echo=echo,
        queue_state=queue_state,
        make_study=make_study,
        upload=upload,
        register=register,
        send=send,
        sr_instances=sr_instances,
        sr_dataset=sr_dataset,
        assert_one_sr=assert_one_sr,
        start_listener=start_listener,
    )
