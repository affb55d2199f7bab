"""One study from a DICOMweb server (a PACS) in, one SD-MAD Comprehensive SR per selected series stored back.

:func:`process_study` is the PACS round trip behind ``sdmad process_study``. All traffic goes through the
``dicomweb-client`` library (:class:`dicomweb_client.DICOMwebClient`):

1. QIDO-RS: search the study's series (none: :class:`StudyNotFoundError`, naming the server and the UID);
2. the series rules (:func:`~sdmad_monai.deploy.pipeline.select_series_to_process`, the same rules and message
   policy as :func:`~sdmad_monai.deploy.process.process_dicom_folder`): first the modality against the QIDO-RS
   answer (a CT or SR series costs no further request), then the full rules against the WADO-RS series metadata of
   the others (headers only, no pixel data); every skipped series is logged with its reason. No series left: nothing
   is retrieved and nothing is stored (:class:`~sdmad_monai.deploy.pipeline.NoMatchingSeriesError` when ``strict``);
3. per selected series, the SR's SOPInstanceUID (deterministic: :func:`~sdmad_monai.deploy.sr.sr_identifiers` of
   study, series, its instances as the metadata lists them, model version and checkpoint fingerprint) is searched
   on the server (QIDO-RS); when it is there, the series was already processed by this model and is neither
   retrieved nor processed again. Other SRs of the same model in that SR series were made from another set of the
   series' instances (e.g. before a missing slice arrived): the new SR supersedes them (logged and reported);
4. the series pipeline (:mod:`sdmad_monai.deploy.pipeline`), one series at a time: WADO-RS retrieves its instances
   into memory, :func:`~sdmad_monai.deploy.pipeline.job_from_datasets` checks them (missing slices ...) and builds
   the volume, :func:`~sdmad_monai.deploy.pipeline.run_series` runs :func:`~sdmad_monai.inference.infer_volume`;
5. STOW-RS: the SR, built in memory (:func:`~sdmad_monai.deploy.sr.build_sr`), is stored into the study, unless a
   QIDO-RS search finds its SOPInstanceUID already there (then it is skipped and logged), and searched again
   afterwards to confirm the server has it; with ``output_dir`` a local copy (SR + JSON) is written too.

Nothing on the server is modified or deleted: :class:`DicomWebConnection` only searches, retrieves and stores.

Security (:mod:`sdmad_monai.deploy.security`): the session carries the credentials (HTTP Basic or Bearer) and the TLS
settings (verification always on, a CA bundle, a client certificate); plain ``http://`` to a host that is not
loopback is refused unless ``allow_insecure``; a URL with credentials in it is refused; error messages, log lines and
the JSON copies are redacted. HTTP 401/403 and a certificate that cannot be verified fail at once (not retried).

Faults: connection errors, timeouts and HTTP 5xx / 429 answers are retried (``retries`` times, waiting
``backoff * 2**k`` seconds before retry ``k + 1``), then :class:`PacsUnreachableError` names the server, the request
and the number of attempts; any other HTTP error (4xx) fails at once with :class:`DicomWebError`. A selected series
that cannot be processed (e.g. a missing slice) gets no SR; the SRs of the other series are still stored, then
:class:`~sdmad_monai.deploy.pipeline.SeriesProcessingError` reports the broken series.

Size: one source of the series pipeline: the DICOMweb connection (retries, errors, redaction) and
``process_study``; selection, the series loop and the SR are the pipeline's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from pydicom.dataset import Dataset

from ..errors import missing_extra

try:
    from dicomweb_client import DICOMwebClient
except ImportError as _error:  # an optional dependency: the `pacs` extra
    raise missing_extra("dicomweb-client", "pacs", "DICOMweb (sdmad process_study)") from _error

from . import pipeline
from .codes import FindingCodes, load_finding_codes
from .pipeline import DEFAULT_SLICES, SeriesProcessingError
from .rules import SeriesRules, explain_series, load_series_rules
from .security import PacsCredentials, TlsSettings, check_url, make_session, redact, redact_json

if TYPE_CHECKING:  # pragma: no cover
    from ..networks.detector import SignDrivenDetector

__all__ = [
    "DicomWebConnection",
    "DicomWebError",
    "PacsUnreachableError",
    "StoredReport",
    "StudyNotFoundError",
    "process_study",
]

logger = logging.getLogger(__name__)

#: HTTP status codes worth retrying besides 5xx: 429 Too Many Requests.
_RETRY_STATUS = (429,)
#: requests' errors that mean "no usable answer" (refused or dropped connection, timeout, broken stream).
_RETRY_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DicomWebError(RuntimeError):
    """The DICOMweb server refused a request (HTTP 4xx) or answered something unusable; the message names the server
    and the request (redacted: no credentials, no token)."""

    def __init__(self, message: str, *args: Any):
        super().__init__(redact(message), *args)


class PacsUnreachableError(DicomWebError):
    """The DICOMweb server gave no usable answer (connection error, timeout, HTTP 5xx / 429) after every attempt.

    Attributes:
        attempts: how many times the request was sent.
    """

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class StudyNotFoundError(DicomWebError, LookupError):
    """The server has no series of the requested StudyInstanceUID."""


def _short_reason(error: BaseException) -> str:
    """``Connection refused`` rather than requests' three-line ``HTTPConnectionPool(...)`` text."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason or ''}".strip()
    if isinstance(error, requests.exceptions.SSLError):
        match = re.search(r"\[SSL: [A-Z_]+\] ([^(')\]]+)", str(error))
        return match.group(1).strip() if match else "TLS handshake failed"
    if isinstance(error, requests.Timeout):
        return f"no answer in time ({type(error).__name__})"
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip()
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _dataset(item: dict[str, Any]) -> Dataset:
    """A DICOM JSON object as a pydicom dataset; bulk data (pixel data) is not fetched (left empty)."""
    return Dataset.from_json(item, bulk_data_uri_handler=lambda tag, vr, uri: b"")


