"""What the DICOM listener (:mod:`sdmad_monai.deploy.listener`) does outside its service loop: durable writes
(fsync, rename, fsync the folder), per-study log files, the completeness check of a study's series, and sending
SRs by C-STORE."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from .process import read_dicom_headers
from .rules import SeriesRules, explain_series

if TYPE_CHECKING:  # pragma: no cover
    pass


__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "StudyLogs",
    "durable_write",
    "incomplete_series",
    "send_reports",
    "study_log",
]

from .listener_config import Destination, SendError, pynetdicom_module

logger = logging.getLogger("sdmad_monai.deploy.listener")

#: C-STORE statuses (PS3.4 Annex B): success, refused: out of resources, error: cannot understand.
STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def durable_write(path: Path, data: bytes, known_folders: set[Path] | None = None, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that it is on disk, complete, when this returns: a temporary file beside it,
    flushed (fsync), renamed over ``path``, then the folder flushed.

    Args:
        path: the file.
        data: its content.
        known_folders: folders already made durable by this process (a cache; updated).
        root: the topmost folder whose entries are flushed when a folder has to be created (default: ``path``'s
            parent only).
    """
    folder = path.parent
    if known_folders is None or folder not in known_folders:
        folder.mkdir(parents=True, exist_ok=True)
        top = root if root is not None and root in folder.parents else folder.parent
        current = folder
        while True:  # the new folders' entries in their parents, up to the root
            _fsync_folder(current)
            if current == top or current.parent == current:
                break
            current = current.parent
        if known_folders is not None:
            known_folders.add(folder)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


# ------------------------------------------------------------------------------------------------ study logs
class StudyLogs(logging.Handler):
    """Writes log records to ``studies/<uid>/study.log``: records logged with ``extra={"study_uid": ...}``, and every
    record of a thread while it works on a study (:meth:`capture`: the series rules, the inference, the SR)."""

    def __init__(self, studies: Path):
        super().__init__(logging.INFO)
        self.studies = studies
        self._threads: dict[int, str] = {}
        self._write = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def path(self, study_uid: str) -> Path:
        return self.studies / study_uid / "study.log"

    def emit(self, record: logging.LogRecord) -> None:
        study_uid = getattr(record, "study_uid", None) or self._threads.get(record.thread or 0)
        if not study_uid:
            return
        try:
            line = self.format(record)
            path = self.path(study_uid)
            with self._write:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as stream:
                    stream.write(line + "\n")
        except Exception:  # a log line must never fail a study
            self.handleError(record)

    @contextlib.contextmanager
    def capture(self, study_uid: str) -> Iterator[None]:
        ident = threading.get_ident()
        self._threads[ident] = study_uid
        try:
            yield
        finally:
            self._threads.pop(ident, None)


def study_log(study_uid: str, level: int, message: str, *args: Any) -> None:
    logger.log(level, "Study %s: " + message, study_uid, *args, extra={"study_uid": study_uid})


# -------------------------------------------------------------------------------------------- completeness
def incomplete_series(folder: str | Path, rules: SeriesRules) -> dict[str, str]:
    """The series of ``folder`` (one sub-folder per series) that the rules select but that lack instances, with what
    the series checks (:func:`~sdmad_monai.deploy.pipeline.check_series`, on the headers already read) found (a gap;
    missing ends where the headers show them)."""
    from .pipeline import check_series, describe_series

    all_series = read_dicom_headers(folder)
    headers = {uid: [f.header for f in files] for uid, files in all_series.items()}
    problems: dict[str, str] = {}
    for uid, reason in explain_series(headers, rules).items():
        if reason is not None:
            continue
        try:
            check_series(headers[uid], describe_series(headers[uid]))
        except ValueError as error:
            problems[uid] = str(error)
    return problems


# -------------------------------------------------------------------------------------------------- sending
def _tls_failure(destination: Destination, tls: ssl.SSLContext, timeout: float) -> str | None:
    """Why a TLS handshake with the destination fails (``pynetdicom`` only logs it), or ``None`` when it succeeds
    or the destination cannot be reached at all.

    Under TLS 1.3 the client's side of the handshake is over before the server has checked the client certificate:
    a refused (or missing) one only shows as the server's alert on the first read, which a short read catches (a
    server that accepted waits for the association request: the read times out)."""
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout) as raw:
            with tls.wrap_socket(raw, server_hostname=destination.host) as secure:
                secure.settimeout(min(timeout, 2.0))
                try:
                    secure.recv(1)
                except ssl.SSLError as error:
                    return f"the destination refused this client's certificate: {_ssl_reason(error)}"
                return None
    except ssl.SSLError as error:
        return _ssl_reason(error)
    except OSError:
        return None


def _ssl_reason(error: ssl.SSLError) -> str:
    """``certificate verify failed``-style words for an ``ssl.SSLError`` (``TLSV1_ALERT_UNKNOWN_CA``: ``tlsv1 alert
    unknown ca``)."""
    reason = getattr(error, "verify_message", "") or (error.reason or "").lower().replace("_", " ") or str(error)
    return " ".join(str(reason).split())


def send_reports(
    paths: Sequence[str | Path],
    destination: Destination,
    ae_title: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> None:
    """C-STORE the DICOM files to the destination, in one association (over TLS when ``tls`` is given:
    :func:`~sdmad_monai.deploy.security.client_ssl_context`; the destination's certificate must name its host).

    Raises:
        SendError: no association (connection refused, no answer, rejected) or a C-STORE not answered with success
            or a warning; the message says which.
    """
    pynetdicom = pynetdicom_module()
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = pynetdicom.AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    contexts: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), [])
        for syntax in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    tls_args = (tls, destination.host) if tls is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SendError(f"{destination} rejected the association (is AE title {ae_title} known to it?)")
        handshake = _tls_failure(destination, tls, timeout) if tls is not None else None
        if handshake is not None:
            raise SendError(f"no TLS association with {destination}: the TLS handshake failed ({handshake})")
        raise SendError(f"no association with {destination} (connection refused, or no answer in {timeout:g} s)")
    try:
        for path, ds in zip(paths, datasets):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                raise SendError(f"{destination} did not answer the C-STORE of {Path(path).name} (connection lost)")
            if code != STATUS_SUCCESS and not 0xB000 <= code <= 0xBFFF:  # Bxxx: stored, with a warning
                raise SendError(f"{destination} refused {Path(path).name}: C-STORE status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()


# ------------------------------------------------------------------------------------------------- listener
