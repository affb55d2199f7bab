"""SD-MAD study findings as a DICOM Comprehensive SR (highdicom), plus a JSON copy.

Document layout (DICOM PS3.16 TID 1500 "Measurement Report", built with :class:`highdicom.sr.MeasurementReport`)::

    Imaging Measurement Report (DCM 126000)
    ├─ Language, Observation context: device observer (TID 1004) "SD-MAD (sdmad_monai)", UID = device UID below
    ├─ Procedure reported: Imaging procedure (SCT 363679005)
    └─ Imaging Measurements (DCM 126010)
       └─ one Measurement Group (DCM 125007, TID 1501) per category, in the detector's category order
          ├─ Tracking Identifier "SD-MAD: <display name>" + Tracking Unique Identifier (deterministic)
          ├─ Finding (DCM 121071) = the category's finding code and
          ├─ Finding Site (SCT 363698007) = its finding site, both from the finding-codes file
          │  (:mod:`sdmad_monai.deploy.codes`: standard SCT / DCM codes where DICOM PS3.16 has one, else the
          │  declared private 99SDMAD code <category label>)
          ├─ Algorithm Name (DCM 111001) "SD-MAD (sdmad_monai)", Algorithm Version (DCM 111003) = the
          │  ``sdmad_monai_version`` of ``detector.description()``, Algorithm Parameters (DCM 111002): backbone,
          │  weights, prompt bank, sign selection, checkpoint fingerprint, then the slices analysed
          │  (``slices_analysed=axial 0,5,10``) and the intended use (:data:`INTENDED_USE`)
          ├─ Score (SCT 246262008) = study score (Eq. 7, highest slice score), unit UCUM "1" (no units),
          │  Derivation (DCM 121401) = Maximum (SCT 56851009)
          ├─ with a calibrated model: Calibrated probability (99SDMAD probability) = highest slice probability in
          │  [0, 1] (:mod:`sdmad_monai.calibration`), Derivation = Maximum; under a probability operating point
          │  also Decision threshold (99SDMAD decision-threshold)
          ├─ Presence of property (DCM 121052) = Present (SCT 52101004) | Absent (SCT 272519000): the study
          │  finding by the category's decision rule (Eq. 8 by default: present when at least one processed slice
          │  is predicted positive; under an operating point, probability >= threshold on a slice)
          └─ Source (IMAGE items): the instances of the processed slices, when known
    Current Requested Procedure Evidence Sequence: every instance of the source series.

``99SDMAD`` is a private coding scheme (DICOM reserves ``99`` prefixes for local schemes), declared in the Coding
Scheme Identification Sequence with every other private scheme the finding codes use: its code values are the
prompt bank's category labels (long labels go to LongCodeValue), its meanings the display names, for the categories
without a standard code; it also names the calibrated probability and the decision threshold.

UIDs are derived deterministically (name-based ``2.25.`` UIDs, :func:`derive_uid`) from the source
StudyInstanceUID and SeriesInstanceUID, the algorithm version and the checkpoint fingerprint, and (all but the SR's
SeriesInstanceUID) the set of source SOPInstanceUIDs, the operating point and the category codes: running the
same model on the same series again gives the same SR (a PACS then replaces the earlier copy instead of storing a
duplicate); another model or checkpoint, or the same series once more instances have arrived, gives another SR (in
the same SR series for the same model).

Size: one document type: the TID 1500 writer, its deterministic UIDs and the reader that parses the same
structure back, kept together so that writer and reader cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import missing_extra

try:
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
except ImportError as _error:  # an optional dependency: the `pacs` extra
    raise missing_extra("highdicom", "pacs", "Writing a DICOM SR") from _error
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..anomaly_volume import format_slice_ranges
from ..utils import atomic_path, atomic_write_json
from .codes import PRIVATE_SCHEME, CodedTerm, FindingCodes, load_finding_codes

if TYPE_CHECKING:  # pragma: no cover
    from ..inference import Finding, VolumeResult
    from ..networks.detector import SignDrivenDetector

__all__ = [
    "ALGORITHM_NAME",
    "CODING_SCHEME",
    "INTENDED_USE",
    "SR_CODES",
    "AlgorithmInfo",
    "SRIdentifiers",
    "build_sr",
    "check_source",
    "derive_uid",
    "detector_fingerprint",
    "findings_document",
    "read_sr_findings",
    "instances_digest",
    "save_sr",
    "sr_evidence",
    "sr_identifiers",
    "write_sr_report",
]

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "SD-MAD (sdmad_monai)"
#: Private coding scheme of the categories without a standard code and of the probability / threshold codes.
CODING_SCHEME = PRIVATE_SCHEME
#: What a reader of the SR must know before acting on it (an Algorithm Parameter of every finding).
INTENDED_USE = "intended_use=research only, not for diagnostic use"
#: Default SeriesNumber of the SR series.
DEFAULT_SERIES_NUMBER = 9901

#: The codes used in the document (see the module docstring).
SR_CODES: dict[str, Code] = {
    "score": Code("246262008", "SCT", "Score"),
    "unitless": Code("1", "UCUM", "no units"),
    "maximum": Code("56851009", "SCT", "Maximum"),
    "presence": Code("121052", "DCM", "Presence of property"),
    "present": Code("52101004", "SCT", "Present"),
    "absent": Code("272519000", "SCT", "Absent"),
    "finding": Code("121071", "DCM", "Finding"),
    "finding_site": Code("363698007", "SCT", "Finding Site"),
    "procedure": Code("363679005", "SCT", "Imaging procedure"),
    "title": Code("126000", "DCM", "Imaging Measurement Report"),
    # no standard code for an algorithm's calibrated probability or its decision threshold: declared local codes
    "probability": Code("probability", CODING_SCHEME, "Calibrated probability"),
    "threshold": Code("decision-threshold", CODING_SCHEME, "Decision threshold"),
}


# ---------------------------------------------------------------------------------------------- model identity
def detector_fingerprint(detector: SignDrivenDetector) -> str:
    """SHA-256 of the detector's checkpoint content (adapter weights + description: backbone spec, prompt bank,
    version), i.e. of what :meth:`SignDrivenDetector.save` writes; equal for a detector and its reloaded checkpoint.
    """
    digest = hashlib.sha256()
    state = detector.state_dict()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode("utf-8"))
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
            digest.update((tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the model that produced the findings (TID 4019 in the SR).

    Attributes:
        version: algorithm version (the ``sdmad_monai_version`` recorded in the checkpoint).
        fingerprint: checkpoint fingerprint (:func:`detector_fingerprint`).
        parameters: ``key=value`` texts (backbone, weights, prompt bank, sign selection, checkpoint, operating
            point).
        name: algorithm name.
        backbone: backbone architecture name (the device observer's model name).
        operating_point: how the findings were decided: ``eq8`` or ``target_sensitivity=<t>``; another operating
            point on the same series gives another SR instance (in the same SR series).
        sign_selection: whether Eq. 6 was applied; ``False`` (the "no SS" ablation) gives another SR instance too.
    """

    version: str
    fingerprint: str
    parameters: tuple[str, ...] = ()
    name: str = ALGORITHM_NAME
    backbone: str = ""
    operating_point: str = "eq8"
    sign_selection: bool = True

    @classmethod
    def from_detector(cls, detector: SignDrivenDetector) -> AlgorithmInfo:
        """Version and parameters from ``detector.description()``, fingerprint from :func:`detector_fingerprint`."""
        description = detector.description()
        config = description["config"]
        bank = description["prompt_bank"]
        fingerprint = detector_fingerprint(detector)
        target = detector.operating_point.target_sensitivity
        operating_point = "eq8" if target is None else f"target_sensitivity={target:g}"
        return cls(
            version=str(description["sdmad_monai_version"]),
            fingerprint=fingerprint,
            parameters=(
                f"backbone={config['model_name']}",
                f"weights={config.get('pretrained') or 'random-init'}",
                (
                    f"prompt_bank={bank.get('name')} {bank.get('version')} "
                    f"(sha256:{description['prompt_bank_fingerprint'][:16]})"
                ),
                f"sign_selection={detector.sign_selection}",
                f"checkpoint=sha256:{fingerprint}",
                f"operating_point={operating_point}",
            ),
            backbone=str(config["model_name"]),
            operating_point=operating_point,
            sign_selection=detector.sign_selection,
        )


