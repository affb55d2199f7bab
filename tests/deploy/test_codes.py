"""Finding codes (sdmad_monai.deploy.codes): the shipped file against DICOM PS3.16 (pydicom's copy), the checks a
site's edited file goes through, the private fallback, and an edited file carried into the SR and read back."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from sdmad_monai.deploy.codes import (
    DEFAULT_CODES_PATH,
    FindingCodesError,
    is_valid_sctid,
    load_finding_codes,
)
from sdmad_monai.prompts import load_prompt_bank

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")
SHIPPED = json.loads(DEFAULT_CODES_PATH.read_text())


def write(tmp_path, document, name="codes.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_shipped_codes_cover_the_fastmri_bank_with_dicom_codes():
    loaded = load_finding_codes()
    bank = load_prompt_bank("fastmri_brain")
    assert list(loaded.categories) == bank.labels
    for label in bank.labels:
        c = loaded.categories[label]
        for term in (c.finding, c.finding_site):
            if term.is_private:
                assert term.scheme == "99SDMAD" and term.value == label
                continue
            # the code is DICOM's, with DICOM's meaning
            table = getattr(codes, term.scheme)
            assert any(getattr(table, k).value == term.value and getattr(table, k).meaning == term.meaning
                       for k in dir(table) if k[:1].isupper()), term  # fmt: skip
    standard = [label for label, c in loaded.categories.items() if not c.finding.is_private]
    assert len(standard) == 4 and all(not c.finding_site.is_private for c in loaded.categories.values())


def test_sctid_check_digit():
    # every SNOMED CT code DICOM lists is well formed; changing one digit breaks the Verhoeff check
    values = {codes.SCT.Brain.value, codes.SCT.Skull.value, codes.SCT.Lesion.value, codes.SCT.DuraMater.value}
    for value in values:
        assert is_valid_sctid(value)
        altered = value[:-1] + str((int(value[-1]) + 1) % 10)
        assert not is_valid_sctid(altered)
    assert not is_valid_sctid("012738006") and not is_valid_sctid("12345") and not is_valid_sctid("RID123")
    assert not is_valid_sctid("12738026")  # partition 02 (a description, not a concept)


def test_all_dicom_sct_codes_pass_the_check():
    table = codes.SCT
    values = {getattr(table, k).value for k in dir(table) if k[:1].isupper()}
    assert len(values) > 1000
    bad = [v for v in values if v.isdigit() and not is_valid_sctid(v)]
    # one listed value fails its Verhoeff check digit in DICOM's own table ("Serum albumin below reference range");
    # listed codes are accepted by their meaning, so this does not refuse it
    assert set(bad) <= {"115347700"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["categories"]["Craniotomy"]["finding"].update(meaning="Craniotomy"),
            "SCT 245849007 means 'post-surgical anatomy' in DICOM PS3.16, not 'Craniotomy'",
        ),
        (
            lambda d: d["categories"]["Craniotomy"]["finding"].update(value="245849008"),
            "not a SNOMED CT concept identifier",
        ),
        (
            lambda d: d["categories"]["Nonspecific lesion"]["finding"].update(scheme="DCM", value="999999"),
            "DCM 999999 is not a code of DICOM PS3.16",
        ),
        (lambda d: d["categories"]["Craniotomy"]["finding"].update(scheme="SNOMED"), "unknown coding scheme 'SNOMED'"),
        (
            lambda d: d["categories"]["Craniotomy"]["finding"].update(scheme="99SITE"),
            "private scheme '99SITE' is not declared",
        ),
        (lambda d: d["categories"]["Craniotomy"]["finding"].pop("meaning"), "exactly 'scheme', 'value' and 'meaning'"),
        (lambda d: d["categories"]["Craniotomy"].update(site={}), "category 'Craniotomy' must be an object"),
        (lambda d: d.update(categorys={}), "unknown key(s) ['categorys']"),
        (
            lambda d: d["categories"]["Nonspecific lesion"].update(copy.deepcopy(d["categories"]["Craniotomy"])),
            "have the same finding and finding site",
        ),
        (lambda d: d["categories"]["Craniotomy"]["finding"].update(meaning="x" * 65), "DICOM allows 64"),
    ],
)
def test_bad_files_are_refused_with_the_file_and_entry(tmp_path, edit, message):
    document = copy.deepcopy(SHIPPED)
    edit(document)
    path = write(tmp_path, document)
    with pytest.raises(FindingCodesError) as error:
        load_finding_codes(path)
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(FindingCodesError, match="not found"):
        load_finding_codes(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FindingCodesError, match="bad.json is not a readable JSON file"):
        load_finding_codes(tmp_path / "bad.json")


def test_site_file_sct_beyond_dicom_and_private_scheme(tmp_path, caplog):
    document = copy.deepcopy(SHIPPED)
    # a site codes dural thickening with its own SNOMED CT concept (not in DICOM's list: only the SCTID is
    # checked) and posttreatment change in its own declared scheme
    document["categories"]["Dural thickening"]["finding"] = {
        "scheme": "SCT", "value": "25353009", "meaning": "Site's dural code"}  # fmt: skip
    document["private_schemes"]["99SITE"] = "Our hospital's neuro findings"
    document["categories"]["Posttreatment change"]["finding"] = {
        "scheme": "99SITE", "value": "PTC", "meaning": "Post-treatment change"}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sdmad_monai.deploy.codes"):
        loaded = load_finding_codes(write(tmp_path, document))
    assert "SCT 25353009 is not in DICOM PS3.16; its meaning" in caplog.text
    used = loaded.resolve(loaded.categories)
    assert loaded.declared_schemes(used) == {
        "99SDMAD": SHIPPED["private_schemes"]["99SDMAD"], "99SITE": "Our hospital's neuro findings"}  # fmt: skip


def test_unlisted_category_falls_back_to_the_private_code(caplog):
    loaded = load_finding_codes()
    with caplog.at_level(logging.WARNING, logger="sdmad_monai.deploy.codes"):
        (craniotomy, tumour) = loaded.resolve(["Craniotomy", "Glioma"], ["Craniotomy", "Glioma (WHO 4)"])
    assert "list no code for ['Glioma']" in caplog.text
    assert craniotomy.listed and not tumour.listed
    assert tumour.finding.to_dict() == {"scheme": "99SDMAD", "value": "Glioma", "meaning": "Glioma (WHO 4)"}
    assert tumour.finding_site == loaded.default_finding_site
    assert loaded.label_of(tumour.finding.key, tumour.finding_site.key) == "Glioma"
    assert loaded.label_of(craniotomy.finding.key, craniotomy.finding_site.key) == "Craniotomy"
    assert loaded.label_of(craniotomy.finding.key, ("12738006", "SCT")) is None  # right finding, wrong site


def test_edited_file_reaches_the_sr_and_reads_back(tmp_path, dciodvfy):
    from sdmad_monai.deploy.demo import write_dicom_series
    from sdmad_monai.deploy.sr import AlgorithmInfo, read_sr_findings, write_sr_report
    from sdmad_monai.inference import infer_volume
    from sdmad_monai.networks import SignDrivenDetector

    document = copy.deepcopy(SHIPPED)
    document["private_schemes"]["99SITE"] = "Our hospital's neuro findings"
    document["categories"]["Dural thickening"]["finding"] = {
        "scheme": "99SITE", "value": "DURA1", "meaning": "Dural thickening (site code)"}  # fmt: skip
    path = write(tmp_path, document)
    detector = SignDrivenDetector.from_preset("tiny")
    volume = np.random.default_rng(1).uniform(0, 1000, (32, 32, 8))
    files = write_dicom_series(volume, tmp_path / "series")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    result = infer_volume(detector, tmp_path / "series", indices=[0, 4])
    sr_path, json_path = write_sr_report(
        result, headers, AlgorithmInfo.from_detector(detector), tmp_path, finding_codes=path
    )
    assert dciodvfy(sr_path) == []
    ds = pydicom.dcmread(sr_path)
    declared = {s.CodingSchemeDesignator: s.CodingSchemeName for s in ds.CodingSchemeIdentificationSequence}
    assert declared == {"99SDMAD": SHIPPED["private_schemes"]["99SDMAD"], "99SITE": "Our hospital's neuro findings"}
    read = read_sr_findings(sr_path, finding_codes=path)
    assert [f["label"] for f in read["findings"]] == result.category_labels
    dural = read["findings"][result.category_labels.index("Dural thickening")]
    assert dural["finding_code"] == {"value": "DURA1", "scheme": "99SITE", "meaning": "Dural thickening (site code)"}
    # read with the shipped file instead, the site's code matches no category and keeps its code value
    assert read_sr_findings(sr_path)["findings"][3]["label"] == "DURA1"
    saved = json.loads(json_path.read_text())["finding_codes"]
    assert saved["source"] == str(path) and saved["Dural thickening"]["finding"]["scheme"] == "99SITE"
