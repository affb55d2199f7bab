"""The ``sdmad`` command line (``python -m sdmad_monai`` does the same), built with ``fire``.

Commands:

``process_folder``
    Run SD-MAD on the DICOM series of a folder that match the series rules and write one DICOM Comprehensive SR
    plus a JSON copy per series::

        sdmad process_folder --input_dir study/ --output_dir out/ --model models/model.pt \\
            [--rules rules.json] [--finding_codes codes.json] [--slices 0,5,10 | --slices all] [--axis axial] \\
            [--device cpu]

``process_study``
    The same for one study on a PACS, over DICOMweb (QIDO-RS search, WADO-RS retrieval of the selected series only,
    STOW-RS of the SRs; an SR already on the PACS is not stored again)::

        sdmad process_study --url http://127.0.0.1:8042/dicom-web --study_uid 1.2.3... --model models/model.pt \\
            [--rules rules.json] [--finding_codes codes.json] [--slices 0,5,10] [--output_dir local_copy/] \\
            [--retries 3] [--backoff 1.0] [--timeout 30] [--auth_file pacs.secret | --auth_env PACS_AUTH] \\
            [--ca_bundle ca.pem] [--client_cert client.pem [--client_key client.key]] [--allow_insecure]

``listen``
    A DICOM listener (C-STORE / C-ECHO SCP, ``pynetdicom``): studies sent by a PACS are processed once no new
    instance arrived for ``--settle_seconds``, and their SRs are sent by C-STORE to ``--destination``; jobs live in
    a SQLite queue under ``--work_dir`` (a restart loses no study and sends no duplicate SR); see
    :mod:`sdmad_monai.deploy.listener`::

        sdmad listen --work_dir /var/lib/sdmad --destination ORTHANC@127.0.0.1:4242 --allow ORTHANC \\
            --model models/model.pt [--ae_title SDMAD] [--host 127.0.0.1] [--port 11112] [--settle_seconds 10] \\
            [--study_timeout 600] [--workers 1] [--retries 10] [--backoff 5] [--max_backoff 600]

``write_demo_study``
    Write a NIfTI volume (e.g. one of the demo dataset) as a synthetic axial brain MR DICOM series, to try the
    commands above::

        sdmad write_demo_study --volume .sdmad_cache/demo/images/file_brain_AXT1_DEMO_0000.nii.gz \\
            --output_dir demo_study/

``sweep``
    Train and evaluate the bundle once per seed (each step is ``python -m monai.bundle run ...`` in its own process),
    then write the mean ± sample std over the seeds (``summary.json``, ``.csv``, ``.md``, ``.png``); see
    :mod:`sdmad_monai.sweep`::

        sdmad sweep --seeds 0,1,2,3,4 [--config_file configs/train.json] [--evaluate_config configs/evaluate.json] \\
            [--output_dir sweep] [--override max_epochs=10 --override k_shot=1 ...] [--force] [--quiet]

Errors (an unknown command or option, a value of the wrong type -- refused before any work --, missing model or
folder, bad rules or finding-codes file, no matching series, a broken series, study not found, PACS not
reachable after the retries, bad listener settings or a port in use, bad sweep arguments, a failed seed of a sweep)
end the command with one line on stderr, ``sdmad: error: ...``, and exit status 1.

Size: one method per command; fire reads the signatures, so each command lists its own options (the only
repetition here, by design).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import format_traceback, is_user_error, one_line
from .utils import ensure_writable_folder

__all__ = ["SdmadCommands", "exit_on_sigterm", "main"]

logger = logging.getLogger("sdmad_monai.cli")


def _parse_slices(slices: Any) -> list[int] | str:
    """``fire`` turns ``--slices 0,5,10`` into a tuple and ``--slices 5`` into an int; accept those and strings."""
    if isinstance(slices, (list, tuple)):
        return [int(s) for s in slices]
    if isinstance(slices, int) and not isinstance(slices, bool):
        return [slices]
    return str(slices)


def _check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without one, before any work (it used to surface as a checkpoint error)."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available on this machine; use --device cpu.")


def _operating_point(target_sensitivity: Any) -> dict[str, float] | None:
    """``--target_sensitivity`` as the detector's operating point (``None``: Eq. 8 decides)."""
    if target_sensitivity is None:
        return None
    try:
        value = float(target_sensitivity)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"--target_sensitivity {target_sensitivity!r}: expected a number in (0, 1], e.g. 0.9.")
    return {"target_sensitivity": value}