# ------------------------------------------------------------------------------------------------------ UIDs
#: Namespace of the name-based UUIDs behind :func:`derive_uid`.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/sdmad_monai/dicom-sr")


def derive_uid(*parts: Any) -> str:
    """A ``2.25.`` UID (DICOM PS3.5 B.2, UUID-derived) that depends only on ``parts`` (their ``str``): the UUID is a
    name-based (version 5) UUID of the parts. (``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores
    ``entropy_srcs`` and returns a random UID, so it cannot be used here.)"""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


@dataclass(frozen=True)
class SRIdentifiers:
    """The UIDs of one SR document (all deterministic)."""

    series_instance_uid: str
    sop_instance_uid: str
    device_observer_uid: str
    tracking_uids: dict[str, str]


def instances_digest(instance_uids: Sequence[str]) -> str:
    """SHA-256 of a set of SOPInstanceUIDs (order and repeats do not matter)."""
    return hashlib.sha256("\n".join(sorted({str(u) for u in instance_uids})).encode("ascii")).hexdigest()


def sr_identifiers(
    study_instance_uid: str,
    series_instance_uid: str,
    algorithm: AlgorithmInfo,
    category_labels: Sequence[str],
    instance_uids: Sequence[str],
    finding_codes: FindingCodes | str | Path | None = None,
) -> SRIdentifiers:
    """UIDs of the SR for source series ``series_instance_uid`` of study ``study_instance_uid``, made from the
    instances ``instance_uids`` of that series, coding the categories with ``finding_codes`` (``None``: the shipped
    codes).

    Same study, series, instances, algorithm version, checkpoint fingerprint, operating point and category codes ->
    same UIDs. The SR's
    SeriesInstanceUID does not depend on the instances: every SR of one source series by one model is in one SR
    series, so an SR made once the series is complete sits beside (and supersedes) one made from part of it.
    """
    model = (study_instance_uid, series_instance_uid, algorithm.version, algorithm.fingerprint)
    codes_digest = _finding_codes(finding_codes).digest(category_labels)
    key: tuple[str, ...] = (*model, instances_digest(instance_uids), codes_digest)
    if algorithm.operating_point != "eq8":  # other decisions, other document (Eq. 8 SRs keep their UIDs)
        key = (*key, algorithm.operating_point)
    if not algorithm.sign_selection:  # the "no SS" ablation decides otherwise: another document too
        key = (*key, "no-sign-selection")
    return SRIdentifiers(
        series_instance_uid=derive_uid("sr-series", *model),
        sop_instance_uid=derive_uid("sr-instance", *key),
        device_observer_uid=derive_uid("device", algorithm.name, algorithm.version, algorithm.fingerprint),
        tracking_uids={label: derive_uid("tracking", *key, label) for label in category_labels},
    )