class DicomWebConnection:
    """Search, retrieve and store on one DICOMweb server, with bounded retries; nothing else (no delete, no update).

    Args:
        url: the DICOMweb base URL, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc's DICOMweb plugin).
        retries: how many times a failed request is sent again (connection errors, timeouts, HTTP 5xx / 429 only);
            ``0`` sends each request once.
        backoff: seconds before the first retry; retry ``k`` waits ``backoff * 2**(k - 1)`` seconds.
        timeout: seconds to wait for the server to connect and to answer (per request).
        session: a ``requests.Session``; when ``None``, :func:`~sdmad_monai.deploy.security.make_session` builds one
            from ``credentials`` and ``tls``.
        sleep: the waiting function (``time.sleep``; tests record the delays with it).
        credentials: HTTP Basic or Bearer credentials (:func:`~sdmad_monai.deploy.security.load_credentials`).
        tls: CA bundle, client certificate, ``allow_insecure`` (plain ``http://`` to a host that is not loopback).

    Raises:
        ValueError: ``url`` is not an ``http(s)://`` URL, or ``retries`` / ``backoff`` / ``timeout`` are negative.
        PacsSecurityError: ``url`` holds credentials, or is plain ``http://`` to a host that is not loopback without
            ``tls.allow_insecure``; ``session`` and ``credentials``/``tls`` both given.
    """

    def __init__(
        self,
        url: str,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
        credentials: PacsCredentials | None = None,
        tls: TlsSettings | None = None,
    ):
        url = str(url).strip().rstrip("/")
        tls = tls or TlsSettings()
        check_url(url, allow_insecure=tls.allow_insecure)  # before anything else: no credentials in a message
        if not re.match(r"^https?://[^/:@]+(:\d+)?(/.*)?$", url):
            raise ValueError(
                f"DICOMweb URL {redact(url)!r} is not an http(s) URL; expected e.g. http://127.0.0.1:8042/dicom-web."
            )
        if session is not None and (credentials is not None or tls != TlsSettings()):
            from .security import PacsSecurityError

            raise PacsSecurityError("Pass either a session or credentials/tls settings, not both.")
        if isinstance(retries, bool) or int(retries) != retries or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}.")
        if backoff < 0 or timeout <= 0:
            raise ValueError(
                f"backoff must be >= 0 and timeout > 0 seconds, got backoff={backoff!r}, timeout={timeout!r}."
            )
        self.url, self.retries, self.backoff, self.timeout = url, int(retries), float(backoff), float(timeout)
        self._sleep = sleep or time.sleep
        self.credentials, self.tls = credentials, tls
        self.session = session if session is not None else make_session(credentials, tls)
        self.client = DICOMwebClient(url, session=self.session, timeout=self.timeout)
        self.client.set_http_retry_params(retry=False)  # the retries are ours: bounded, logged, 5xx included

    # ----------------------------------------------------------------------------------------- retrying
    def call(self, what: str, request: Callable[[], Any]) -> Any:
        """``request()``, sent again after a connection error, a timeout or an HTTP 5xx / 429 answer.

        Args:
            what: the request in words, for logs and errors (``"search the series of study 1.2.3"``).
            request: sends the request and returns its result.

        Raises:
            PacsUnreachableError: every attempt failed that way.
            DicomWebError: the server refused the request (another HTTP error status).
        """
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return request()
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status is None or not (status >= 500 or status in _RETRY_STATUS):
                    where = error.response.url if error.response is not None else self.url
                    hint = ""
                    if status in (401, 403):
                        hint = (
                            f" Check the credentials ({self.credentials.describe()})."
                            if self.credentials is not None
                            else " The server asks for credentials: pass --auth_file or --auth_env."
                        )
                    raise DicomWebError(
                        f"DICOMweb server {self.url} refused to {what}: {_short_reason(error)} for {where}.{hint}"
                    ) from error
                reason = _short_reason(error)
            except requests.exceptions.SSLError as error:  # not retried: the same certificate next time
                where = f"--ca_bundle {self.tls.ca_bundle}" if self.tls and self.tls.ca_bundle else "the system CAs"
                raise DicomWebError(
                    f"TLS connection to DICOMweb server {self.url} failed ({_short_reason(error)}) when trying to "
                    f"{what}: its certificate is not trusted by {where} (or the server wants a client certificate: "
                    "--client_cert). Nothing was sent."
                ) from error
            except _RETRY_ERRORS as error:
                reason = _short_reason(error)
            if attempt < attempts:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "DICOMweb server %s: could not %s (attempt %d of %d: %s); retrying in %.3g s.",
                    self.url,
                    what,
                    attempt,
                    attempts,
                    redact(reason),
                    delay,
                )
                self._sleep(delay)
        raise PacsUnreachableError(
            f"DICOMweb server {self.url} is not reachable: could not {what} after {attempts} attempt(s) "
            f"(last: {reason}). Check that the PACS is running and that the URL is right.",
            attempts,
        )

    # ------------------------------------------------------------------------------------- transactions
    def search_series(self, study_instance_uid: str) -> list[Dataset]:
        """QIDO-RS: the series of a study (series-level attributes: Modality, SeriesDescription, number of
        instances ...)."""
        found = self.call(
            f"search the series of study {study_instance_uid}",
            lambda: self.client.search_for_series(study_instance_uid=study_instance_uid, get_remaining=True),
        )
        return [_dataset(item) for item in found]

    def series_metadata(self, study_instance_uid: str, series_instance_uid: str) -> list[Dataset]:
        """WADO-RS metadata: the headers of every instance of a series (no pixel data)."""
        found = self.call(
            f"retrieve the metadata of series {series_instance_uid}",
            lambda: self.client.retrieve_series_metadata(study_instance_uid, series_instance_uid),
        )
        return [_dataset(item) for item in found]

    def retrieve_series(self, study_instance_uid: str, series_instance_uid: str) -> list[Dataset]:
        """WADO-RS: every instance of a series, with its pixel data, in memory (a retry starts the series over)."""
        return self.call(
            f"retrieve the instances of series {series_instance_uid}",
            lambda: list(self.client.iter_series(study_instance_uid, series_instance_uid)),
        )

    def instance_uids(self, study_instance_uid: str, series_instance_uid: str) -> list[str]:
        """QIDO-RS: the SOPInstanceUIDs of a series (empty when the series does not exist)."""
        found = self.call(
            f"search the instances of series {series_instance_uid}",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid, get_remaining=True
            ),
        )
        return [str(_dataset(item).get("SOPInstanceUID")) for item in found if "SOPInstanceUID" in _dataset(item)]

    def has_instance(self, study_instance_uid: str, sop_instance_uid: str) -> bool:
        """QIDO-RS: whether the study holds an instance with this SOPInstanceUID."""
        found = self.call(
            f"search instance {sop_instance_uid} in study {study_instance_uid}",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_instance_uid, search_filters={"SOPInstanceUID": sop_instance_uid}
            ),
        )
        return any(_dataset(item).get("SOPInstanceUID") == sop_instance_uid for item in found)

    def store(self, dataset: Dataset) -> None:
        """STOW-RS: store one instance into its study; checks the answer for a failure.

        Raises:
            DicomWebError: the server reports the instance as failed.
        """
        study_uid, sop_uid = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
        answer = self.call(
            f"store instance {sop_uid} into study {study_uid}",
            lambda: self.client.store_instances([dataset], study_instance_uid=study_uid),
        )
        failed = list(getattr(answer, "FailedSOPSequence", []) or [])
        if failed:
            reasons = ", ".join(str(getattr(item, "FailureReason", "?")) for item in failed)
            raise DicomWebError(
                f"DICOMweb server {self.url} did not store instance {sop_uid} (STOW-RS failure reason {reasons})."
            )

    def describe(self, series: Dataset) -> str:
        """``<SeriesInstanceUID> (MR, 'AX T2', 12 instances)`` from a QIDO-RS series answer."""
        parts = [str(series.get("Modality", "") or "?")]
        description = str(series.get("SeriesDescription", "") or "")
        if description:
            parts.append(repr(description))
        count = series.get("NumberOfSeriesRelatedInstances")
        if count not in (None, ""):
            parts.append(f"{count} instance{'' if int(count) == 1 else 's'}")
        return f"{series.SeriesInstanceUID} ({', '.join(parts)})"


