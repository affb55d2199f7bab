"""A real PACS for the DICOMweb tests: Orthanc with its DICOMweb plugin, started once per test session; and
``dciodvfy`` (Debian's ``dicom3tools``), the independent validator every DICOM object the project writes must pass.

The configuration is ``bundle/pacs/orthanc.json`` (the walk-through's file) with the test's own values: a free port
on 127.0.0.1, remote access and authentication off, storage in a temporary folder, the DICOM network server off.
Orthanc is stopped by its process id at the end (terminate, then kill if it has not stopped after 10 s).

``orthanc_dicom`` (session) and ``start_orthanc_dicom`` (a function starting more, per test) are the same Orthanc with
its DICOM network server on a free 127.0.0.1 port, for the DICOM listener's tests; they are stopped the same way.

Without the Orthanc binary (or its DICOMweb plugin), or without ``dciodvfy``, the tests that need them are skipped -
except when the environment variable ``CI`` is ``true``: CI must never skip them silently, so there they fail.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
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
    import threading

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
