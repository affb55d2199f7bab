"""Settings of the DICOM listener (:mod:`sdmad_monai.deploy.listener`): AE titles, ports, the destination, the
allow-list and :class:`ListenerConfig`, each checked with one clear line naming the option."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .codes import FindingCodes
from .process import DEFAULT_SLICES
from .rules import SeriesRules
from .security import ServerTls, TlsSettings, check_plain_dimse

if TYPE_CHECKING:  # pragma: no cover
    pass


__all__ = ["Destination", "ListenerConfig", "ListenerError", "SendError", "parse_allow_list", "pynetdicom_module"]

_INSTALL = 'pip install -e ".[pacs]"  (or: pip install "pynetdicom>=3.0.4,<4")'


class ListenerError(ValueError):
    """The listener cannot start as configured (bad option, port in use, work folder in use, pynetdicom missing);
    the message names the option or the value."""


class SendError(RuntimeError):
    """The destination did not take the SRs (no association, association rejected, a C-STORE refused)."""


def pynetdicom_module() -> Any:
    try:
        import pynetdicom
    except ImportError as error:
        raise ListenerError(f"sdmad listen needs the pynetdicom package: {_INSTALL}.") from error
    return pynetdicom


def _ae_title(value: Any, option: str) -> str:
    """An AE title: 1 to 16 characters of the default character repertoire, no backslash, not only spaces."""
    text = str(value).strip() if value is not None else ""
    if not text or len(text) > 16 or "\\" in text or not all(32 <= ord(c) < 127 for c in text):
        raise ListenerError(
            f"{option} {value!r} is not a DICOM AE title (1 to 16 printable ASCII characters, no backslash)."
        )
    return text


def _port(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ListenerError(f"{option} {value!r} is not a TCP port (a whole number from 1 to 65535).")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ListenerError(f"{option} {value!r} is not a TCP port (a whole number from 1 to 65535).")
    return port


@dataclass(frozen=True)
class Destination:
    """Where the SRs go: a Storage SCP's AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: Any, option: str = "--destination") -> Destination:
        """``AET@host:port``, e.g. ``ORTHANC@127.0.0.1:4242``.

        Raises:
            ListenerError: naming the option and the value.
        """
        match = re.match(r"^([^@]+)@([^@:\s]+):(\d+)$", str(text).strip()) if text is not None else None
        if match is None:
            raise ListenerError(
                f"{option} {text!r} is not AET@host:port (the Storage SCP the SRs go to, e.g. ORTHANC@127.0.0.1:4242)."
            )
        return cls(_ae_title(match.group(1), f"{option} AE title"), match.group(2), _port(match.group(3), option))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_allow_list(value: Any, option: str = "--allow") -> tuple[str, ...] | None:
    """The calling AE titles allowed to send: ``ORTHANC``, ``ORTHANC,PACS2`` (or fire's tuple of them), or ``any``
    (``None``: every calling AE title is accepted).

    Raises:
        ListenerError: no value, or a value that is not an AE title.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ListenerError(
            f"{option} is required: the calling AE titles that may send studies, e.g. {option} ORTHANC or "
            f"{option} ORTHANC,PACS2 ({option} any accepts every AE title)."
        )
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    titles = [str(t).strip() for t in items if str(t).strip()]
    if [t.lower() for t in titles] == ["any"]:
        return None
    return tuple(dict.fromkeys(_ae_title(t, option) for t in titles))


def _number(value: Any, option: str, minimum: float, strictly: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number > minimum if strictly else number >= minimum) or number != number or number == float("inf"):
        bound = f"> {minimum:g}" if strictly else f">= {minimum:g}"
        raise ListenerError(f"{option} {value!r} is not a number {bound}.")
    return number


def _whole(value: Any, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ListenerError(f"{option} {value!r} is not a whole number >= {minimum}.")
    number = int(value)
    if number < minimum:
        raise ListenerError(f"{option} {value!r} is not a whole number >= {minimum}.")
    return number


@dataclass(frozen=True)
class ListenerConfig:
    """Everything ``sdmad listen`` is told; checked on creation (:class:`ListenerError` names the option).

    Attributes:
        work_dir: the received studies, their SRs and logs, and the queue (``queue.sqlite3``).
        destination: where the SRs go.
        allowed_aets: the calling AE titles accepted; ``None`` accepts every one.
        ae_title: the listener's own AE title (associations calling another are rejected).
        host: the address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``: every interface).
        port: the TCP port to listen on.
        settle_seconds: a study is processed once no instance of it arrived for this long.
        study_timeout: an incomplete study is processed anyway this many seconds after its first instance.
        workers: studies processed at the same time.
        retries: how often sending a study's SRs is tried again before it is ``failed``.
        backoff: seconds before the first retry, doubled for each next one ...
        max_backoff: ... up to this.
        network_timeout: seconds to wait for the destination (association, each C-STORE answer) and for an idle
            sender.
        shutdown_grace: seconds a stop waits for the jobs under way before leaving them in the queue.
        poll_interval: how often the queue is looked at (seconds).
        rules: the series rules (``None``: the shipped ones).
        finding_codes: how the SR codes the categories (``None``: the shipped codes).
        slices: canonical slice indices, or ``None``/``"all"``.
        axis: slicing axis.
        infer_kwargs: ``batch_size``, ``device`` for :func:`~sdmad_monai.inference.infer_volume`.
        server_tls: the listener's certificate (:class:`~sdmad_monai.deploy.security.ServerTls`): with it only TLS
            associations are accepted; ``None``: plain DICOM, refused on an address that is not loopback unless
            ``allow_insecure``.
        destination_tls: send the SRs over TLS, verified with these settings (CA bundle, client certificate);
            ``None``: plain DICOM, refused to a destination that is not loopback unless ``allow_insecure``.
        allow_insecure: permit plain DICOM off loopback (warned once per host).
        anomaly_map: also send each processed series' 3D anomaly map (a DICOM Parametric Map) with its SR.
    """

    work_dir: Path
    destination: Destination
    allowed_aets: tuple[str, ...] | None
    ae_title: str = "SDMAD"
    host: str = "127.0.0.1"
    port: int = 11112
    settle_seconds: float = 10.0
    study_timeout: float = 600.0
    workers: int = 1
    retries: int = 10
    backoff: float = 5.0
    max_backoff: float = 600.0
    network_timeout: float = 30.0
    shutdown_grace: float = 30.0
    poll_interval: float = 0.2
    rules: SeriesRules | None = None
    finding_codes: FindingCodes | None = None
    slices: Sequence[int] | str | None = DEFAULT_SLICES
    axis: str = "axial"
    infer_kwargs: dict[str, Any] = field(default_factory=dict)
    server_tls: ServerTls | None = None
    destination_tls: TlsSettings | None = None
    allow_insecure: bool = False
    anomaly_map: bool = False

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise once, here
        put(self, "work_dir", Path(self.work_dir))
        if not isinstance(self.destination, Destination):
            put(self, "destination", Destination.parse(self.destination))
        if self.allowed_aets is not None:
            put(self, "allowed_aets", tuple(_ae_title(t, "--allow") for t in self.allowed_aets))
            if not self.allowed_aets:
                raise ListenerError("--allow lists no AE title; name the PACS that sends, e.g. --allow ORTHANC.")
        put(self, "ae_title", _ae_title(self.ae_title, "--ae_title"))
        if not str(self.host).strip():
            raise ListenerError("--host is empty; pass the address to listen on, e.g. 127.0.0.1 or 0.0.0.0.")
        put(self, "port", _port(self.port, "--port"))
        put(self, "settle_seconds", _number(self.settle_seconds, "--settle_seconds", 0.0))
        put(self, "study_timeout", _number(self.study_timeout, "--study_timeout", 0.0))
        if self.study_timeout < self.settle_seconds:
            raise ListenerError(
                f"--study_timeout {self.study_timeout:g} is shorter than --settle_seconds {self.settle_seconds:g}; "
                "a study could not settle before it times out."
            )
        put(self, "workers", _whole(self.workers, "--workers", 1))
        put(self, "retries", _whole(self.retries, "--retries", 0))
        put(self, "backoff", _number(self.backoff, "--backoff", 0.0))
        put(self, "max_backoff", max(_number(self.max_backoff, "--max_backoff", 0.0), self.backoff))
        put(self, "network_timeout", _number(self.network_timeout, "--timeout", 0.0, strictly=True))
        put(self, "shutdown_grace", _number(self.shutdown_grace, "--shutdown_grace", 0.0))
        put(self, "poll_interval", _number(self.poll_interval, "poll_interval", 0.0, strictly=True))
        if not isinstance(self.allow_insecure, bool):
            raise ListenerError(f"--allow_insecure is a flag (true/false), got {self.allow_insecure!r}.")
        if self.server_tls is None:
            check_plain_dimse(self.host, f"receiving studies on {self.host}:{self.port} (--host)", self.allow_insecure)
        if self.destination_tls is None:
            check_plain_dimse(
                self.destination.host, f"sending SRs to {self.destination} (--destination)", self.allow_insecure
            )

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed send attempt ``attempt`` (1, 2, ...): ``backoff * 2**(attempt - 1)``,
        at most ``max_backoff``."""
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


# ---------------------------------------------------------------------------------------------- durable files