@dataclass
class StoredReport:
    """What happened to the SR of one selected series.

    Attributes:
        series_instance_uid: the source series.
        sop_instance_uid: the SR's SOPInstanceUID.
        status: ``"stored"`` (sent now), or ``"already in PACS"`` (found there, nothing sent).
        files: the local copies (SR, JSON) when an ``output_dir`` was given and the series was processed.
        supersedes: SRs of the same model for the same series, made earlier from another set of its instances (an
            incomplete series), that this one replaces in meaning; they stay in the PACS (nothing is deleted).
    """

    series_instance_uid: str
    sop_instance_uid: str
    status: str
    files: list[Path] = field(default_factory=list)
    supersedes: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.status}: SR {self.sop_instance_uid} for series {self.series_instance_uid}"
        return text + (f" (supersedes SR {', '.join(self.supersedes)})" if self.supersedes else "")


def _selection(
    connection: DicomWebConnection, study_instance_uid: str, series: Sequence[Dataset], rules: SeriesRules
) -> tuple[dict[str, str | None], dict[str, list[Dataset]]]:
    """Why each series is skipped (``None``: selected), in the QIDO-RS order, and the series' headers: the rules' own
    functions, the modality rule alone on the QIDO-RS answer (a rejected series costs no further request, its
    headers are that answer), then every rule on the WADO-RS metadata of the others."""
    modality_only = dataclasses.replace(rules, body_part_fields=(), orientations=(), min_instances=1)
    headers: dict[str, list[Dataset]] = {}
    reasons: dict[str, str | None] = {}
    metadata: dict[str, list[Dataset]] = {}
    for item in series:
        uid = str(item.SeriesInstanceUID)
        reasons[uid] = modality_only.rejection_reason([item])
        if reasons[uid] is not None:
            headers[uid] = [item]
        else:
            metadata[uid] = headers[uid] = connection.series_metadata(study_instance_uid, uid)
    reasons.update(explain_series(metadata, rules))
    return reasons, headers


