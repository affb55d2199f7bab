"""Which DICOM series of a study SD-MAD runs on: selection rules kept in a JSON file a site can edit.

The shipped rules (:data:`DEFAULT_RULES_PATH`, ``series_rules.json`` beside this module) select axial brain MR::

    {
      "description": "free text, ignored",
      "modalities": ["MR"],                                   # DICOM Modality must be one of these
      "body_part_fields": ["BodyPartExamined", "StudyDescription"],
      "body_part_keywords": ["brain", "head"],                # case-insensitive substrings
      "require_body_part": false,                             # true: reject a series where no field is present
      "orientations": ["axial"],                              # "axial", "coronal", "sagittal"; [] accepts any
      "min_instances": 1                                      # fewer files than this: rejected
    }

Body part: among the ``body_part_fields`` that are present and non-empty, at least one must contain one of the
keywords; a series where none of them is present is accepted (many scanners leave them empty) unless
``require_body_part`` is true. Orientation: the slice normal (cross product of the two ImageOrientationPatient
direction cosines) is assigned to the patient axis it is closest to - S: axial, A/P: coronal, L/R: sagittal; every
instance of the series must give the same orientation.

Every rejected series gets a one-line reason (logged at INFO by :func:`select_series`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "DEFAULT_RULES_PATH",
    "SeriesRules",
    "SeriesRulesError",
    "explain_series",
    "load_series_rules",
    "select_series",
    "series_orientation",
]

logger = logging.getLogger(__name__)

#: The shipped rules file (axial brain MR).
DEFAULT_RULES_PATH = Path(__file__).with_name("series_rules.json")

#: Index of the patient axis (DICOM LPS: 0 = L/R, 1 = A/P, 2 = S/I) the slice normal is closest to -> orientation.
_ORIENTATION_BY_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}


class SeriesRulesError(ValueError):
    """A series-rules file that cannot be used (bad JSON, unknown key, wrong type); the message names the file."""


@dataclass(frozen=True)
class SeriesRules:
    """Series selection rules (see the module docstring for the meaning of each field)."""

    modalities: tuple[str, ...] = ("MR",)
    body_part_fields: tuple[str, ...] = ("BodyPartExamined", "StudyDescription")
    body_part_keywords: tuple[str, ...] = ("brain", "head")
    require_body_part: bool = False
    orientations: tuple[str, ...] = ("axial",)
    min_instances: int = 1
    description: str = field(default="", compare=False)
    source: str = field(default="<built-in>", compare=False)

    # ------------------------------------------------------------------ checks, one reason each
    def _modality_reason(self, datasets: Sequence[Dataset]) -> str | None:
        found = sorted({str(getattr(ds, "Modality", "") or "") for ds in datasets})
        if self.modalities and not set(found) <= set(self.modalities):
            shown = ", ".join(m or "<missing>" for m in found)
            return f"modality {shown} is not one of {list(self.modalities)}"
        return None

    def _body_part_reason(self, datasets: Sequence[Dataset]) -> str | None:
        if not self.body_part_fields:
            return None
        ds = datasets[0]
        present = {name: str(getattr(ds, name, "") or "").strip() for name in self.body_part_fields}
        present = {name: value for name, value in present.items() if value}
        if not present:
            if self.require_body_part:
                return f"none of {list(self.body_part_fields)} is present and the rules require a body part"
            return None
        keywords = [k.lower() for k in self.body_part_keywords]
        if any(k in value.lower() for value in present.values() for k in keywords):
            return None
        shown = ", ".join(f"{name}={value!r}" for name, value in present.items())
        return f"body part ({shown}) contains none of {list(self.body_part_keywords)}"

    def _orientation_reason(self, datasets: Sequence[Dataset]) -> str | None:
        if not self.orientations:
            return None
        found = set()
        for ds in datasets:
            orientation = series_orientation(ds)
            if orientation is None:
                return "ImageOrientationPatient is missing or invalid, so the slice orientation is unknown"
            found.add(orientation)
        if len(found) > 1:
            return f"the instances have mixed orientations {sorted(found)} (a localizer?)"
        orientation = found.pop()
        if orientation not in self.orientations:
            return f"orientation is {orientation}, expected {' or '.join(self.orientations)}"
        return None

    def rejection_reason(self, datasets: Sequence[Dataset]) -> str | None:
        """Why the series made of ``datasets`` (headers of its instances) is rejected, or ``None`` if it matches."""
        if len(datasets) == 0:
            return "the series has no instance"
        if len(datasets) < self.min_instances:
            return f"{len(datasets)} instance(s), the rules need at least {self.min_instances}"
        for check in (self._modality_reason, self._body_part_reason, self._orientation_reason):
            reason = check(datasets)
            if reason is not None:
                return reason
        return None


_FIELD_TYPES: dict[str, type] = {
    "modalities": list,
    "body_part_fields": list,
    "body_part_keywords": list,
    "require_body_part": bool,
    "orientations": list,
    "min_instances": int,
    "description": str,
}


def load_series_rules(path: str | Path | None = None) -> SeriesRules:
    """Read and validate a rules file (``None``: the shipped :data:`DEFAULT_RULES_PATH`).

    Keys left out keep their defaults (:class:`SeriesRules`).

    Raises:
        SeriesRulesError: the file is missing, not JSON, not an object, has an unknown key or a value of the wrong
            type; the message names the file.
    """
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    if not path.is_file():
        raise SeriesRulesError(f"Series rules file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SeriesRulesError(f"Series rules file {path} is not valid JSON: {error}.") from error
    if not isinstance(data, dict):
        raise SeriesRulesError(f"Series rules file {path} must hold a JSON object, got {type(data).__name__}.")
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise SeriesRulesError(
            f"Series rules file {path} has unknown key(s) {unknown}; allowed keys: {sorted(_FIELD_TYPES)}."
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        expected = _FIELD_TYPES[key]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if ok and expected is list:
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            kind = "a list of strings" if expected is list else f"a JSON {expected.__name__}"
            raise SeriesRulesError(f"Series rules file {path}: {key!r} must be {kind}, got {value!r}.")
        values[key] = tuple(value) if expected is list else value
    bad = sorted(set(values.get("orientations", ())) - set(_ORIENTATION_BY_AXIS.values()))
    if bad:
        raise SeriesRulesError(
            f"Series rules file {path}: unknown orientation(s) {bad}; use 'axial', 'coronal' or 'sagittal'."
        )
    if values.get("min_instances", 1) < 1:
        raise SeriesRulesError(f"Series rules file {path}: 'min_instances' must be at least 1.")
    return SeriesRules(**values, source=str(path))


def series_orientation(ds: Dataset) -> str | None:
    """``"axial"``, ``"coronal"`` or ``"sagittal"`` from ImageOrientationPatient (the patient axis closest to the
    slice normal), ``None`` when the attribute is missing or degenerate."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        return None
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 1e-6:
        return None
    return _ORIENTATION_BY_AXIS[int(np.argmax(np.abs(normal)))]


