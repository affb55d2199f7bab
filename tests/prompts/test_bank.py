"""Prompt bank: the shipped fastMRI+ bank, validation errors, selection, fingerprint."""

import json

import pytest

from sdmad_monai.prompts import PromptBank, PromptBankError, load_prompt_bank

FASTMRI_SIX = [
    "Craniotomy",
    "Posttreatment change",
    "Nonspecific lesion",
    "Dural thickening",
    "Enlarged ventricles",
    "Global label: Small vessel chronic white matter ischemic change",
]


def minimal(**changes):
    data = {
        "name": "test",
        "normal": ["normal one", "normal two"],
        "categories": [{"label": "A", "signs": ["a one", "a two"]}, {"label": "B", "signs": ["b one"]}],
    }
    data.update(changes)
    return data


def test_shipped_bank_has_the_papers_six_categories():
    bank = load_prompt_bank("fastmri_brain")
    assert bank.labels == FASTMRI_SIX
    assert len(bank.normal) >= 3
    assert all(len(c.signs) >= 5 for c in bank.categories)
    assert bank.display_names[-1] == "Small vessel ischemic change"
    texts, categories = bank.flatten()
    assert categories[: len(bank.normal)] == [-1] * len(bank.normal)
    assert categories.count(5) == len(bank.categories[5].signs) and len(texts) == len(categories)


def test_flatten_order():
    texts, categories = PromptBank.from_dict(minimal()).flatten()
    assert texts == ["normal one", "normal two", "a one", "a two", "b one"]
    assert categories == [-1, -1, 0, 0, 1]


def test_category_without_prompts():
    data = minimal(categories=[{"label": "A", "signs": []}])
    with pytest.raises(PromptBankError, match="'A' has no sign prompt"):
        PromptBank.from_dict(data)


def test_duplicate_prompt_names_both_owners():
    data = minimal(categories=[{"label": "A", "signs": ["same thing"]}, {"label": "B", "signs": ["Same  thing"]}])
    with pytest.raises(PromptBankError, match="duplicate prompt 'Same  thing' \\(in 'B', already in 'A'\\)"):
        PromptBank.from_dict(data)


def test_missing_normal_and_duplicate_label():
    with pytest.raises(PromptBankError, match="no normal prompt"):
        PromptBank.from_dict(minimal(normal=[]))
    data = minimal(categories=[{"label": "A", "signs": ["x"]}, {"label": "A", "signs": ["y"]}])
    with pytest.raises(PromptBankError, match="'A' twice"):
        PromptBank.from_dict(data)


def test_select_reorders_and_names_unknown_labels():
    bank = PromptBank.from_dict(minimal())
    assert bank.select(["B", "A"]).labels == ["B", "A"]
    with pytest.raises(PromptBankError, match=r"\['Mass', 'Edema'\] are not in prompt bank"):
        bank.select(["A", "Mass", "Edema"])


def test_fingerprint_tracks_prompts_and_order():
    bank = PromptBank.from_dict(minimal())
    assert bank.fingerprint() == PromptBank.from_dict(bank.to_dict()).fingerprint()
    assert bank.fingerprint() != bank.select(["B", "A"]).fingerprint()


def test_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "bank.json"
    broken.write_text("{not json")
    with pytest.raises(PromptBankError, match="bank.json is not valid JSON"):
        load_prompt_bank(broken)
    with pytest.raises(PromptBankError, match="neither a built-in bank"):
        load_prompt_bank(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(minimal()))
    assert load_prompt_bank(good, ["B"]).labels == ["B"]
    missing_field = tmp_path / "partial.json"
    missing_field.write_text(json.dumps({"normal": ["n"]}))
    with pytest.raises(PromptBankError, match=r"partial.json lacks the field\(s\) \['categories'\]"):
        load_prompt_bank(missing_field)
