"""The demo backbone's pretraining corpus: disjoint from the demo data, reports not the prompts, deterministic."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from sdmad_monai.data import FASTMRI_BRAIN_CATEGORIES
from sdmad_monai.data.demo import DEMO_STYLE, load_template, subject_fingerprint
from sdmad_monai.data.report_corpus import (
    CORPUS_STYLE,
    NORMAL_PHRASES,
    REPORT_PHRASES,
    build_report_corpus,
    category_mentions,
    write_report,
)
from sdmad_monai.prompts import load_prompt_bank
from sdmad_monai.workflows import prepare_splits


@pytest.fixture(scope="module")
def corpus():
    return build_report_corpus(8, seed=0, false_mention_probability=0.0, progress=False)


def _four_grams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}


def test_report_vocabulary_shares_no_four_word_run_with_the_prompt_bank():
    bank = load_prompt_bank("fastmri_brain")
    prompts, _ = bank.flatten()
    prompt_grams = set().union(*(_four_grams(p) for p in prompts))
    phrases = [p for c in REPORT_PHRASES for p in category_mentions(c)] + list(NORMAL_PHRASES)
    shared = {gram for phrase in phrases for gram in _four_grams(phrase) if gram in prompt_grams}
    assert not shared
    # whole reports too: a sentence frame around a phrase must not rebuild a prompt's wording either
    rng = np.random.default_rng(0)
    reports = [
        write_report([c for c in FASTMRI_BRAIN_CATEGORIES if rng.uniform() < 0.3], rng, false_mention_probability=0.3)
        for _ in range(5000)
    ]
    assert not {gram for report in reports for gram in _four_grams(report) if gram in prompt_grams}
    assert not {p.lower() for p in prompts} & {p.lower() for p in phrases}
    assert set(REPORT_PHRASES) == set(FASTMRI_BRAIN_CATEGORIES)


def test_corpus_subjects_never_appear_in_the_demo_splits(tmp_path, corpus):
    splits = prepare_splits(tmp_path, demo_volumes=14, k_shot=1, seed=0)
    template, affine = load_template()
    used = {item["file"] for name in ("training", "validation", "test") for item in splits[name]}
    # the demo's volume i is drawn from default_rng([demo_seed, i]); its file name carries i
    demo_prints = {
        subject_fingerprint(template, affine, [splits["settings"]["demo_seed"], int(stem.rsplit("_", 1)[1])])
        for stem in used
    }
    assert len(demo_prints) == len(used)
    assert len(set(corpus.fingerprints)) == 8
    assert not demo_prints & set(corpus.fingerprints)
    # the fingerprint tells subjects apart and finds the same one again
    same = subject_fingerprint(template, affine, [0, 3])
    assert same == subject_fingerprint(template, affine, [0, 3]) != subject_fingerprint(template, affine, [0, 4])


def test_corpus_is_deterministic_and_labelled_per_slice(corpus):
    again = build_report_corpus(8, seed=0, false_mention_probability=0.0, progress=False)
    assert torch.equal(again.images, corpus.images) and again.reports == corpus.reports
    other = build_report_corpus(8, seed=1, progress=False)
    assert other.reports != corpus.reports
    assert corpus.images.shape == (8 * 16, 3, 64, 64) and corpus.images.dtype == torch.float16
    assert corpus.labels.shape == (8 * 16, 6) and torch.equal(corpus.volumes, torch.arange(8).repeat_interleave(16))
    assert torch.isfinite(corpus.images.float()).all()
    # without false mentions, a report names only categories drawn on its slice
    for report, label in zip(corpus.reports, corpus.labels):
        named = [c for c in REPORT_PHRASES if any(p in report for p in category_mentions(c))]
        assert set(named) <= {FASTMRI_BRAIN_CATEGORIES[k] for k in torch.nonzero(label).flatten().tolist()}


def test_write_report_noise_is_what_it_says():
    rng = np.random.default_rng(0)
    reports = [write_report(["Craniotomy", "Enlarged ventricles"], rng, omit_probability=0.15) for _ in range(2000)]
    mentions = np.mean([any(p in r for p in category_mentions("Craniotomy")) for r in reports])
    assert 0.80 < mentions < 0.90  # 15 % of findings left out

    def position(report, category):
        found = [report.find(p) for p in category_mentions(category) if p in report]
        return min(found) if found else None

    pairs = [(position(r, "Craniotomy"), position(r, "Enlarged ventricles")) for r in reports]
    orders = {a < b for a, b in pairs if a is not None and b is not None}
    assert orders == {True, False}  # findings come in both orders
    normal_reports = [write_report([], rng, false_mention_probability=0.0) for _ in range(50)]
    assert all(any(p.lower() in r for p in NORMAL_PHRASES) for r in normal_reports)
    differentials = [write_report([], rng, false_mention_probability=1.0) for _ in range(50)]
    hedges = ("possible ", "probable ", "suspected ", "likely ", "cannot exclude ", "questionable ")
    assert all(any(h in r for h in hedges) for r in differentials)  # a mention of an absent finding is hedged
    with pytest.raises(ValueError, match="no report phrases"):
        write_report(["Mass"], rng)


def test_corpus_style_is_shifted_from_the_demo_style():
    assert CORPUS_STYLE != DEMO_STYLE
    assert isinstance(CORPUS_STYLE.lesion_radius, tuple) and CORPUS_STYLE.lesion_radius[1] > DEMO_STYLE.lesion_radius[1]
