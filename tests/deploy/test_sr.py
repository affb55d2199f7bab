"""DICOM SR of the study findings (sdmad_monai.deploy.sr): the written file read back with pydicom and its content
tree walked by hand (scores, Present/Absent, algorithm identification, references to the source series),
deterministic UIDs, and the JSON copy."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage

from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.sr import (
    ALGORITHM_NAME,
    INTENDED_USE,
    AlgorithmInfo,
    build_sr,
    detector_fingerprint,
    read_sr_findings,
    write_sr_report,
)
from sdmad_monai.inference import infer_volume
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11"
SLICES = [0, 5, 10]
#: (finding, finding site) of the six categories, written out by hand from DICOM PS3.16 (SCT / DCM)
EXPECTED_CODES = [
    (("245849007", "SCT", "Post-surgical anatomy"), ("89546000", "SCT", "Skull")),
    (("Posttreatment change", "99SDMAD", "Posttreatment change"), ("12738006", "SCT", "Brain")),
    (("52988006", "SCT", "Lesion"), ("12738006", "SCT", "Brain")),
    (("Dural thickening", "99SDMAD", "Dural thickening"), ("18545000", "SCT", "Dura mater")),
    (("260376009", "SCT", "Enlarged"), ("35764002", "SCT", "Brain ventricle")),
    (("110702", "DCM", "White Matter T2 Hyperintensity"), ("68523003", "SCT", "Cerebral White Matter")),
]


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sr") / "series"
    volume = np.random.default_rng(0).uniform(0, 1000, (32, 32, 12))
    paths = write_dicom_series(
        volume, folder, study_instance_uid=STUDY, series_instance_uid=SERIES, attributes={"BodyPartExamined": "BRAIN"}
    )
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return folder, headers


@pytest.fixture(scope="module")
def result(detector, series):
    return infer_volume(detector, series[0], indices=SLICES)


@pytest.fixture(scope="module")
def algorithm(detector):
    return AlgorithmInfo.from_detector(detector)


def code(item, attribute):
    c = getattr(item, attribute)[0]
    return (c.get("CodeValue") or c.get("LongCodeValue"), c.CodingSchemeDesignator)


def walk(container, path=()):
    """Every content item under ``container`` with the concept names of its ancestors."""
    for item in getattr(container, "ContentSequence", []):
        yield path, item
        yield from walk(item, path + (code(item, "ConceptNameCodeSequence"),))


def test_sr_round_trip(tmp_path, result, series, algorithm, dciodvfy):
    headers = series[1]
    slice_headers = [headers[i] for i in SLICES]  # axial series written bottom-up: slice k = file k
    sr_path, json_path = write_sr_report(result, headers, algorithm, tmp_path, source_images=slice_headers)
    assert dciodvfy(sr_path) == []
    ds = pydicom.dcmread(sr_path)
    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == STUDY and ds.PatientID == headers[0].PatientID
    assert ds.SeriesInstanceUID != SERIES
    assert code(ds, "ConceptNameCodeSequence") == ("126000", "DCM")

    groups = [item for path, item in walk(ds) if code(item, "ConceptNameCodeSequence") == ("125007", "DCM")]
    assert len(groups) == len(result.findings) == len(result.category_labels)
    for group, finding, (finding_code, site_code) in zip(groups, result.findings, EXPECTED_CODES):
        items = {code(i, "ConceptNameCodeSequence"): i for i in group.ContentSequence}
        for concept, expected in ((("121071", "DCM"), finding_code), (("363698007", "SCT"), site_code)):
            assert code(items[concept], "ConceptCodeSequence") == expected[:2]
            assert items[concept].ConceptCodeSequence[0].CodeMeaning == expected[2]
        tracking = items[("112039", "DCM")].TextValue
        assert tracking == f"SD-MAD: {finding['display_name']}"
        score = items[("246262008", "SCT")]
        assert score.ValueType == "NUM"
        assert float(score.MeasuredValueSequence[0].NumericValue) == pytest.approx(finding["score"], abs=1e-6)
        assert code(score.MeasuredValueSequence[0], "MeasurementUnitsCodeSequence") == ("1", "UCUM")
        presence = items[("121052", "DCM")]
        expected = ("52101004", "SCT") if finding["finding"] else ("272519000", "SCT")
        assert code(presence, "ConceptCodeSequence") == expected
        assert items[("111001", "DCM")].TextValue == ALGORITHM_NAME
        assert items[("111003", "DCM")].TextValue == result.model["sdmad_monai_version"]
        parameters = [
            i.TextValue for i in group.ContentSequence if code(i, "ConceptNameCodeSequence") == ("111002", "DCM")
        ]
        assert f"backbone={result.model['backbone']}" in parameters
        assert f"checkpoint=sha256:{algorithm.fingerprint}" in parameters
        # what a reader needs besides the model: which slices were looked at, and that it is not a diagnosis
        assert parameters[-3:] == [
            "operating_point=eq8",
            f"slices_analysed=axial {','.join(map(str, SLICES))}",
            INTENDED_USE,
        ]
        assert "not for diagnostic use" in INTENDED_USE
        images = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
        assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
            h.SOPInstanceUID for h in slice_headers
        ]

    # the private scheme is declared (it codes two categories and the probability / threshold), no other
    assert [s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence] == ["99SDMAD"]

    # the whole source series is the evidence
    (study,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == STUDY
    (referenced,) = study.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == SERIES
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedSOPSequence} == {h.SOPInstanceUID for h in headers}

    # the package's own reader agrees
    read = read_sr_findings(sr_path)
    assert read["algorithm"]["name"] == ALGORITHM_NAME and read["algorithm"]["version"] == algorithm.version
    assert read["evidence"] == {SERIES: [h.SOPInstanceUID for h in headers]}
    for got, finding in zip(read["findings"], result.findings):
        assert got["label"] == finding["label"] and got["finding"] == finding["finding"]
        assert got["display_name"] == finding["display_name"]
        assert got["score"] == pytest.approx(finding["score"], abs=1e-6)

    document = json.loads(json_path.read_text())
    assert document["findings"] == result.findings
    assert document["sr"]["sop_instance_uid"] == ds.SOPInstanceUID and document["sr"]["file"] == sr_path.name
    assert document["series_instance_uid"] == SERIES and document["algorithm"]["fingerprint"] == algorithm.fingerprint
    for finding, (finding_code, site_code) in zip(result.findings, EXPECTED_CODES):
        codes = document["finding_codes"][finding["label"]]
        assert (codes["finding"]["value"], codes["finding"]["scheme"], codes["finding"]["meaning"]) == finding_code
        assert (codes["finding_site"]["value"], codes["finding_site"]["scheme"]) == site_code[:2]


def test_deterministic_uids(result, series, algorithm):
    headers = series[1]
    first, again = build_sr(result, headers, algorithm), build_sr(result, headers, algorithm)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != first.SeriesInstanceUID
    for uid in (first.SOPInstanceUID, first.SeriesInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
    for other in (
        dataclasses.replace(algorithm, version=algorithm.version + ".post1"),
        dataclasses.replace(algorithm, fingerprint="0" * 64),
    ):
        changed = build_sr(result, headers, other)
        assert changed.SOPInstanceUID != first.SOPInstanceUID
        assert changed.SeriesInstanceUID != first.SeriesInstanceUID
    # other category codes: another document (a new SR instance), in the same SR series of the model
    from sdmad_monai.deploy.codes import load_finding_codes

    shipped = load_finding_codes()
    recoded = dataclasses.replace(
        shipped, categories={k: v for k, v in shipped.categories.items() if k != "Craniotomy"}
    )
    changed = build_sr(result, headers, algorithm, finding_codes=recoded)
    assert changed.SOPInstanceUID != first.SOPInstanceUID and changed.SeriesInstanceUID == first.SeriesInstanceUID


def test_sign_selection_is_recorded_and_gets_its_own_document(result, series, algorithm):
    """The SR states whether Eq. 6 ran (it used to read a config key that never exists and always said True), and
    the "no SS" ablation, which decides otherwise, is another SR instance in the same SR series."""
    no_ss = SignDrivenDetector.from_preset("tiny", sign_selection=False)
    info = AlgorithmInfo.from_detector(no_ss)
    assert "sign_selection=False" in info.parameters and not info.sign_selection
    assert "sign_selection=True" in algorithm.parameters and algorithm.sign_selection
    headers = series[1]
    with_ss, without = build_sr(result, headers, algorithm), build_sr(result, headers, info)
    assert without.SOPInstanceUID != with_ss.SOPInstanceUID
    assert without.SeriesInstanceUID == with_ss.SeriesInstanceUID


def test_fingerprint_survives_checkpoint(tmp_path, detector):
    path = detector.save(tmp_path / "model.pt")
    reloaded = SignDrivenDetector.load(path)
    assert detector_fingerprint(reloaded) == detector_fingerprint(detector)
    other = SignDrivenDetector.from_preset("tiny", seed=1)
    assert detector_fingerprint(other) != detector_fingerprint(detector)


def test_source_must_be_one_series(result, series, algorithm):
    headers = series[1]
    stranger = copy.deepcopy(headers[0])
    stranger.SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="one series of one study"):
        build_sr(result, [headers[0], stranger], algorithm)
    with pytest.raises(ValueError, match="No source instance"):
        build_sr(result, [], algorithm)


def test_calibrated_probability_and_threshold_in_the_sr(tmp_path, series, dciodvfy):
    import highdicom as hd

    from sdmad_monai.calibration import fit_calibration

    rng = np.random.default_rng(3)
    labels = rng.random((120, 6)) < 0.3
    calibrated = SignDrivenDetector.from_preset("tiny", operating_point={"target_sensitivity": 0.8})
    calibrated.set_calibration(fit_calibration(rng.normal(0, 0.02, (120, 6)) + 0.03 * labels, labels,
                                               calibrated.category_labels))  # fmt: skip
    result = infer_volume(calibrated, series[0], indices=SLICES)
    headers = series[1]
    algorithm = AlgorithmInfo.from_detector(calibrated)
    sr_path, _ = write_sr_report(result, headers, algorithm, tmp_path)
    assert dciodvfy(sr_path) == []
    assert "operating_point=target_sensitivity=0.8" in algorithm.parameters
    eq8 = dataclasses.replace(algorithm, operating_point="eq8")
    assert build_sr(result, headers, eq8).SOPInstanceUID != pydicom.dcmread(sr_path).SOPInstanceUID
    read = read_sr_findings(sr_path)
    rules = calibrated.decision_rules()
    for got, finding, rule in zip(read["findings"], result.findings, rules):
        assert 0.0 <= got["probability"] <= 1.0
        assert got["probability"] == pytest.approx(finding["probability"], abs=1e-6)
        assert rule["rule"] == "probability" and got["threshold"] == pytest.approx(rule["threshold"], abs=1e-6)
        assert got["finding"] == finding["finding"] == int(finding["probability"] >= rule["threshold"])
    # highdicom reads it back, with the declared local codes as measurements of each finding's group
    report = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(sr_path))
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == len(result.findings)
    for group, finding, rule, (finding_code, site_code) in zip(groups, result.findings, rules, EXPECTED_CODES):
        assert (group.finding_type.value, group.finding_type.scheme_designator) == finding_code[:2]
        (site,) = group.finding_sites
        assert (site.value.value, site.value.scheme_designator, site.value.meaning) == site_code
        measured = {(m.name.value, m.name.scheme_designator): m.value for m in group.get_measurements()}
        assert measured[("probability", "99SDMAD")] == pytest.approx(finding["probability"], abs=1e-6)
        assert measured[("decision-threshold", "99SDMAD")] == pytest.approx(rule["threshold"], abs=1e-6)
        assert measured[("246262008", "SCT")] == pytest.approx(finding["score"], abs=1e-6)