def _concept(term: CodedTerm) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=term.value, scheme_designator=term.scheme, meaning=term.meaning)


def _finding_codes(finding_codes: FindingCodes | str | Path | None) -> FindingCodes:
    return finding_codes if isinstance(finding_codes, FindingCodes) else load_finding_codes(finding_codes)


# --------------------------------------------------------------------------------------------------- building
_TYPE2_PATIENT_STUDY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def check_source(source_datasets: Sequence[Dataset]) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of the source instances, which must belong to one series of one study.

    Raises:
        ValueError: no instance, or instances of several series or studies.
    """
    if not source_datasets:
        raise ValueError("No source instance given: the SR must reference the series it reports on.")
    studies = {str(ds.StudyInstanceUID) for ds in source_datasets}
    series = {str(ds.SeriesInstanceUID) for ds in source_datasets}
    if len(studies) != 1 or len(series) != 1:
        raise ValueError(
            f"The source instances must belong to one series of one study; got studies {sorted(studies)} and "
            f"series {sorted(series)}."
        )
    return studies.pop(), series.pop()


def sr_evidence(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """Evidence for highdicom: the first header completed with empty Type 2 patient/study attributes (highdicom
    reads them unconditionally), the others as they are."""
    first = Dataset()
    first.update(source_datasets[0])
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in first:
            setattr(first, keyword, None)
    return [first] + list(source_datasets[1:])


def _measurements(finding: Finding) -> list[hd.sr.Measurement]:
    """Score (Eq. 7), and when the model is calibrated the probability and, under a probability operating point,
    the threshold the finding was decided with."""
    measurements = [
        hd.sr.Measurement(
            name=SR_CODES["score"], value=float(finding.score), unit=SR_CODES["unitless"],
            derivation=SR_CODES["maximum"],
        )
    ]  # fmt: skip
    if finding.probability is not None:
        measurements.append(hd.sr.Measurement(
            name=SR_CODES["probability"], value=float(finding.probability), unit=SR_CODES["unitless"],
            derivation=SR_CODES["maximum"],
        ))  # fmt: skip
    rule = finding.decision or {}
    if rule.get("rule") == "probability":
        measurements.append(hd.sr.Measurement(
            name=SR_CODES["threshold"], value=float(rule["threshold"]), unit=SR_CODES["unitless"]
        ))  # fmt: skip
    return measurements


def build_sr(
    result: VolumeResult,
    source_datasets: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    source_images: Sequence[Dataset] | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    institution_name: str | None = None,
    finding_codes: FindingCodes | str | Path | None = None,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one series' study-level findings (layout and codes in the module docstring).

    Args:
        result: :func:`~sdmad_monai.inference.infer_volume`'s result for the series.
        source_datasets: headers of every instance of the series (become the evidence).
        algorithm: the model's identification (:meth:`AlgorithmInfo.from_detector`).
        source_images: headers of the instances the processed slices came from (referenced in each group as its
            source); ``None`` when the slices do not map to instances (slicing across the acquisition planes).
        series_number: SeriesNumber of the SR.
        institution_name: optional InstitutionName.
        finding_codes: the categories' codes (:func:`~sdmad_monai.deploy.codes.load_finding_codes`), a
            finding-codes file, or ``None`` for the shipped file.
    """
    study_uid, series_uid = check_source(source_datasets)
    finding_codes = _finding_codes(finding_codes)
    coded = finding_codes.resolve([f.label for f in result.findings], [f.display_name for f in result.findings])
    ids = sr_identifiers(
        study_uid,
        series_uid,
        algorithm,
        [f.label for f in result.findings],
        [str(ds.SOPInstanceUID) for ds in source_datasets],
        finding_codes,
    )
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[
            *algorithm.parameters,
            f"slices_analysed={result.axis} {format_slice_ranges(result.slice_indices)}",
            INTENDED_USE,
        ],
    )
    groups = []
    for finding, codes_of in zip(result.findings, coded):
        references = [
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=ds.SOPClassUID, referenced_sop_instance_uid=ds.SOPInstanceUID
            )
            for ds in (source_images or [])
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=ids.tracking_uids[finding["label"]], identifier=f"SD-MAD: {finding['display_name']}"
                ),
                finding_type=_concept(codes_of.finding),
                finding_sites=[hd.sr.FindingSite(anatomic_location=_concept(codes_of.finding_site))],
                algorithm_id=algorithm_id,
                measurements=_measurements(finding),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=SR_CODES["presence"],
                        value=SR_CODES["present"] if finding["finding"] else SR_CODES["absent"],
                    )
                ],
                source_images=references or None,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=ids.device_observer_uid,
            name=algorithm.name,
            manufacturer_name="sdmad_monai",
            model_name=algorithm.backbone or None,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=SR_CODES["procedure"],
        imaging_measurements=groups,
        title=SR_CODES["title"],
    )
    return hd.sr.ComprehensiveSR(
        evidence=sr_evidence(source_datasets),
        content=report[0],
        series_instance_uid=ids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=ids.sop_instance_uid,
        instance_number=1,
        manufacturer="sdmad_monai",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=algorithm.version,
        series_description="SD-MAD anomaly findings (research use only)",
        institution_name=institution_name,
        coding_schemes=[
            CodingSchemeIdentificationItem(designator=designator, name=name, responsible_organization="sdmad_monai")
            for designator, name in finding_codes.declared_schemes(coded).items()
        ],
        is_complete=True,
        is_final=False,
        is_verified=False,
    )


