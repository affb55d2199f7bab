"""Connecting to a secured PACS: credentials, TLS, the plain-``http://`` rule and redaction of secrets.

Every DICOMweb entry point (``sdmad process_study``, :class:`~sdmad_monai.deploy.dicomweb.DicomWebConnection`) builds
its ``requests.Session`` with :func:`make_session`, from:

- :class:`PacsCredentials`: HTTP Basic or a Bearer token, read by :func:`load_credentials` from an environment
  variable (``--auth_env VAR``) or a file only its owner can read (``--auth_file PATH``; refused when group or others
  have any permission on it: ``chmod 600 PATH``), never from a command-line value. The secret is one line:

  - ``<user>:<password>`` for HTTP Basic (the user name has no ``:``; the password may);
  - ``bearer:<token>`` for ``Authorization: Bearer <token>``.

- :class:`TlsSettings`: certificate verification is always on (the system CAs, or ``--ca_bundle PEM``); a client
  certificate (``--client_cert PEM`` with its key inside or in ``--client_key PEM``, owner-only like a secrets file)
  when the PACS asks for one; ``--allow_insecure`` to permit plain ``http://`` to a host that is not loopback.

:func:`check_url` refuses plain ``http://`` to anything but a literal loopback host (``localhost``, 127.0.0.0/8,
``::1``; nothing is resolved, so a name such as ``pacs.local`` is refused without a DNS query) unless
``allow_insecure``, and then warns once per host; it also refuses URLs with embedded credentials.

:func:`redact` removes URL user info, ``Authorization`` header values and every loaded secret from a text;
:class:`RedactingFilter` applies it to log records (:func:`install_log_redaction` puts it on the root logger's
handlers), and the DICOMweb errors and the JSON copies written by ``process_study`` pass through it.

DICOM networking (DIMSE, the listener ``sdmad listen``) uses TLS as DICOM PS3.15 Annex B describes it (the Basic /
BCP 195 TLS secure transport profiles: TLS 1.2 or newer, certificates on both sides where the site asks for them):

- :class:`ServerTls` (``--tls_cert PEM [--tls_key PEM] [--tls_client_ca PEM]``): the listener's certificate; with it
  the listener accepts TLS associations only, and with ``--tls_client_ca`` only from senders whose certificate that
  CA signed (mutual TLS). :meth:`ServerTls.ssl_context` gives the server context; a failed handshake is logged with
  the peer's address and reason, and a peer that does not finish its handshake in time is dropped.
- :func:`client_ssl_context` (``--destination_tls`` with ``--ca_bundle`` / ``--client_cert`` / ``--client_key``, the
  options of ``process_study``): the context for sending SRs; the destination's certificate is verified against the
  CA bundle (or the system CAs) and must name the destination host.
- :func:`check_plain_dimse`: plain (unencrypted) DIMSE to or on an address that is not literally loopback is refused
  unless ``--allow_insecure`` (then warned once per host), the same rule as plain ``http://``.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from ..errors import redact, register_secrets

__all__ = [
    "PacsCredentials",
    "PacsSecurityError",
    "RedactingFilter",
    "ServerTls",
    "TlsSettings",
    "check_plain_dimse",
    "check_url",
    "client_ssl_context",
    "install_log_redaction",
    "is_loopback_host",
    "load_credentials",
    "make_session",
    "redact",
    "redact_json",
]

logger = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_LOCK = threading.Lock()
#: the hosts already warned about (``allow_insecure``): one warning per host per process
_WARNED: set[tuple[str, str]] = set()


class PacsSecurityError(ValueError):
    """A credentials, TLS or URL setting is refused; the message says how to fix it and never holds the secret."""


# ----------------------------------------------------------------------------------------------------- redaction
# :func:`redact` itself lives in sdmad_monai.errors (which imports nothing heavy), so that every one-line error and
# traceback file is redacted too; it is re-exported here.


def redact_json(value: Any) -> Any:
    """A JSON-like value with :func:`redact` applied to every string (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(k) if isinstance(k, str) else k: redact_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Applies :func:`redact` to a record's message and traceback (put it on handlers: a logger's filters do not see
    records of its children)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(*loggers: logging.Logger) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on every handler of the root logger (and of ``loggers``); idempotent."""
    found = [f for h in logging.getLogger().handlers for f in h.filters if isinstance(f, RedactingFilter)]
    redacting = found[0] if found else RedactingFilter()
    for owner in (logging.getLogger(), *loggers):
        for handler in owner.handlers:
            if redacting not in handler.filters:
                handler.addFilter(redacting)
    return redacting


# ---------------------------------------------------------------------------------------------------- credentials
@dataclass(frozen=True)
class PacsCredentials:
    """HTTP credentials for a DICOMweb server.

    Attributes:
        scheme: ``"basic"`` or ``"bearer"``.
        username: the Basic user name (``None`` for a token).
        secret: the password or the token (never shown: not in ``repr``, removed from logs by :func:`redact`).
        source: where it was read, in words (``environment variable PACS_AUTH``, ``file /etc/sdmad/pacs.secret``).
    """

    scheme: Literal["basic", "bearer"]
    username: str | None
    secret: str = field(repr=False)
    source: str = ""

    def __post_init__(self) -> None:
        if self.scheme not in ("basic", "bearer"):
            raise PacsSecurityError(f"Unknown authentication scheme {self.scheme!r}; expected basic or bearer.")
        if not self.secret or (self.scheme == "basic" and not self.username):
            raise PacsSecurityError(f"The credentials from {self.source or 'the caller'} are empty.")
        header = self.header()
        register_secrets(self.secret, header.split(" ", 1)[1])

    def header(self) -> str:
        """The ``Authorization`` header value."""
        if self.scheme == "bearer":
            return f"Bearer {self.secret}"
        token = base64.b64encode(f"{self.username}:{self.secret}".encode()).decode("ascii")
        return f"Basic {token}"

    def describe(self) -> str:
        """``HTTP Basic as user 'sdmad' (from file ...)`` - no secret."""
        who = f"HTTP Basic as user {self.username!r}" if self.scheme == "basic" else "a Bearer token"
        return f"{who} (from {self.source})" if self.source else who


def parse_secret(text: str, source: str) -> PacsCredentials:
    """``<user>:<password>`` or ``bearer:<token>`` (one line; surrounding white space is ignored)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise PacsSecurityError(
            f"The secret in {source} must be one line, '<user>:<password>' (HTTP Basic) or 'bearer:<token>'; "
            f"found {len(lines)} lines."
        )
    value = lines[0].strip()
    kind, colon, rest = value.partition(":")
    if not colon or not kind or not rest:
        raise PacsSecurityError(
            f"The secret in {source} is not '<user>:<password>' (HTTP Basic) or 'bearer:<token>' (no ':' with text "
            "on both sides)."
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise PacsSecurityError(f"The secret in {source} holds control characters (not shown); remove them.")
    if kind.lower() == "bearer":
        token = rest.strip()
        if not re.fullmatch(r"[\x21-\x7e]+", token):
            raise PacsSecurityError(
                f"The token in {source} must be printable ASCII without spaces (as an RFC 6750 token); not shown."
            )
        return PacsCredentials("bearer", None, token, source)
    return PacsCredentials("basic", kind, rest, source)


def _check_owner_only(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PacsSecurityError(
            f"{what} {path} can be read or changed by other users (mode {stat.filemode(mode)}); it must be "
            f"readable by its owner only: chmod 600 {path}"
        )


def load_credentials(auth_env: str | None = None, auth_file: str | Path | None = None) -> PacsCredentials | None:
    """The credentials from the environment variable named ``auth_env`` or from ``auth_file`` (one of them, or none:
    ``None``).

    Raises:
        PacsSecurityError: both given, ``auth_env`` is not a variable name (a secret passed by mistake is not
            echoed) or is unset/empty, the file can be read by group or others, or the secret is malformed.
        FileNotFoundError: ``auth_file`` does not exist.
    """
    if auth_env is not None and auth_file is not None:
        raise PacsSecurityError("Pass either --auth_env or --auth_file, not both.")
    if auth_env is not None:
        name = str(auth_env)
        if not _ENV_NAME.match(name):
            raise PacsSecurityError(
                "--auth_env takes the NAME of an environment variable holding the secret (e.g. --auth_env "
                "PACS_AUTH), not the secret itself; the value given is not a variable name (not shown)."
            )
        value = os.environ.get(name)
        if not value or not value.strip():
            raise PacsSecurityError(
                f"Environment variable {name} (--auth_env) is not set or empty; set it to '<user>:<password>' or "
                "'bearer:<token>'."
            )
        return parse_secret(value, f"environment variable {name}")
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Secrets file {path} (--auth_file) does not exist.")
        _check_owner_only(path, "Secrets file")
        return parse_secret(path.read_text(encoding="utf-8"), f"file {path}")
    return None


# ------------------------------------------------------------------------------------------------------------ TLS
def _pem_files(*options: tuple[str, str | Path | None]) -> dict[str, Path | None]:
    """``{option: path}`` of the named PEM files (``None`` where not given).

    Raises:
        FileNotFoundError: a named file does not exist (the message names the option).
    """
    paths: dict[str, Path | None] = {}
    for option, value in options:
        path = Path(value).expanduser() if value is not None else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{option} {path} does not exist (expected a PEM file).")
        paths[option] = path
    return paths


@dataclass(frozen=True)
class TlsSettings:
    """TLS and transport settings.

    Attributes:
        ca_bundle: PEM file of the CA(s) that signed the PACS's certificate (default: the system CAs).
        client_cert: PEM client certificate, when the PACS asks for one (its key inside, or in ``client_key``).
        client_key: PEM private key of ``client_cert`` (must be owner-only, like a secrets file).
        allow_insecure: permit plain ``http://`` to a host that is not loopback (warned once).
    """

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    allow_insecure: bool = False

    @classmethod
    def from_options(
        cls,
        ca_bundle: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        allow_insecure: bool = False,
    ) -> TlsSettings:
        """Checked settings: the files exist, a key has a certificate, a key file is owner-only.

        Raises:
            FileNotFoundError: a named file does not exist.
            PacsSecurityError: ``client_key`` without ``client_cert``, or a key file others can read.
        """
        paths = _pem_files(("--ca_bundle", ca_bundle), ("--client_cert", client_cert), ("--client_key", client_key))
        if paths["--client_key"] is not None and paths["--client_cert"] is None:
            raise PacsSecurityError("--client_key needs --client_cert (the certificate of that key).")
        if paths["--client_key"] is not None:
            _check_owner_only(paths["--client_key"], "Client key file")
        if not isinstance(allow_insecure, bool):
            raise PacsSecurityError(f"--allow_insecure is a flag (true/false), got {allow_insecure!r}.")
        return cls(paths["--ca_bundle"], paths["--client_cert"], paths["--client_key"], allow_insecure)

    @property
    def verify(self) -> str | bool:
        """``requests``' ``verify``: the CA bundle, or ``True`` (the system CAs); never ``False``."""
        return str(self.ca_bundle) if self.ca_bundle is not None else True

    @property
    def cert(self) -> str | tuple[str, str] | None:
        """``requests``' ``cert``."""
        if self.client_cert is None:
            return None
        return (str(self.client_cert), str(self.client_key)) if self.client_key is not None else str(self.client_cert)


# ----------------------------------------------------------------------------------------------------------- URLs
def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is literally a loopback address: ``localhost``, 127.0.0.0/8 or ``::1`` (nothing resolved)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure: bool = False) -> str:
    """The DICOMweb base URL, refused when it carries credentials or is plain ``http://`` to a host that is not
    literally loopback (unless ``allow_insecure``: then warned once per host). Nothing is resolved or contacted.

    Raises:
        PacsSecurityError: as above; the message shows the URL with any user info redacted.
    """
    url = str(url).strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise PacsSecurityError(f"DICOMweb URL {redact(url)} cannot be parsed.") from None
    if "@" in parts.netloc:
        raise PacsSecurityError(
            f"DICOMweb URL {redact(url)} has credentials in it; put them in a secrets file (--auth_file) or an "
            "environment variable (--auth_env) instead, never in the URL or on the command line."
        )
    if parts.scheme.lower() == "http" and host and not is_loopback_host(host):
        if not allow_insecure:
            raise PacsSecurityError(
                f"Refusing plain http:// to {host} ({url}): credentials and patient data would cross the network "
                "unencrypted. Use https://, or pass --allow_insecure if this network is trusted."
            )
        _warn_insecure_once(host, "http://")
    return url


def _warn_insecure_once(host: str, what: str) -> None:
    with _LOCK:
        first = (host, what) not in _WARNED
        _WARNED.add((host, what))
    if first:
        logger.warning("--allow_insecure: talking plain %s to %s; patient data are not encrypted.", what, host)


class PacsSession(requests.Session):
    """A ``requests.Session`` that keeps the CA bundle it was given: ``requests`` otherwise lets
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` replace a session's bundle (without one, those variables still
    apply, and so do proxies from the environment)."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and isinstance(self.verify, str):  # the session's bundle, not the environment's
            settings["verify"] = self.verify
        return settings


def make_session(credentials: PacsCredentials | None = None, tls: TlsSettings | None = None) -> requests.Session:
    """The ``requests.Session`` of every DICOMweb entry point: the ``Authorization`` header, certificate
    verification (always on; ``tls.ca_bundle`` when given, else the system CAs), the client certificate."""
    tls = tls or TlsSettings()
    session = PacsSession()
    session.verify = tls.verify
    session.cert = tls.cert
    if credentials is not None:
        session.headers["Authorization"] = credentials.header()
    return session


# ------------------------------------------------------------------------------------------- DICOM TLS (DIMSE)
#: the oldest TLS version DICOM's BCP 195 profiles accept
TLS_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _tls_error(option: str, path: Path | None, error: Exception) -> PacsSecurityError:
    where = f" {path}" if path is not None else ""
    return PacsSecurityError(f"{option}{where} cannot be used for TLS: {' '.join(str(error).split())}.")


def client_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The TLS context of a DIMSE association this tool opens (the listener sending its SRs): TLS 1.2 or newer, the
    peer's certificate verified against ``tls.ca_bundle`` (or the system CAs) and its host name checked, the client
    certificate presented when ``tls.client_cert`` is given.

    Raises:
        PacsSecurityError: a PEM file cannot be loaded (the message names the option and the file).
    """
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_bundle) if tls.ca_bundle is not None else None)
    except (ssl.SSLError, OSError) as error:
        raise _tls_error("--ca_bundle", tls.ca_bundle, error) from None
    context.minimum_version = TLS_MINIMUM_VERSION
    if tls.client_cert is not None:
        try:
            context.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
        except (ssl.SSLError, OSError) as error:
            raise _tls_error("--client_cert", tls.client_cert, error) from None
    return context