def _as_rules(rules: SeriesRules | str | Path | None) -> SeriesRules:
    return rules if isinstance(rules, SeriesRules) else load_series_rules(rules)


def explain_series(
    datasets_by_series: Mapping[str, Sequence[Dataset]], rules: SeriesRules | str | Path | None = None
) -> dict[str, str | None]:
    """Per SeriesInstanceUID: why it is rejected, or ``None`` when it matches the rules."""
    rules = _as_rules(rules)
    return {uid: rules.rejection_reason(list(datasets)) for uid, datasets in datasets_by_series.items()}


def select_series(
    datasets_by_series: Mapping[str, Sequence[Dataset]], rules: SeriesRules | str | Path | None = None
) -> list[str]:
    """The SeriesInstanceUIDs that match ``rules``, in input order; each rejected series is logged with its reason.

    Args:
        datasets_by_series: SeriesInstanceUID -> headers of the series' instances (``stop_before_pixels`` reads).
        rules: :class:`SeriesRules`, a rules file, or ``None`` for the shipped rules.
    """
    rules = _as_rules(rules)
    selected = []
    for uid, reason in explain_series(datasets_by_series, rules).items():
        if reason is None:
            selected.append(uid)
        else:
            datasets = datasets_by_series[uid]
            description = str(getattr(datasets[0], "SeriesDescription", "") or "") if datasets else ""
            label = f"{uid} ({description})" if description else uid
            logger.info("Series %s skipped: %s (rules: %s).", label, reason, rules.source)
    return selected