def findings_document(
    result: VolumeResult,
    sr: Dataset,
    algorithm: AlgorithmInfo,
    source_datasets: Sequence[Dataset],
    finding_codes: FindingCodes | str | Path | None = None,
) -> dict[str, Any]:
    """The JSON copy of an SR: identifiers, model, the codes used (per category: finding and finding site),
    per-category findings and per-slice results."""
    first = source_datasets[0]
    finding_codes = _finding_codes(finding_codes)
    categories = [finding_codes.for_category(f.label, f.display_name) for f in result.findings]
    return {
        "study_instance_uid": str(first.StudyInstanceUID),
        "series_instance_uid": str(first.SeriesInstanceUID),
        "series_description": str(getattr(first, "SeriesDescription", "") or ""),
        "patient_id": str(getattr(first, "PatientID", "") or ""),
        "sr": {
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "series_instance_uid": str(sr.SeriesInstanceUID),
            "sop_class_uid": str(sr.SOPClassUID),
        },
        "algorithm": asdict(algorithm) | {"parameters": list(algorithm.parameters)},
        "codes": {
            name: {"value": c.value, "scheme": c.scheme_designator, "meaning": c.meaning}
            for name, c in SR_CODES.items()
        },
        "finding_codes": {"source": finding_codes.source} | {c.label: c.to_dict() for c in categories},
        **result.to_dict(),
    }