def _detector_loader(
    model: str, device: str, pretrained: str | None, target_sensitivity: Any = None
) -> Callable[[], Any]:
    """A function loading the checkpoint, called only once a series matches the rules (torch is imported then)."""
    operating_point = _operating_point(target_sensitivity)  # checked now, before any work

    def load_detector():
        from .networks.detector import SignDrivenDetector

        return SignDrivenDetector.load(
            model, map_location=device, pretrained=pretrained, operating_point=operating_point
        )

    return load_detector


class SdmadCommands:
    """SD-MAD: few-shot multi-label anomaly detection on brain MRI (research use only)."""

    def process_folder(
        self,
        input_dir: str,
        output_dir: str,
        model: str = "models/model.pt",
        rules: str | None = None,
        finding_codes: str | None = None,
        slices: Any = "0,5,10",
        axis: str = "axial",
        device: str = "cpu",
        batch_size: int = 16,
        pretrained: str | None = None,
        target_sensitivity: float | None = None,
        anomaly_map: bool = False,
    ) -> list[str]:
        """Write one DICOM SR + JSON per series of ``input_dir`` that matches the series rules.

        Args:
            input_dir: folder of DICOM files (searched recursively; several series may share a folder).
            output_dir: where ``sdmad_sr_<SeriesInstanceUID>.dcm`` and ``.json`` are written.
            model: detector checkpoint (``SignDrivenDetector.save`` or a bundle checkpoint).
            rules: series rules JSON (default: the shipped axial brain MR rules).
            finding_codes: finding-codes JSON: how the SR codes each category (default: the shipped
                ``sdmad_monai/deploy/finding_codes.json``, standard SCT / DCM codes where DICOM has them).
            slices: canonical slice indices, e.g. ``0,5,10`` (the fastMRI+ policy), or ``all``.
            axis: slicing axis: axial, coronal or sagittal.
            device: torch device for inference.
            batch_size: slices per forward pass.
            pretrained: where the backbone weights are now, if the checkpoint names a local file that moved.
            target_sensitivity: decide each finding by its calibrated probability, at the threshold reaching this
                sensitivity on the training's validation slices (default: Eq. 8 decides).
            anomaly_map: also write each series' 3D anomaly map as a DICOM Parametric Map,
                ``sdmad_map_<SeriesInstanceUID>.dcm``.

        Returns:
            The written files.
        """
        if not Path(input_dir).is_dir():
            raise FileNotFoundError(f"Input folder {input_dir} does not exist (expected a folder of DICOM files).")
        if not Path(model).is_file():
            raise FileNotFoundError(f"Model checkpoint {model} does not exist (pass --model path/to/model.pt).")
        _check_device(device)
        ensure_writable_folder(output_dir, "--output_dir")
        # imported here so that the checks above answer without loading torch
        from .deploy.codes import load_finding_codes
        from .deploy.process import process_dicom_folder
        from .deploy.rules import load_series_rules

        load_detector = _detector_loader(model, device, pretrained, target_sensitivity)
        series_rules = load_series_rules(rules)  # a bad rules file fails before anything is read
        codes = load_finding_codes(finding_codes)  # so does a bad finding-codes file
        written = process_dicom_folder(
            load_detector,
            input_dir,
            output_dir,
            rules=series_rules,
            finding_codes=codes,
            slices=_parse_slices(slices),
            axis=axis,
            strict=True,
            anomaly_map=bool(anomaly_map),
            batch_size=batch_size,
        )
        return [str(p) for p in written]

    def process_study(
        self,
        url: str,
        study_uid: Any,
        model: str = "models/model.pt",
        rules: str | None = None,
        finding_codes: str | None = None,
        slices: Any = "0,5,10",
        axis: str = "axial",
        output_dir: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 30.0,
        device: str = "cpu",
        batch_size: int = 16,
        pretrained: str | None = None,
        target_sensitivity: float | None = None,
        auth_env: str | None = None,
        auth_file: str | None = None,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        allow_insecure: bool = False,
    ) -> list[str]:
        """Run SD-MAD on one study of a PACS over DICOMweb and store one DICOM SR per matching series back into it.

        Only searches, retrieves and stores: nothing on the PACS is changed or deleted. A series whose SR (same
        model, same series: deterministic UIDs) is already on the PACS is neither retrieved nor stored again.

        Args:
            url: DICOMweb base URL, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc with its DICOMweb plugin).
            study_uid: StudyInstanceUID of the study.
            model: detector checkpoint (``SignDrivenDetector.save`` or a bundle checkpoint).
            rules: series rules JSON (default: the shipped axial brain MR rules).
            finding_codes: finding-codes JSON: how the SR codes each category (default: the shipped
                ``sdmad_monai/deploy/finding_codes.json``, standard SCT / DCM codes where DICOM has them).
            slices: canonical slice indices, e.g. ``0,5,10`` (the fastMRI+ policy), or ``all``.
            axis: slicing axis: axial, coronal or sagittal.
            output_dir: keep a local copy of each SR and its JSON here (default: none).
            retries: how often a request that got no answer (connection error, timeout, HTTP 5xx/429) is sent
                again before giving up.
            backoff: seconds before the first retry, doubled for each further retry.
            timeout: seconds to wait for the PACS per request.
            device: torch device for inference.
            batch_size: slices per forward pass.
            pretrained: where the backbone weights are now, if the checkpoint names a local file that moved.
            target_sensitivity: decide each finding by its calibrated probability, at the threshold reaching this
                sensitivity on the training's validation slices (default: Eq. 8 decides).
            auth_env: name of an environment variable holding the PACS secret: ``<user>:<password>`` (HTTP Basic)
                or ``bearer:<token>``.
            auth_file: a file holding that secret (one line), readable by its owner only (``chmod 600``).
            ca_bundle: PEM file of the CA(s) that signed the PACS's certificate (default: the system CAs);
                certificate verification cannot be turned off.
            client_cert: PEM client certificate, when the PACS asks for one (key inside or in ``client_key``).
            client_key: PEM private key of ``client_cert`` (owner-only).
            allow_insecure: permit plain ``http://`` to a host that is not loopback (warned once).

        Returns:
            One line per selected series (``stored: SR <uid> for series <uid>`` or ``already in PACS: ...``),
            then the local copies written.
        """
        if isinstance(study_uid, (float, bool)) or study_uid is None or not str(study_uid).strip():
            raise ValueError(
                f"--study_uid {study_uid!r} is not a StudyInstanceUID; pass the UID as text (quote it if the shell "
                "or fire reads it as a number, e.g. --study_uid='\"1.20\"')."
            )
        from .deploy.security import TlsSettings, check_url, install_log_redaction, load_credentials

        install_log_redaction()  # before the secret is read: every log line of the run is redacted
        tls = TlsSettings.from_options(ca_bundle, client_cert, client_key, allow_insecure=bool(allow_insecure))
        check_url(str(url), allow_insecure=tls.allow_insecure)  # before any file is read or the PACS contacted
        credentials = load_credentials(auth_env, auth_file)
        if not Path(model).is_file():
            raise FileNotFoundError(f"Model checkpoint {model} does not exist (pass --model path/to/model.pt).")
        _check_device(device)
        if output_dir is not None:
            ensure_writable_folder(output_dir, "--output_dir")
        from .deploy.codes import load_finding_codes
        from .deploy.dicomweb import DicomWebConnection, process_study
        from .deploy.rules import load_series_rules

        load_detector = _detector_loader(model, device, pretrained, target_sensitivity)
        series_rules = load_series_rules(rules)  # a bad rules file fails before the PACS is contacted
        codes = load_finding_codes(finding_codes)  # so does a bad finding-codes file
        connection = DicomWebConnection(
            str(url),
            retries=retries,
            backoff=float(backoff),
            timeout=float(timeout),
            credentials=credentials,
            tls=tls,
        )
        reports = process_study(
            connection,
            str(study_uid),
            load_detector,
            rules=series_rules,
            finding_codes=codes,
            slices=_parse_slices(slices),
            axis=axis,
            output_dir=output_dir,
            strict=True,
            batch_size=batch_size,
        )
        return [str(r) for r in reports] + [str(p) for r in reports for p in r.files]

    def listen(
        self,
        work_dir: str,
        destination: str,
        allow: Any = None,
        model: str = "models/model.pt",
        ae_title: str = "SDMAD",
        host: str = "127.0.0.1",
        port: int = 11112,
        settle_seconds: float = 10.0,
        study_timeout: float = 600.0,
        workers: int = 1,
        retries: int = 10,
        backoff: float = 5.0,
        max_backoff: float = 600.0,
        timeout: float = 30.0,
        shutdown_grace: float = 30.0,
        rules: str | None = None,
        finding_codes: str | None = None,
        slices: Any = "0,5,10",
        axis: str = "axial",
        device: str = "cpu",
        batch_size: int = 16,
        pretrained: str | None = None,
        target_sensitivity: float | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        destination_tls: bool = False,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        allow_insecure: bool = False,
        anomaly_map: bool = False,
    ) -> None:
        """Receive studies by DICOM C-STORE, run SD-MAD on each once it is complete, send its SRs by C-STORE.

        Runs until SIGTERM or Ctrl-C (then it stops accepting, waits up to ``--shutdown_grace`` s for the job under
        way, leaves any unfinished job in the queue and exits with status 0). Needs ``pynetdicom``
        (``pip install -e ".[pacs]"``).

        Args:
            work_dir: the received instances, SRs, per-study logs and reports, and the job queue (SQLite).
            destination: where the SRs go: ``AET@host:port`` of a Storage SCP, e.g. ``ORTHANC@127.0.0.1:4242``.
            allow: calling AE titles allowed to send, e.g. ``ORTHANC`` or ``ORTHANC,PACS2``; ``any`` accepts all.
            model: detector checkpoint (``SignDrivenDetector.save`` or a bundle checkpoint).
            ae_title: the listener's AE title (associations calling another one are rejected).
            host: address to listen on (``0.0.0.0`` for every interface).
            port: TCP port to listen on.
            settle_seconds: process a study once no new instance of it arrived for this long.
            study_timeout: process an incomplete study (a series with missing instances) anyway this many seconds
                after its first instance, reporting it as partial.
            workers: studies processed at the same time.
            retries: how often sending a study's SRs is tried again before the study is reported failed.
            backoff: seconds before the first retry, doubled for each further retry ...
            max_backoff: ... up to this.
            timeout: seconds to wait for the destination and for an idle sender.
            shutdown_grace: seconds a stop waits for the job under way.
            rules: series rules JSON (default: the shipped axial brain MR rules).
            finding_codes: finding-codes JSON (default: the shipped codes).
            slices: canonical slice indices, e.g. ``0,5,10``, or ``all``.
            axis: slicing axis: axial, coronal or sagittal.
            device: torch device for inference.
            batch_size: slices per forward pass.
            pretrained: where the backbone weights are now, if the checkpoint names a local file that moved.
            target_sensitivity: decide each finding by its calibrated probability at this sensitivity.
            tls_cert: PEM with the listener's certificate (and key): accept DICOM TLS associations only.
            tls_key: PEM with that certificate's key, when not inside ``tls_cert`` (owner-only: ``chmod 600``).
            tls_client_ca: PEM of the CA(s) whose client certificates senders must present (mutual TLS).
            destination_tls: send the SRs over DICOM TLS (the destination's certificate verified, its host checked).
            ca_bundle: with ``destination_tls``: PEM of the CA(s) that signed the destination's certificate
                (default: the system CAs).
            client_cert: with ``destination_tls``: PEM client certificate (and key) for a destination that asks.
            client_key: PEM key of ``client_cert``, when not inside it (owner-only).
            allow_insecure: permit plain (unencrypted) DICOM on a listening address or to a destination that is
                not loopback (warned once).
            anomaly_map: also send each series' 3D anomaly map (DICOM Parametric Map) with its SR.
        """
        import os
        import signal
        import threading

        if not Path(model).is_file():
            raise FileNotFoundError(f"Model checkpoint {model} does not exist (pass --model path/to/model.pt).")
        _check_device(device)
        ensure_writable_folder(work_dir, "--work_dir")
        from .deploy.codes import load_finding_codes
        from .deploy.listener import Destination, DicomListener, ListenerConfig, parse_allow_list
        from .deploy.rules import load_series_rules
        from .deploy.security import PacsSecurityError, ServerTls, TlsSettings

        if not isinstance(destination_tls, bool) or not isinstance(allow_insecure, bool):
            raise PacsSecurityError("--destination_tls and --allow_insecure are flags (no value).")
        if not isinstance(anomaly_map, bool):
            raise ValueError(f"--anomaly_map is a flag (no value), got {anomaly_map!r}.")
        if not destination_tls and any(v is not None for v in (ca_bundle, client_cert, client_key)):
            raise PacsSecurityError(
                "--ca_bundle, --client_cert and --client_key set up TLS towards the destination: add --destination_tls."
            )
        sending_tls = TlsSettings.from_options(ca_bundle, client_cert, client_key) if destination_tls else None

        config = ListenerConfig(
            work_dir=Path(work_dir),
            destination=Destination.parse(destination),
            allowed_aets=parse_allow_list(allow),
            ae_title=ae_title,
            host=str(host),
            port=port,
            settle_seconds=settle_seconds,
            study_timeout=study_timeout,
            workers=workers,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            network_timeout=timeout,
            shutdown_grace=shutdown_grace,
            rules=load_series_rules(rules),
            finding_codes=load_finding_codes(finding_codes),
            slices=_parse_slices(slices),
            axis=axis,
            infer_kwargs={"batch_size": batch_size},
            server_tls=ServerTls.from_options(tls_cert, tls_key, tls_client_ca),
            destination_tls=sending_tls,
            allow_insecure=allow_insecure,
            anomaly_map=anomaly_map,
        )
        load_detector = _detector_loader(model, device, pretrained, target_sensitivity)
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: stop.set())
        listener = DicomListener(config, load_detector)
        listener.start()
        if not listener.serve(stop):  # a job still running: it stays in the queue; its thread must not hold us
            logging.shutdown()
            os._exit(0)

    def write_demo_study(
        self,
        volume: str,
        output_dir: str,
        study_uid: str | None = None,
        series_description: str = "AX T1 (SD-MAD demo)",
    ) -> dict[str, Any]:
        """Write a NIfTI volume as a synthetic axial brain MR DICOM series (one file per slice), to try
        ``process_folder`` / ``process_study`` (not for clinical use).

        The UIDs derive from the volume file's content, so writing the same volume again gives the same study.

        Args:
            volume: a NIfTI file, e.g. ``.sdmad_cache/demo/images/file_brain_AXT1_DEMO_0000.nii.gz`` (written by
                the bundle's training workflow).
            output_dir: a new or empty folder for the ``IM*.dcm`` files.
            study_uid: StudyInstanceUID to use instead of the derived one.
            series_description: SeriesDescription.

        Returns:
            ``study_instance_uid``, ``series_instance_uid``, ``files`` (count) and ``folder``.
        """
        source = Path(volume)
        if not source.is_file():
            raise FileNotFoundError(
                f"Volume {volume} does not exist (expected a NIfTI file such as "
                ".sdmad_cache/demo/images/file_brain_AXT1_DEMO_0000.nii.gz)."
            )
        folder = Path(output_dir)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(f"Output folder {folder} exists and is not empty; choose a new folder.")
        import hashlib

        import nibabel as nib
        import numpy as np
        from nibabel.spatialimages import SpatialImage
        from pydicom.uid import UID, generate_uid

        from .deploy.demo import write_dicom_series

        try:
            image = nib.load(str(source))
            if not isinstance(image, SpatialImage):  # e.g. CIFTI: no voxel grid (affine) to write DICOM on
                raise TypeError(f"a {type(image).__name__}, not a volume with an affine")
            data = np.asarray(image.dataobj, dtype=np.float32)
        except Exception as error:  # nibabel raises several types for a file that is not NIfTI
            raise ValueError(f"Volume {volume} could not be read as NIfTI: {error}") from error
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"Volume {volume} must be 3D, got shape {data.shape}.")
        if study_uid is not None and not UID(str(study_uid)).is_valid:
            raise ValueError(
                f"--study_uid {study_uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters, no "
                "leading zeros in a component); leave it out to derive one from the volume."
            )
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        study = str(study_uid) if study_uid is not None else generate_uid(entropy_srcs=["sdmad-demo-study", digest])
        series = generate_uid(entropy_srcs=["sdmad-demo-series", study, digest])
        paths = write_dicom_series(
            data,
            folder,
            study_instance_uid=study,
            series_instance_uid=series,
            affine=image.affine,
            series_description=series_description,
            attributes={
                "BodyPartExamined": "BRAIN",
                "StudyDescription": "MR BRAIN (SD-MAD demo)",
                "PatientID": f"sdmad-demo-{digest[:8]}",
            },
        )
        logger.info("Wrote %d DICOM files of %s into %s.", len(paths), source, folder)
        return {"study_instance_uid": study, "series_instance_uid": series, "files": len(paths), "folder": str(folder)}

    def sweep(
        self,
        seeds: Any,
        config_file: Any = "configs/train.json",
        evaluate_config: Any = "configs/evaluate.json",
        output_dir: str = "sweep",
        override: Any = None,
        force: bool = False,
        quiet: bool = False,
    ) -> None:
        """Train and evaluate once per seed, then summarise: mean ± sample std (ddof=1) over the seeds.

        Each seed runs ``python -m monai.bundle run training`` then ``... run evaluating`` in their own processes (run
        this from the bundle folder, like those commands), into ``<output_dir>/seed<s>/`` (``models``, ``eval``,
        ``runs``, ``cache``, copies of the k-shot list and the training summary, ``train.log``, ``evaluate.log``,
        ``sweep_seed.json``). A failed seed does not stop the others; the command then exits with status 1. A seed
        already complete with the same settings is skipped. Writes ``summary.json``, ``summary.csv``, ``summary.md``
        and ``summary.png`` into ``output_dir`` and prints the Markdown table.

        Args:
            seeds: the seeds, e.g. ``0,1,2,3,4``.
            config_file: the training config; several (``configs/train.json,configs/paper.json``) are merged in order.
            evaluate_config: the evaluation config(s), merged after ``config_file`` for the evaluation.
            output_dir: the sweep's folder.
            override: a bundle override ``key=value`` for both steps, as on the ``python -m monai.bundle run``
                command line (``max_epochs=10``, ``slices=[0,5,10]``, ``dataset_dir=/data/brain``,
                ``train#dataloader#batch_size=4``); repeat ``--override`` for several. ``seed``, ``ckpt_dir``,
                ``output_dir``, ``eval_dir`` and ``work_dir`` are set by the sweep for each seed.
            force: redo seeds that are already complete.
            quiet: do not show the bundle's output (it still goes to each seed's log files).
        """
        from .sweep import SweepFailed, run_sweep

        result = run_sweep(
            seeds,
            config_file=config_file,
            evaluate_config=evaluate_config,
            output_dir=output_dir,
            overrides=override,
            force=bool(force),
            echo=not quiet,
        )
        print(result.markdown, end="", flush=True)
        if result.failed:
            reasons = "; ".join(f"seed {o.seed}: {o.error}" for o in result.failed)
            complete = len(result.seeds) - len(result.failed)
            rest = (
                f"The {complete} complete seed(s) are summarised in {result.files['json']}."
                if complete
                else "No seed is complete."
            )
            raise SweepFailed(f"{len(result.failed)} of {len(result.seeds)} seed(s) failed: {reasons}. {rest}", result)


