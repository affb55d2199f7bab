"""The shipped BMAD prompt banks: one 'abnormal' category per dataset, name matching, errors."""

import json

import pytest

from sdmad_monai.prompts import (
    BMAD_CATEGORY,
    PromptBankError,
    bmad_bank_key,
    load_bmad_prompt_bank,
)


@pytest.mark.parametrize(
    "folder, key",
    [
        ("BrainMRI", "brainmri"),
        ("brain_mri", "brainmri"),
        ("Brain_AD", "brainmri"),
        ("Liver-CT", "liverct"),
        ("RESC", "resc"),
        ("Retina_OCT2017_AD", "oct17"),
        ("ChestXray", "chestxray"),
        ("/data/bmad/HIS", "his"),
        ("MyScans", "generic"),
    ],
)
def test_dataset_names_pick_their_section(folder, key):
    assert bmad_bank_key(folder) == key
    bank = load_bmad_prompt_bank(folder)
    assert bank.name == f"bmad-{key}" and bank.labels == [BMAD_CATEGORY] == ["abnormal"]
    assert bank.normal and bank.categories[0].signs


def test_custom_file_and_errors(tmp_path):
    path = tmp_path / "bank.json"
    path.write_text(json.dumps({"label": "Ungood", "datasets": {"knee": {"normal": ["n"], "signs": ["s1", "s2"]}}}))
    bank = load_bmad_prompt_bank("Knee", path)
    assert bank.labels == ["Ungood"] and bank.normal == ("n",) and bank.categories[0].signs == ("s1", "s2")
    with pytest.raises(PromptBankError, match="no section for dataset 'BrainMRI' and no 'generic'"):
        load_bmad_prompt_bank("BrainMRI", path)
    path.write_text(json.dumps({"datasets": {"generic": {"normal": ["n"], "signs": "s"}}}))
    with pytest.raises(PromptBankError, match="'signs' must be a list"):
        load_bmad_prompt_bank("x", path)
    path.write_text("{")
    with pytest.raises(PromptBankError, match="not valid JSON"):
        load_bmad_prompt_bank("x", path)