class _ServerContext(ssl.SSLContext):
    """A server context whose handshakes have a time limit and whose failures are logged with the peer's address
    (``pynetdicom`` runs the handshake in its accept loop and drops a failed one silently)."""

    handshake_timeout: float = 10.0

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        try:
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        sock.settimeout(self.handshake_timeout)
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except (ssl.SSLError, OSError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            logger.warning("TLS handshake from %s refused: %s.", peer, reason)
            sock.close()
            raise
        wrapped.settimeout(None)
        return wrapped


@dataclass(frozen=True)
class ServerTls:
    """The listener's own TLS settings.

    Attributes:
        certificate: PEM with the listener's certificate (and its key, unless ``key`` is given).
        key: PEM with the certificate's private key (owner-only, like a secrets file).
        client_ca: PEM of the CA(s) whose client certificates are accepted; when given, a sender must present one
            (mutual TLS). ``None``: the senders are not asked for a certificate (the AE-title allow-list still
            applies).
    """

    certificate: Path
    key: Path | None = None
    client_ca: Path | None = None

    @classmethod
    def from_options(
        cls,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_client_ca: str | Path | None = None,
    ) -> ServerTls | None:
        """Checked settings, or ``None`` when ``tls_cert`` is not given (then the other two must not be either).

        Raises:
            FileNotFoundError: a named file does not exist.
            PacsSecurityError: ``--tls_key`` / ``--tls_client_ca`` without ``--tls_cert``, a key file others can
                read, or a file that TLS cannot use.
        """
        if tls_cert is None:
            if tls_key is not None or tls_client_ca is not None:
                raise PacsSecurityError(
                    "--tls_key and --tls_client_ca need --tls_cert (the listener's own certificate)."
                )
            return None
        paths = _pem_files(("--tls_cert", tls_cert), ("--tls_key", tls_key), ("--tls_client_ca", tls_client_ca))
        key = paths["--tls_key"]
        certificate = paths["--tls_cert"]
        assert certificate is not None
        _check_owner_only(key if key is not None else certificate, "Listener key file")
        settings = cls(certificate, key, paths["--tls_client_ca"])
        settings.ssl_context()  # a file TLS cannot use is refused now, not at the first association
        return settings

    def ssl_context(self, handshake_timeout: float = 10.0) -> ssl.SSLContext:
        """The listener's server context: TLS 1.2 or newer, its certificate, and (with ``client_ca``) client
        certificates required and verified.

        Raises:
            PacsSecurityError: a PEM file cannot be loaded.
        """
        context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
        context.handshake_timeout = float(handshake_timeout)
        context.minimum_version = TLS_MINIMUM_VERSION
        try:
            context.load_cert_chain(str(self.certificate), str(self.key) if self.key is not None else None)
        except (ssl.SSLError, OSError) as error:
            raise _tls_error("--tls_cert", self.certificate, error) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError) as error:
                raise _tls_error("--tls_client_ca", self.client_ca, error) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def check_plain_dimse(host: str, what: str, allow_insecure: bool = False) -> None:
    """Refuse unencrypted DICOM networking ``what`` (e.g. ``"sending SRs to PACS@10.0.0.5:104"``) with ``host`` when
    ``host`` is not literally loopback, unless ``allow_insecure`` (then warned once per host). Nothing is resolved.

    Raises:
        PacsSecurityError: naming the host and the options that fix it.
    """
    if is_loopback_host(host):
        return
    if not allow_insecure:
        raise PacsSecurityError(
            f"Refusing plain (unencrypted) DICOM for {what}: patient data would cross the network unencrypted. "
            "Use DICOM TLS (--tls_cert for the listener, --destination_tls for the destination), or pass "
            "--allow_insecure if this network is trusted."
        )
    _warn_insecure_once(host, "DICOM (no TLS)")