def process_study(
    connection: DicomWebConnection | str,
    study_instance_uid: str,
    detector: SignDrivenDetector | str | Path | Callable[[], SignDrivenDetector],
    rules: SeriesRules | str | Path | None = None,
    slices: Sequence[int] | str | None = DEFAULT_SLICES,
    axis: str = "axial",
    output_dir: str | Path | None = None,
    strict: bool = False,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    finding_codes: FindingCodes | str | Path | None = None,
    credentials: PacsCredentials | None = None,
    tls: TlsSettings | None = None,
    **infer_kwargs: Any,
) -> list[StoredReport]:
    """Run SD-MAD on the series of one study on a DICOMweb server that match the rules; store one SR per series.

    The steps, logs and faults are described in the module docstring.

    Args:
        connection: a :class:`DicomWebConnection`, or the DICOMweb base URL (then ``retries``, ``backoff`` and
            ``timeout`` configure the connection).
        study_instance_uid: the study.
        detector: the trained detector, its checkpoint path, or a function returning it; loaded only once a series
            is selected.
        rules: :class:`~sdmad_monai.deploy.rules.SeriesRules`, a rules JSON file, or ``None`` for the shipped rules.
        slices: canonical slice indices (default ``(0, 5, 10)``), ``"0,5,10"``, or ``None``/``"all"``.
        axis: slicing axis.
        output_dir: where to keep a local copy of each SR and its JSON (``sdmad_sr_<SeriesInstanceUID>.dcm`` /
            ``.json``); ``None`` keeps none.
        strict: raise :class:`~sdmad_monai.deploy.process.NoMatchingSeriesError` when no series matches, instead of
            returning ``[]``.
        retries: see :class:`DicomWebConnection` (used when ``connection`` is a URL).
        backoff: see :class:`DicomWebConnection`.
        timeout: see :class:`DicomWebConnection`.
        finding_codes: how the SR codes the categories (:func:`~sdmad_monai.deploy.codes.load_finding_codes`), a
            finding-codes JSON file, or ``None`` for the shipped codes; read and checked before the server is asked.
        credentials: see :class:`DicomWebConnection` (used when ``connection`` is a URL).
        tls: see :class:`DicomWebConnection` (used when ``connection`` is a URL).
        infer_kwargs: ``batch_size``, ``device`` for :func:`~sdmad_monai.inference.infer_volume`.

    Returns:
        One :class:`StoredReport` per selected series that has an SR on the server now; ``[]`` when no series
        matches (nothing is stored).

    Raises:
        PacsUnreachableError: the server does not answer (after the retries).
        StudyNotFoundError: the server has no series of this study.
        NoMatchingSeriesError: ``strict`` and no series matches the rules.
        SeriesProcessingError: a selected series could not be processed (missing slice ...); it gets no SR, the
            others' SRs are stored first and listed in ``error.written``.
        DicomWebError: the server refused a request or a store.
    """
    if not isinstance(connection, DicomWebConnection):
        connection = DicomWebConnection(
            connection, retries=retries, backoff=backoff, timeout=timeout, credentials=credentials, tls=tls
        )
    url = connection.url
    study_instance_uid = str(study_instance_uid).strip()
    rules = rules if isinstance(rules, SeriesRules) else load_series_rules(rules)
    finding_codes = finding_codes if isinstance(finding_codes, FindingCodes) else load_finding_codes(finding_codes)

    series = connection.search_series(study_instance_uid)
    if not series:
        raise StudyNotFoundError(
            f"Study {study_instance_uid} not found on DICOMweb server {url}: a QIDO-RS search for its series "
            "returned nothing. Check the StudyInstanceUID and that the study was sent to this server."
        )
    logger.info(
        "Study %s on %s: %d series found: %s.",
        study_instance_uid,
        url,
        len(series),
        "; ".join(connection.describe(s) for s in series),
    )
    reasons, headers = _selection(connection, study_instance_uid, series, rules)
    selected = pipeline.select_series_to_process(
        headers,
        rules,
        f"of study {study_instance_uid} on {url}",
        strict,
        done="retrieved, nothing stored",
        reasons=reasons,
    )
    if not selected:
        return []
    logger.info("Selected %d series: %s.", len(selected), ", ".join(selected))

    from .sr import AlgorithmInfo, sr_identifiers

    detector = pipeline.resolve_detector(detector)
    algorithm = AlgorithmInfo.from_detector(detector)
    reports: list[StoredReport] = []
    to_process: dict[str, str] = {}  # source series -> expected SR SOPInstanceUID
    superseded: dict[str, tuple[str, ...]] = {}
    for uid in selected:
        instances = [str(ds.SOPInstanceUID) for ds in headers[uid] if "SOPInstanceUID" in ds]
        ids = sr_identifiers(study_instance_uid, uid, algorithm, detector.category_labels, instances, finding_codes)
        sop_uid = ids.sop_instance_uid
        earlier = tuple(
            u for u in connection.instance_uids(study_instance_uid, ids.series_instance_uid) if u != sop_uid
        )
        if earlier:
            superseded[uid] = earlier
            logger.warning(
                "Series %s: this model's SR %s in %s was made from another set of the series' instances (%d now); "
                "the new SR supersedes it.",
                uid,
                ", ".join(earlier),
                url,
                len(instances),
            )
        if connection.has_instance(study_instance_uid, sop_uid):
            logger.info(
                "Series %s: SR %s of this model (version %s, checkpoint sha256:%s) is already in %s; series not "
                "retrieved, nothing stored.",
                uid,
                sop_uid,
                algorithm.version,
                algorithm.fingerprint[:12],
                url,
            )
            reports.append(StoredReport(uid, sop_uid, "already in PACS"))
        else:
            to_process[uid] = sop_uid
    if not to_process:
        return reports

    def retrieve(number: int, uid: str, name: str, location: str) -> pipeline.SeriesJob:
        instances = connection.retrieve_series(study_instance_uid, uid)
        logger.info("[%d/%d] retrieved %d instances of series %s.", number, len(to_process), len(instances), uid)
        return pipeline.job_from_datasets(instances, name, location)

    pending = []
    for number, uid in enumerate(to_process, start=1):
        location = f"{url}/studies/{study_instance_uid}/series/{uid}"
        name = pipeline.describe_series(headers[uid], location)
        pending.append(pipeline.PendingSeries(name, functools.partial(retrieve, number, uid, name, location)))

    def store(findings: pipeline.SeriesFindings) -> list[Path]:
        report = _store_report(connection, findings, study_instance_uid, to_process, output_dir, finding_codes)
        reports.append(dataclasses.replace(report, supersedes=superseded.get(report.series_instance_uid, ())))
        return report.files

    options = pipeline.SeriesOptions.create(axis, slices, **infer_kwargs)
    outcome = pipeline.run_jobs(detector, pending, options, sink=store)
    try:
        pipeline.raise_failures(outcome)
    except SeriesProcessingError as failure:
        stored = [str(r) for r in reports]
        raise SeriesProcessingError(
            f"Study {study_instance_uid} on {url}: {failure} No SR was stored for the failed series"
            + (f"; for the others: {'; '.join(stored)}." if stored else "."),
            [p for r in reports for p in r.files],
        ) from failure
    return reports