def _gather_overrides(argv: list[str]) -> list[str]:
    """``fire`` keeps only the last of a repeated flag: give ``sweep`` every ``--override`` (as one list)."""
    if not argv or argv[0] != "sweep":
        return argv
    end = argv.index("--") if "--" in argv else len(argv)  # after "--" come fire's own flags
    values, rest, index = [], [], 0
    while index < end:
        arg = argv[index]
        if arg == "--override" and index + 1 < end:
            values.append(argv[index + 1])
            index += 2
            continue
        if arg.startswith("--override="):
            values.append(arg[len("--override=") :])
        else:
            rest.append(arg)
        index += 1
    if len(values) > 1:
        rest += ["--override", json.dumps(values)]
    elif values:
        rest += ["--override", values[0]]
    return rest + argv[end:]


_TYPE_CHECKS: dict[str, Callable[[str], Any]] = {"int": int, "float": float}


def _check_options(argv: list[str]) -> None:
    """Refuse an unknown command, an unknown option or a value of the wrong type before any work is done.

    ``fire`` reads the options only after the command has run, so a mistyped option would otherwise fail after the
    work (an SR already stored in the PACS) or be ignored; the closest valid name is suggested.
    """
    import difflib
    import inspect

    end = argv.index("--") if "--" in argv else len(argv)  # after "--" come fire's own flags
    if not argv[:end] or argv[0].startswith("-"):
        return  # no command: fire prints the help
    commands = [n for n, f in inspect.getmembers(SdmadCommands, inspect.isfunction) if not n.startswith("_")]
    command = argv[0].replace("-", "_")
    if command not in commands:
        close = difflib.get_close_matches(command, commands, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown command {argv[0]!r}; {hint}commands: {', '.join(sorted(commands))}.")
    parameters = inspect.signature(getattr(SdmadCommands, command)).parameters
    names = [n for n in parameters if n != "self"]
    index = 1
    while index < end:
        arg = argv[index]
        index += 1
        if not arg.startswith("--") or arg in ("--help", "--helpfull"):
            continue
        name, has_value, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean --{close[0]}? " if close else ""
            raise ValueError(
                f"{argv[0]}: unknown option --{name}; {hint}options: {', '.join('--' + n for n in names)}."
            )
        annotation = parameters[name].annotation
        if annotation in ("bool", bool):
            continue  # a flag: "--force" alone, or "--force=false"
        if not has_value:
            if index >= end or argv[index].startswith("--"):
                raise ValueError(f"{argv[0]}: option --{name} needs a value.")
            value = argv[index]
            index += 1
        check = _TYPE_CHECKS.get(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))
        if check is not None:
            try:
                check(value)
            except ValueError:
                raise ValueError(f"{argv[0]}: --{name} {value!r} is not a valid {annotation} value.") from None


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, a service manager stopping the command) into ``SystemExit(143)``, so that temporary
    folders (a retrieved study) and partial files are removed on the way out, as for Ctrl-C."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sdmad`` and ``python -m sdmad_monai``."""
    import fire

    exit_on_sigterm()

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("dicomweb_client", "highdicom"):  # per-request / per-module lines; warnings still show
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        command = _gather_overrides(list(argv) if argv is not None else sys.argv[1:])
        _check_options(command)
        fire.Fire(SdmadCommands(), command=command, name="sdmad")
    except Exception as error:
        if not is_user_error(error):  # a bug: its whole traceback, redacted (it may quote a URL or a header)
            sys.stderr.write(format_traceback(type(error), error, error.__traceback__))
            sys.exit(1)
        print(f"sdmad: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