def write_sr_report(
    result: VolumeResult,
    source_datasets: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    output_dir: str | Path,
    source_images: Sequence[Dataset] | None = None,
    source_name: str | None = None,
    **kwargs: Any,
) -> list[Path]:
    """Build the SR (:func:`build_sr`) and write it with its JSON copy, atomically.

    Files: ``<output_dir>/sdmad_sr_<source SeriesInstanceUID>.dcm`` and ``.json`` (a re-run overwrites them).

    Args:
        source_name: what to record as the JSON's ``source`` (e.g. the input folder) instead of ``result.source``.
        kwargs: passed to :func:`build_sr` (``finding_codes`` also to :func:`findings_document`).

    Returns:
        ``[sr_path, json_path]``.
    """
    kwargs["finding_codes"] = _finding_codes(kwargs.get("finding_codes"))
    sr = build_sr(result, source_datasets, algorithm, source_images=source_images, **kwargs)
    document = findings_document(result, sr, algorithm, source_datasets, kwargs["finding_codes"])
    if source_name is not None:
        document["source"] = source_name
    return save_sr(sr, document, output_dir)


def save_sr(sr: Dataset, document: dict[str, Any], output_dir: str | Path) -> list[Path]:
    """Write an SR and its JSON copy (:func:`findings_document`), atomically:
    ``<output_dir>/sdmad_sr_<source SeriesInstanceUID>.dcm`` and ``.json`` (a re-run overwrites them).

    Args:
        sr: the SR (:func:`build_sr`).
        document: its JSON copy; ``document["sr"]["file"]`` is set to the SR's file name.
        output_dir: the folder.

    Returns:
        ``[sr_path, json_path]``.
    """
    stem = f"sdmad_sr_{document['series_instance_uid']}"
    output_dir = Path(output_dir)
    sr_path = output_dir / f"{stem}.dcm"
    with atomic_path(sr_path) as temporary:
        sr.save_as(temporary, enforce_file_format=True)
    document["sr"]["file"] = sr_path.name
    json_path = atomic_write_json(output_dir / f"{stem}.json", document)
    return [sr_path, json_path]