def _store_report(
    connection: DicomWebConnection,
    findings: pipeline.SeriesFindings,
    study_instance_uid: str,
    expected: dict[str, str],
    keep: str | Path | None,
    finding_codes: FindingCodes,
) -> StoredReport:
    """Build the SR of one series in memory and STOW-RS it unless the server has it already; with ``keep``, write
    the SR and its JSON copy (which records the server) there."""
    from .sr import build_sr, findings_document, save_sr

    sr = build_sr(
        findings.result,
        findings.datasets,
        findings.algorithm,
        source_images=findings.source_images,
        finding_codes=finding_codes,
    )
    sop_uid = str(sr.SOPInstanceUID)
    source = str(findings.datasets[0].SeriesInstanceUID)
    if expected.get(source) != sop_uid:  # sr_identifiers and build_sr disagree: a bug, never store then
        raise DicomWebError(
            f"The SR built for series {source} has SOPInstanceUID {sop_uid}, expected {expected.get(source)}; "
            "nothing stored."
        )
    url = connection.url
    if connection.has_instance(study_instance_uid, sop_uid):
        status = "already in PACS"
        logger.info("SR %s for series %s is already in %s; not stored again.", sop_uid, source, url)
    else:
        connection.store(sr)
        if not connection.has_instance(study_instance_uid, sop_uid):
            raise DicomWebError(
                f"DICOMweb server {url} accepted SR {sop_uid} but a search does not find it in study "
                f"{study_instance_uid}."
            )
        status = "stored"
        logger.info("Stored SR %s (series %s) for series %s in %s.", sop_uid, sr.SeriesInstanceUID, source, url)
    files: list[Path] = []
    if keep is not None:
        document = findings_document(findings.result, sr, findings.algorithm, findings.datasets, finding_codes)
        document["source"] = f"{url}/studies/{study_instance_uid}/series/{source}"
        document["pacs"] = {"url": url, "status": status}
        files = save_sr(sr, redact_json(document), keep)
    return StoredReport(source, sop_uid, status, files)
