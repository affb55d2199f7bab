"""A DICOM listener (``sdmad listen``): studies arrive by C-STORE from a PACS, their SRs go back by C-STORE.

DIMSE through ``pynetdicom``. The listener is a Storage SCP (every storage SOP class, uncompressed transfer syntaxes:
a PACS converts compressed images for it) and a Verification SCP (C-ECHO) with its own AE title, and a Storage SCU
towards one destination (``AET@host:port``, e.g. the PACS that sent the study). Associations are accepted only from
the calling AE titles of an allow-list and only when they call the listener's AE title; any other is rejected
(A-ASSOCIATE-RJ, permanent, reason "calling AE title not recognised" / "called AE title not recognised").

What happens to an instance and its study (the states are those of :mod:`sdmad_monai.deploy.queue`):

1. **Received durably before acknowledged.** The C-STORE handler writes the instance as the sender encoded it to a
   temporary file in ``<work_dir>/studies/<StudyInstanceUID>/incoming/<SeriesInstanceUID>/``, flushes it to disk
   (fsync), renames it to ``<SOPInstanceUID>.dcm``, flushes the folder, then records it in the SQLite queue in one
   transaction (WAL, ``synchronous=FULL``); only then does it answer success (0x0000). A failure to write or record
   answers 0xA700 (out of resources) and an instance without valid Study/Series/SOP Instance UIDs 0xC000 (cannot
   understand): the sender keeps the instance and may send it again. An instance received twice is recorded once.
2. **Settled.** A study is ``receiving`` until ``settle_seconds`` pass without a new instance; then ``ready``.
3. **Processed** by a bounded pool of workers (``workers``, default 1; each has its own copy of the model, whose
   forward pass is not thread-safe): the series rules select the series (the same
   :func:`~sdmad_monai.deploy.process.process_dicom_folder` as ``sdmad process_folder``: the same selection, checks
   and SR). First each selected series is checked for missing instances (a gap in the slice positions; missing end
   instances where ``ImagesInAcquisition`` or the instance numbers show them). A study with such a series waits (for
   the rest, or at most ``study_timeout`` seconds after its first instance); after the timeout it is processed with
   what arrived and its log, its report and the queue say that it was **partial** and which series got no SR.
4. **Sent**: each SR by C-STORE to the destination. A refused or failed attempt is recorded in the queue and retried
   after ``backoff`` seconds, doubled each time up to ``max_backoff``; after ``retries`` retries the study is
   ``failed``. Otherwise ``done``.

Every study has a log, ``studies/<StudyInstanceUID>/study.log`` (what arrived, why a series was skipped, each send
attempt, and one last line saying ``DONE`` or ``FAILED`` and why), and a ``report.json`` once it is done or failed.

Restart and crash: nothing acknowledged is lost (step 1), and a study interrupted while ``processing`` or
``sending`` is processed or sent again at the next start. The SR's UIDs are derived from the study, the series, its
instances and the model, so a second run writes the same SR and a second C-STORE of it replaces the copy in the
PACS instead of adding one: a crash at any point sends no duplicate SR. A study whose processing was interrupted
:data:`MAX_PROCESS_ATTEMPTS` times (e.g. the process is killed by it each time) is ``failed`` instead of retried
forever. New instances of a study that was processed reopen it: it is processed again, and the new SR (other
instances, other UIDs) says which SR it supersedes.

SIGTERM (:meth:`DicomListener.serve` returns once its ``stop`` event is set): the listener stops accepting
associations, starts no new job, waits up to ``shutdown_grace`` seconds for the jobs under way, and leaves any
that did not finish in the queue, to be redone at the next start.

Modules: this one is the service (associations, the C-STORE handler, the worker pool, the queue's transitions);
its settings are :mod:`.listener_config`, the durable writes, per-study logs, completeness check and C-STORE
sending :mod:`.listener_io`, the SQLite queue :mod:`.queue`.

Size: the service itself (associations, the C-STORE handler, the worker pool, every queue transition); its
settings, I/O and queue are the modules named above.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import logging
import os
import re
import shutil
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from ..errors import one_line
from ..utils import atomic_write_json
from .codes import load_finding_codes
from .listener_config import Destination, ListenerConfig, ListenerError, SendError, parse_allow_list, pynetdicom_module
from .listener_io import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    StudyLogs,
    durable_write,
    incomplete_series,
    send_reports,
    study_log,
)
from .pipeline import SeriesProcessingError, resolve_detector
from .process import process_dicom_folder
from .queue import JobQueue, Received, State, StudyJob
from .rules import load_series_rules
from .security import client_ssl_context

if TYPE_CHECKING:  # pragma: no cover
    from ..networks.detector import SignDrivenDetector

__all__ = [
    "MAX_PROCESS_ATTEMPTS",
    "Destination",
    "DicomListener",
    "ListenerConfig",
    "ListenerError",
    "SendError",
    "durable_write",
    "incomplete_series",
    "parse_allow_list",
    "send_reports",
]

logger = logging.getLogger(__name__)

#: A study whose processing started this often without finishing (the process died each time) is ``failed``.
MAX_PROCESS_ATTEMPTS = 3
#: A UID as used in file names: digits and dots (leading zeros, invalid but seen in the wild, are accepted).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _count_outputs(paths: Sequence[str | Path]) -> str:
    """``"1 SR(s)"``, or ``"1 SR(s) and 1 anomaly map(s)"`` when the maps go too (``sdmad_map_*.dcm``)."""
    maps = sum(Path(p).name.startswith("sdmad_map_") for p in paths)
    return f"{len(paths) - maps} SR(s)" + (f" and {maps} anomaly map(s)" if maps else "")


class DicomListener:
    """The listener of the module docstring: :meth:`start`, then :meth:`serve` until a stop is asked.

    Args:
        config: the settings.
        detector: the trained detector, its checkpoint path, or a function returning it (loaded once, by
            :meth:`start`, before the port is opened).
    """

    def __init__(
        self,
        config: ListenerConfig,
        detector: SignDrivenDetector | str | Path | Callable[[], SignDrivenDetector],
    ):
        self.config = config
        self.work_dir = config.work_dir
        self.studies = self.work_dir / "studies"
        self._detector_source = detector
        self._detectors: list[SignDrivenDetector] = []  # free ones; one per worker at most (see _borrow_detector)
        self._detectors_made = 0
        self._detectors_lock = threading.Lock()
        self._rules = config.rules if config.rules is not None else load_series_rules(None)
        self._codes = config.finding_codes if config.finding_codes is not None else load_finding_codes(None)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._closing = threading.Event()
        self._folders: set[Path] = set()
        self._lock_file: Any = None
        self._server: Any = None
        self._send_tls: ssl.SSLContext | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.queue: JobQueue | None = None
        self._logs = StudyLogs(self.studies)

    # ------------------------------------------------------------------------------------------ start, stop
    def start(self) -> None:
        """Take the work folder (one listener per folder), open the queue, put interrupted jobs back, load the model,
        then listen.

        Raises:
            ListenerError: the folder is used by another listener, the port cannot be opened, pynetdicom is missing.
        """
        pynetdicom = pynetdicom_module()
        self.studies.mkdir(parents=True, exist_ok=True)
        lock_path = self.work_dir / "listener.lock"
        self._lock_file = open(lock_path, "a+")  # noqa: SIM115 - held for the listener's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise ListenerError(
                f"--work_dir {self.work_dir} is in use by another sdmad listener (lock {lock_path}); stop it or "
                "choose another folder."
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        logging.getLogger().addHandler(self._logs)
        self.queue = JobQueue(self.work_dir / "queue.sqlite3")
        for stray in self.studies.glob("*/incoming/*/.*.tmp"):  # a write interrupted by a crash: never acknowledged
            stray.unlink(missing_ok=True)
        for job in self.queue.recover():
            study_log(
                job.study_uid,
                logging.WARNING,
                "was %s when the listener stopped; %s again (same SR UIDs: no duplicate).",
                job.state.value,
                "processing" if job.state == State.PROCESSING else "sending",
            )
        destination_tls = self.config.destination_tls
        self._send_tls = client_ssl_context(destination_tls) if destination_tls is not None else None
        self._detectors = [self._load_detector(first=True)]  # a bad checkpoint fails the start, not each study
        self._detectors_made = 1
        self._executor = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="sdmad-study")
        ae = pynetdicom.AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.config.allowed_aets or [])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.network_timeout
        ae.maximum_associations = 16
        for context in pynetdicom.AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        ae.add_supported_context(pynetdicom.sop_class.Verification)
        handlers = [
            (pynetdicom.evt.EVT_C_STORE, self._on_store),
            (pynetdicom.evt.EVT_C_ECHO, self._on_echo),
            (pynetdicom.evt.EVT_REJECTED, self._on_rejected),
        ]
        server_tls = self.config.server_tls
        context = server_tls.ssl_context(self.config.network_timeout) if server_tls is not None else None
        try:
            self._server = ae.start_server(
                (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=context
            )
        except OSError as error:
            self._release()
            raise ListenerError(
                f"cannot listen on {self.config.host}:{self.config.port}: {error.strerror or error}; choose another "
                "--port (or --host)."
            ) from error
        allowed = ", ".join(self.config.allowed_aets) if self.config.allowed_aets else "any AE title"
        if server_tls is None:
            receiving = "plain DICOM"
        else:
            receiving = "TLS only" + (
                f", client certificates of {server_tls.client_ca.name} required" if server_tls.client_ca else ""
            )
        logger.info(
            "Listening as %s on %s:%d (%s; accepting %s); SRs go to %s (%s); work folder %s; %d worker(s), settle "
            "%g s, study timeout %g s.",
            self.config.ae_title,
            self.config.host,
            self.config.port,
            receiving,
            allowed,
            self.config.destination,
            "TLS" if self._send_tls is not None else "plain DICOM",
            self.work_dir,
            self.config.workers,
            self.config.settle_seconds,
            self.config.study_timeout,
        )

    def _load_detector(self, first: bool = False) -> SignDrivenDetector:
        from ..networks.detector import SignDrivenDetector

        source = self._detector_source
        if isinstance(source, SignDrivenDetector) and not first:
            return copy.deepcopy(source)  # one copy per worker
        return resolve_detector(source)

    @contextlib.contextmanager
    def _borrow_detector(self) -> Iterator[SignDrivenDetector]:
        """A detector for this worker alone: the model's forward pass keeps state (its text-feature cache) that two
        threads must not share, so each of the ``workers`` workers gets its own copy, made on first need."""
        with self._detectors_lock:
            detector = self._detectors.pop() if self._detectors else None
            if detector is None:
                self._detectors_made += 1
        if detector is None:
            try:
                detector = self._load_detector()
            except BaseException:
                with self._detectors_lock:
                    self._detectors_made -= 1
                raise
            logger.info("Loaded detector copy %d (one per worker).", self._detectors_made)
        try:
            yield detector
        finally:
            with self._detectors_lock:
                self._detectors.append(detector)

    def serve(self, stop: threading.Event) -> bool:
        """Settle, process and send until ``stop`` is set, then shut down (:meth:`shutdown`).

        Returns:
            ``True`` when every job under way finished; ``False`` when some were left in the queue (their worker
            threads still run: the caller should end the process).
        """
        try:
            while not stop.wait(self.config.poll_interval):
                self.step()
        finally:
            clean = self.shutdown()
        return clean

    def step(self) -> None:
        """One look at the queue: settled studies become ``ready``; free workers take what is due."""
        assert self.queue is not None and self._executor is not None, "start() first"
        if self._closing.is_set():
            return
        for job in self.queue.settle(self.config.settle_seconds):
            counts = self.queue.series_counts(job.study_uid)
            study_log(
                job.study_uid,
                logging.INFO,
                "no new instance for %g s: %d instance(s) in %d series (%s); queued for processing.",
                self.config.settle_seconds,
                job.instances,
                len(counts),
                ", ".join(f"{uid}: {n}" for uid, n in counts.items()),
            )
        with self._busy_lock:
            free = self.config.workers - len(self._busy)
            if free <= 0:
                return
            for job in self.queue.due(exclude=sorted(self._busy))[:free]:
                self._busy.add(job.study_uid)
                self._executor.submit(self._work, job)

    def shutdown(self) -> bool:
        """Stop accepting associations, start no new job, wait up to ``shutdown_grace`` s for the jobs under way.

        Returns:
            ``True`` when none is left running (the queue is closed); ``False`` otherwise (they stay in the queue).
        """
        if self._closing.is_set():
            return True
        self._closing.set()
        logger.info(
            "Stopping: no new association or job; waiting up to %g s for the jobs under way.",
            self.config.shutdown_grace,
        )
        if self._server is not None:
            self._server.shutdown()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + self.config.shutdown_grace
        while time.monotonic() < deadline:
            with self._busy_lock:
                if not self._busy:
                    break
            time.sleep(0.05)
        with self._busy_lock:
            left = sorted(self._busy)
        for study_uid in left:
            study_log(
                study_uid,
                logging.WARNING,
                "stopping before its job finished; it stays in the queue for the next start.",
            )
        if not left:
            self._release()
        logger.info("Stopped%s.", f"; {len(left)} job(s) left in the queue" if left else "")
        return not left

    def _release(self) -> None:
        if self.queue is not None:
            self.queue.close()
        logging.getLogger().removeHandler(self._logs)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ---------------------------------------------------------------------------------------- DIMSE handlers
    def _on_echo(self, event: Any) -> int:
        logger.debug("C-ECHO from %s.", event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        answer = getattr(event.assoc.acceptor, "primitive", None)
        source, diagnostic = getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)
        if (source, diagnostic) == (0x01, 0x03):
            allowed = ", ".join(self.config.allowed_aets or ())
            why = f"calling AE title {calling!r} is not in the allow-list ({allowed}): calling AE title not recognised"
        elif (source, diagnostic) == (0x01, 0x07):
            why = (
                f"{calling!r} called AE title {called!r}, not {self.config.ae_title!r}: called AE title not recognised"
            )
        elif (source, diagnostic) == (0x03, 0x02):
            why = "too many associations at once (local limit exceeded); the sender may try again"
        else:
            why = f"A-ASSOCIATE-RJ source {source}, reason {diagnostic}"
        logger.warning("Rejected an association from %s:%s: %s.", requestor.address, requestor.port, why)

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        if self._closing.is_set():
            return STATUS_OUT_OF_RESOURCES
        try:
            dataset = event.dataset
            uids = {k: str(dataset.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID")}
            sop = str(dataset.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID or "").strip()
        except Exception as error:  # a dataset pydicom cannot decode
            logger.error("C-STORE from %s refused: the dataset cannot be read (%s).", calling, one_line(error))
            return STATUS_CANNOT_UNDERSTAND
        bad = [name for name, uid in {**uids, "SOPInstanceUID": sop}.items() if not _UID.match(uid) or len(uid) > 64]
        if bad:
            logger.error("C-STORE from %s refused: no valid %s in the dataset.", calling, ", ".join(bad))
            return STATUS_CANNOT_UNDERSTAND
        study, series = uids["StudyInstanceUID"], uids["SeriesInstanceUID"]
        assert self.queue is not None
        try:
            if self.queue.was_sent(sop):  # our own SR, sent back with the study: nothing to do
                logger.debug("C-STORE of %s from %s: an SR this listener sent; acknowledged, not kept.", sop, calling)
                return STATUS_SUCCESS
        except sqlite3.Error as error:
            logger.error("C-STORE of %s from %s refused: queue not readable (%s).", sop, calling, one_line(error))
            return STATUS_OUT_OF_RESOURCES
        path = self.studies / study / "incoming" / series / f"{sop}.dcm"
        try:
            durable_write(path, event.encoded_dataset(include_meta=True), self._folders, root=self.work_dir)
            received = self.queue.record_instance(study, series, sop, str(path), calling)
        except (OSError, sqlite3.Error) as error:
            logger.error("C-STORE of %s from %s refused: not stored (%s).", sop, calling, one_line(error))
            return STATUS_OUT_OF_RESOURCES
        except Exception:  # never acknowledge what is not recorded
            logger.exception("C-STORE of %s from %s refused: unexpected error.", sop, calling)
            return STATUS_OUT_OF_RESOURCES
        if received == Received.OPENED:
            study_log(study, logging.INFO, "receiving from %s (first instance %s).", calling, sop)
        elif received == Received.REOPENED:
            study_log(
                study,
                logging.WARNING,
                "new instance %s from %s after it was processed: it will be processed again.",
                sop,
                calling,
            )
        return STATUS_SUCCESS

    # -------------------------------------------------------------------------------------------- the jobs
    def _work(self, job: StudyJob) -> None:
        try:
            with self._logs.capture(job.study_uid):
                try:
                    if job.state == State.READY:
                        self._process(job.study_uid)
                    elif job.state == State.SENDING:
                        self._send(job)
                except Exception as error:  # a bug or an unexpected failure: this study fails, the others go on
                    logger.exception("Study %s: unexpected error.", job.study_uid)
                    current = self.queue.get(job.study_uid) if self.queue is not None else None
                    if current is not None and current.state in (State.PROCESSING, State.SENDING):
                        self._finish(current, State.FAILED, f"unexpected error: {one_line(error)}")
        finally:
            with self._busy_lock:
                self._busy.discard(job.study_uid)

    def _process(self, study_uid: str) -> None:
        assert self.queue is not None
        job = self.queue.start_processing(study_uid)
        if job is None:
            return
        if job.process_attempts > MAX_PROCESS_ATTEMPTS:
            self._finish(
                job,
                State.FAILED,
                f"processing was interrupted {MAX_PROCESS_ATTEMPTS} times (the listener stopped or crashed each time)",
            )
            return
        incoming = self.studies / study_uid / "incoming"
        problems = incomplete_series(incoming, self._rules)
        partial = ""
        if problems:
            deadline = job.opened_at + self.config.study_timeout
            missing = "; ".join(f"series {uid}: {text}" for uid, text in problems.items())
            if self.queue.now() < deadline:
                if self.queue.hold(study_uid, job.generation, deadline, f"waiting for instances: {missing}"):
                    study_log(
                        study_uid,
                        logging.WARNING,
                        "incomplete (%s); waiting for the rest, at most until the study timeout (%g s after the first "
                        "instance, %s).",
                        missing,
                        self.config.study_timeout,
                        time.strftime("%H:%M:%S", time.localtime(deadline)),
                    )
                return
            partial = f"study timeout ({self.config.study_timeout:g} s) reached with incomplete series: {missing}"
            study_log(study_uid, logging.WARNING, "PARTIAL: %s; processing what arrived.", partial)
        out = self.studies / study_uid / "out" / str(job.generation)
        if out.exists():
            shutil.rmtree(out)
        failure = ""
        try:
            with self._borrow_detector() as detector:
                written = process_dicom_folder(
                    detector,
                    incoming,
                    out,
                    rules=self._rules,
                    slices=self.config.slices,
                    axis=self.config.axis,
                    strict=False,
                    finding_codes=self._codes,
                    anomaly_map=self.config.anomaly_map,
                    **self.config.infer_kwargs,
                )
        except SeriesProcessingError as error:
            written, failure = error.written, one_line(error)
        reports = [str(p) for p in written if p.suffix == ".dcm"]
        if failure and not partial:
            partial = f"no SR for: {failure}"
        if not reports:
            if partial:
                self._finish(job, State.FAILED, f"no SR written ({partial})", partial)
            else:
                self._finish(job, State.DONE, "no series matches the series rules; nothing to send", "")
            return
        if not self.queue.processed(study_uid, job.generation, reports, partial):
            study_log(
                study_uid, logging.INFO, "new instances arrived while it was processed; processing again once settled."
            )
            return
        written_now = _count_outputs(reports)
        study_log(study_uid, logging.INFO, "%s written; sending to %s.", written_now, self.config.destination)
        sending = self.queue.get(study_uid)
        if sending is not None and sending.state == State.SENDING and sending.generation == job.generation:
            self._send(sending)

    def _send(self, job: StudyJob) -> None:
        assert self.queue is not None
        if not job.outputs or not all(Path(p).is_file() for p in job.outputs):
            if self.queue.back_to_ready(job.study_uid, job.generation, "SR files missing; processing again"):
                study_log(job.study_uid, logging.WARNING, "its SR files are missing; processing it again.")
            return
        try:
            send_reports(
                job.outputs, self.config.destination, self.config.ae_title, self.config.network_timeout, self._send_tls
            )
        except SendError as error:
            ok, detail = False, str(error)
        except Exception as error:  # e.g. an unreadable SR file
            ok, detail = False, one_line(error)
        else:
            ok, detail = True, f"{_count_outputs(job.outputs)} stored"
        attempt = self.queue.record_attempt(job.study_uid, job.generation, ok, detail)
        total = self.config.retries + 1
        if ok:
            uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in job.outputs]
            self.queue.record_sent(job.study_uid, uids)
            sent = _count_outputs(job.outputs)
            reason = f"sent {sent} ({', '.join(uids)}) to {self.config.destination} (attempt {attempt})"
            self._finish(job, State.DONE, reason + (f"; PARTIAL: {job.partial}" if job.partial else ""))
        elif attempt >= total:
            self._finish(
                job,
                State.FAILED,
                f"could not send the SR(s) to {self.config.destination} after {attempt} attempt(s) (last: {detail})",
            )
        else:
            delay = self.config.retry_delay(attempt)
            self.queue.send_failed(job.study_uid, job.generation, detail, self.queue.now() + delay)
            study_log(
                job.study_uid,
                logging.WARNING,
                "sending to %s failed (attempt %d of %d: %s); retrying in %.3g s.",
                self.config.destination,
                attempt,
                total,
                detail,
                delay,
            )

    def _finish(self, job: StudyJob, state: State, reason: str, partial: str | None = None) -> None:
        assert self.queue is not None
        if not self.queue.finish(job.study_uid, job.generation, state, reason, partial):
            study_log(job.study_uid, logging.INFO, "new instances arrived meanwhile; it will be processed again.")
            return
        final = self.queue.get(job.study_uid)
        assert final is not None
        report = {
            "study_instance_uid": final.study_uid,
            "state": final.state.value,
            "reason": final.reason,
            "partial": bool(final.partial),
            "missing": final.partial,
            "calling_ae_title": final.calling_aet,
            "instances": final.instances,
            "series": self.queue.series_counts(final.study_uid),
            "sr_files": list(final.outputs),
            "destination": str(self.config.destination),
            "send_attempts": [dataclasses.asdict(a) for a in self.queue.attempts(final.study_uid)],
            "generation": final.generation,
        }
        atomic_write_json(self.studies / final.study_uid / "report.json", report)
        study_log(
            final.study_uid,
            logging.INFO if state == State.DONE else logging.ERROR,
            "%s: %s.",
            state.value.upper(),
            reason,
        )