# ---------------------------------------------------------------------------------------------------- reading
def _code(item: Dataset, attribute: str) -> tuple[str, str]:
    code = getattr(item, attribute)[0]
    value = getattr(code, "CodeValue", None) or getattr(code, "LongCodeValue", None) or code.URNCodeValue
    return str(value), str(code.CodingSchemeDesignator)


def _items(container: Dataset) -> list[Dataset]:
    return list(getattr(container, "ContentSequence", []))


def read_sr_findings(
    sr: str | Path | Dataset, finding_codes: FindingCodes | str | Path | None = None
) -> dict[str, Any]:
    """Read back an SR written by :func:`write_sr_report` by walking its content tree with pydicom.

    Args:
        sr: the SR file or dataset.
        finding_codes: the finding codes it was written with (``None``: the shipped file), to turn each group's
            finding and finding site back into its category label; a group whose codes match no category keeps
            the finding's code value as its label.

    Returns:
        ``{"algorithm": {"name", "version", "parameters"}, "findings": [{"label", "display_name", "score",
        "finding"}, and "probability" / "threshold" when the SR has them], "evidence": {series UID: [SOP instance
        UIDs]}, "study_instance_uid", "sop_instance_uid"}``.
    """
    ds = sr if isinstance(sr, Dataset) else pydicom.dcmread(sr)
    finding_codes = _finding_codes(finding_codes)
    score_code = (SR_CODES["score"].value, SR_CODES["score"].scheme_designator)
    presence_code = (SR_CODES["presence"].value, SR_CODES["presence"].scheme_designator)
    findings: list[dict[str, Any]] = []
    algorithm: dict[str, Any] = {"name": None, "version": None, "parameters": []}
    for top in _items(ds):
        if _code(top, "ConceptNameCodeSequence") != ("126010", "DCM"):  # Imaging Measurements
            continue
        for group in _items(top):
            entry: dict[str, Any] = {}
            finding, site = None, None
            for item in _items(group):
                name = _code(item, "ConceptNameCodeSequence")
                if name == ("121071", "DCM"):
                    finding = _code(item, "ConceptCodeSequence")
                    entry["finding_code"] = {"value": finding[0], "scheme": finding[1],
                                             "meaning": str(item.ConceptCodeSequence[0].CodeMeaning)}  # fmt: skip
                elif name == (SR_CODES["finding_site"].value, SR_CODES["finding_site"].scheme_designator):
                    site = _code(item, "ConceptCodeSequence")
                elif name == ("112039", "DCM"):  # Tracking Identifier "SD-MAD: <display name>"
                    entry["display_name"] = str(item.TextValue).removeprefix("SD-MAD: ")
                elif name == score_code:
                    entry["score"] = float(item.MeasuredValueSequence[0].NumericValue)
                elif name == (SR_CODES["probability"].value, CODING_SCHEME):
                    entry["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
                elif name == (SR_CODES["threshold"].value, CODING_SCHEME):
                    entry["threshold"] = float(item.MeasuredValueSequence[0].NumericValue)
                elif name == presence_code:
                    entry["finding"] = int(_code(item, "ConceptCodeSequence") == ("52101004", "SCT"))
                elif name == ("111001", "DCM"):
                    algorithm["name"] = str(item.TextValue)
                elif name == ("111003", "DCM"):
                    algorithm["version"] = str(item.TextValue)
                elif name == ("111002", "DCM") and not findings:
                    algorithm["parameters"].append(str(item.TextValue))
            if finding is not None:
                entry["label"] = finding_codes.label_of(finding, site) or finding[0]
            findings.append(entry)
    evidence: dict[str, list[str]] = {}
    for study in getattr(ds, "CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            evidence.setdefault(str(series.SeriesInstanceUID), []).extend(
                str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence
            )
    return {
        "study_instance_uid": str(ds.StudyInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "algorithm": algorithm,
        "findings": findings,
        "evidence": evidence,
    }
