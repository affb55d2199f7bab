"""Clinical deployment without the MONAI Deploy SDK: series selection rules, DICOM SR building (highdicom) and the
folder-to-SR operator logic.

- :mod:`.rules`: which series of a study are processed (an editable JSON file).
- :mod:`.codes`: how the SR codes each category (standard SCT / DCM codes in an editable JSON file, checked on load).
- :mod:`.sr`: the SD-MAD findings as a DICOM Comprehensive SR (TID 1500) with deterministic UIDs, and a JSON copy.
- :mod:`.pipeline`: the one in-memory series pipeline every source below shares: selection and its messages, the
  detector, a series job (sorted instances, geometry, the volume), ``run_series``, the failure-collecting loop, the
  sinks (SR + JSON files, Parametric Map).
- :mod:`.process`: :func:`process_dicom_folder`, DICOM folder in, SR + JSON per selected series out.
- :mod:`.demo`: a volume written as a synthetic DICOM series (demos, tests).
- :mod:`.dicomweb`: :func:`process_study`, one study of a PACS over DICOMweb in, the SRs stored back (no duplicates).
- :mod:`.app_logic`: what the operators of the MONAI Deploy application (``bundle/deploy_app``) do, SDK-free.
- :mod:`.map_dicom`: a series' 3D anomaly map as a DICOM Parametric Map (highdicom) on the series' geometry.

The names below are imported on first use, so that ``sdmad`` answers bad input without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pipeline": [
        "select_series_to_process",
        "NoMatchingSeriesError",
        "resolve_detector",
        "SeriesJob",
        "job_from_datasets",
        "SeriesOptions",
        "run_series",
        "SeriesFindings",
        "PendingSeries",
        "run_jobs",
        "InferenceOutcome",
        "SeriesProcessingError",
        "write_sr_files",
        "write_inference_outcome",
        "write_outcome_anomaly_maps",
        "write_map_file",
        "describe_series",
        "parse_slices",
        "DEFAULT_SLICES",
        "LPS_TO_RAS",
    ],
    "process": ["folder_series_job", "process_dicom_folder", "read_dicom_headers"],
    "rules": [
        "DEFAULT_RULES_PATH",
        "SeriesRules",
        "SeriesRulesError",
        "load_series_rules",
        "explain_series",
        "select_series",
        "series_orientation",
    ],
    "codes": ["DEFAULT_CODES_PATH", "FindingCodes", "FindingCodesError", "load_finding_codes"],
    "sr": [
        "ALGORITHM_NAME",
        "SR_CODES",
        "AlgorithmInfo",
        "build_sr",
        "detector_fingerprint",
        "read_sr_findings",
        "sr_identifiers",
        "write_sr_report",
    ],
    "demo": ["write_dicom_series"],
    "app_logic": ["DeployAppOptions", "image_to_metatensor", "infer_series_volumes"],
    "map_dicom": ["anomaly_map_identifiers", "build_anomaly_map", "write_anomaly_map"],
    "dicomweb": [
        "process_study",
        "DicomWebConnection",
        "StoredReport",
        "DicomWebError",
        "PacsUnreachableError",
        "StudyNotFoundError",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ALGORITHM_NAME",
    "DEFAULT_CODES_PATH",
    "DEFAULT_RULES_PATH",
    "DEFAULT_SLICES",
    "LPS_TO_RAS",
    "SR_CODES",
    "AlgorithmInfo",
    "DeployAppOptions",
    "DicomWebConnection",
    "DicomWebError",
    "FindingCodes",
    "FindingCodesError",
    "InferenceOutcome",
    "NoMatchingSeriesError",
    "PacsUnreachableError",
    "PendingSeries",
    "SeriesFindings",
    "SeriesJob",
    "SeriesOptions",
    "SeriesProcessingError",
    "SeriesRules",
    "SeriesRulesError",
    "StoredReport",
    "StudyNotFoundError",
    "anomaly_map_identifiers",
    "build_anomaly_map",
    "build_sr",
    "describe_series",
    "detector_fingerprint",
    "explain_series",
    "folder_series_job",
    "image_to_metatensor",
    "infer_series_volumes",
    "job_from_datasets",
    "load_finding_codes",
    "load_series_rules",
    "parse_slices",
    "process_dicom_folder",
    "process_study",
    "read_dicom_headers",
    "read_sr_findings",
    "resolve_detector",
    "run_jobs",
    "run_series",
    "select_series",
    "select_series_to_process",
    "series_orientation",
    "sr_identifiers",
    "write_anomaly_map",
    "write_dicom_series",
    "write_inference_outcome",
    "write_map_file",
    "write_outcome_anomaly_maps",
    "write_sr_files",
    "write_sr_report",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
