"""Series selection rules (sdmad_monai.deploy.rules): orientation from ImageOrientationPatient, modality and body
part checks with their reasons, the shipped file, and errors for bad rules files."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pydicom.dataset import Dataset

from sdmad_monai.deploy.rules import (
    DEFAULT_RULES_PATH,
    SeriesRules,
    SeriesRulesError,
    explain_series,
    load_series_rules,
    select_series,
    series_orientation,
)

IOP = {
    "axial": [1, 0, 0, 0, 1, 0],
    "coronal": [1, 0, 0, 0, 0, -1],
    "sagittal": [0, 1, 0, 0, 0, -1],
}


def header(orientation="axial", modality="MR", **attributes) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    ds.ImageOrientationPatient = IOP[orientation] if isinstance(orientation, str) else list(orientation)
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def tilted_axial(degrees: float) -> list[float]:
    """Axial plane tilted about the L/R axis (an oblique axial, e.g. along the AC-PC line)."""
    a = np.deg2rad(degrees)
    return [1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a))]


@pytest.mark.parametrize("name", ["axial", "coronal", "sagittal"])
def test_orientation_from_iop(name):
    assert series_orientation(header(name)) == name


def test_orientation_closest_axis_and_invalid():
    assert series_orientation(header(tilted_axial(30))) == "axial"
    assert series_orientation(header(tilted_axial(60))) == "coronal"
    assert series_orientation(Dataset()) is None
    assert series_orientation(header([1, 0, 0, 1, 0, 0])) is None  # parallel cosines: no normal


def test_default_rules_file_matches_defaults():
    rules = load_series_rules()
    assert rules == SeriesRules()
    assert rules.source == str(DEFAULT_RULES_PATH)


def test_accept_and_reject_with_reasons():
    series = {
        "axial-brain": [header("axial", BodyPartExamined="BRAIN")] * 3,
        "axial-no-body-part": [header("axial")] * 3,
        "axial-head-study": [header("axial", StudyDescription="MRI Head w/o contrast")] * 3,
        "coronal": [header("coronal", BodyPartExamined="BRAIN")] * 3,
        "ct": [header("axial", modality="CT", BodyPartExamined="HEAD")] * 3,
        "knee": [header("axial", BodyPartExamined="KNEE", StudyDescription="MRI knee")] * 3,
        "localizer": [header("axial"), header("coronal"), header("sagittal")],
        "no-iop": [Dataset()],
    }
    series["no-iop"][0].Modality = "MR"
    reasons = explain_series(series)
    assert reasons["axial-brain"] is None
    assert reasons["axial-no-body-part"] is None  # tolerant when absent
    assert reasons["axial-head-study"] is None
    assert reasons["coronal"] == "orientation is coronal, expected axial"
    assert reasons["ct"].startswith("modality CT is not one of ['MR']")
    assert "KNEE" in reasons["knee"] and "brain" in reasons["knee"]
    assert "mixed orientations" in reasons["localizer"]
    assert "ImageOrientationPatient" in reasons["no-iop"]


def test_select_series_logs_reasons(caplog):
    series = {"a": [header("axial")], "c": [header("coronal", SeriesDescription="COR T2")]}
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy.rules"):
        assert select_series(series) == ["a"]
    assert "Series c (COR T2) skipped: orientation is coronal, expected axial" in caplog.text


def test_site_rules_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"orientations": ["coronal", "axial"], "require_body_part": True, "min_instances": 2}))
    rules = load_series_rules(path)
    assert rules.orientations == ("coronal", "axial") and rules.modalities == ("MR",)
    series = {
        "coronal": [header("coronal", BodyPartExamined="BRAIN")] * 2,
        "no-body-part": [header("axial")] * 2,
        "short": [header("axial", BodyPartExamined="BRAIN")],
    }
    assert select_series(series, path) == ["coronal"]
    reasons = explain_series(series, rules)
    assert "require a body part" in reasons["no-body-part"]
    assert "at least 2" in reasons["short"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"modality": ["MR"]}', r"unknown key\(s\) \['modality'\]"),
        ('{"modalities": "MR"}', "'modalities' must be a list of strings"),
        ('{"min_instances": true}', "'min_instances' must be a JSON int"),
        ('{"orientations": ["transverse"]}', "unknown orientation"),
    ],
)
def test_bad_rules_file(tmp_path, content, match):
    path = tmp_path / "site_rules.json"
    path.write_text(content)
    with pytest.raises(SeriesRulesError, match=match) as info:
        load_series_rules(path)
    assert str(path) in str(info.value)


def test_missing_rules_file(tmp_path):
    with pytest.raises(SeriesRulesError, match="does not exist"):
        load_series_rules(tmp_path / "nope.json")
