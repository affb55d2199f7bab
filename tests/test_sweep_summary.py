"""``sdmad_monai.sweep_summary``: mean ± sample std over seeds of hand-made metrics.json files, checked against
numpy (NaN left out of a category's mean and count), and the JSON (valid, no NaN), CSV, Markdown and PNG it writes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sweep_metrics import CATEGORIES, VALUES, metrics_document, strict_json, write_metrics

from sdmad_monai.sweep_summary import aggregate, metrics_complete, summary_csv, summary_markdown, write_summary


@pytest.fixture()
def summary(tmp_path):
    seeds = sorted(VALUES)
    documents = {s: metrics_complete(write_metrics(tmp_path / f"seed{s}" / "metrics.json", s)) for s in seeds}
    return aggregate(documents)


def test_aggregate_matches_numpy(summary):
    assert summary["seeds"] == [0, 1, 3]
    assert summary["metrics"] == ["image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"]
    assert list(summary["variants"]) == ["clip", "sdmad"] and summary["categories"] == CATEGORIES
    for variant in ("clip", "sdmad"):
        for index, metric in enumerate(("image_auroc", "hamming_score", "subset_accuracy")):
            values = np.array([VALUES[s][variant][index] for s in (0, 1, 3)])
            stats = summary["variants"][variant]["metrics"][metric]
            assert stats["mean"] == float(np.mean(values)) and stats["std"] == float(np.std(values, ddof=1))
            assert stats["n"] == 3 and stats["per_seed"] == {"0": values[0], "1": values[1], "3": values[2]}
    # NaN left out of a category's mean and count
    dural = summary["variants"]["sdmad"]["category_auroc"]["Dural thickening"]
    assert dural["n"] == 2 and dural["per_seed"] == {"0": 0.75, "1": None, "3": 0.70}
    assert dural["mean"] == float(np.mean([0.75, 0.70])) and dural["std"] == float(np.std([0.75, 0.70], ddof=1))
    small_vessel = summary["variants"]["sdmad"]["category_auroc"][CATEGORIES[2]]
    assert small_vessel["n"] == 2 and small_vessel["mean"] == float(np.mean([0.90, 0.95]))
    undefined = summary["variants"]["clip"]["category_auroc"]["Dural thickening"]
    assert undefined == {"mean": None, "std": None, "n": 0, "per_seed": {"0": None, "1": None, "3": None}}
    assert "ddof=1" in summary["std"]
    assert summary["notes"] == ["demo data: figures show the workflow, not clinical performance"]  # once, not per seed


def test_one_defined_value_has_no_std():
    document = metrics_document(0)
    stats = aggregate({7: document})["variants"]["sdmad"]["metrics"]["image_auroc"]
    assert stats == {"mean": 0.81, "std": None, "n": 1, "per_seed": {"7": 0.81}}
    assert aggregate({7: None})["seeds"] == []


def test_summary_files(tmp_path, summary):
    summary = {**summary, "settings": {"overrides": {"k_shot": "1"}}}
    files = write_summary(tmp_path, summary)
    assert set(files) == {"json", "csv", "md", "png"}
    assert strict_json(files["json"])["variants"]["clip"]["category_auroc"]["Dural thickening"]["mean"] is None
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["csv"].read_text() == summary_csv(summary)
    rows = {(r["variant"], r["metric"]): r for r in csv.DictReader(files["csv"].open())}
    assert len(rows) == 2 * (4 + len(CATEGORIES))
    row = rows[("sdmad", "image_auroc")]
    assert float(row["mean"]) == float(np.mean([0.81, 0.77, 0.85]))
    assert float(row["std"]) == float(np.std([0.81, 0.77, 0.85], ddof=1))
    assert row["n"] == "3" and row["seeds"] == "0;1;3"
    assert [float(v) for v in row["values"].split(";")] == [0.81, 0.77, 0.85]
    row = rows[("sdmad", "category_auroc/Dural thickening")]
    assert row["n"] == "2" and row["values"].split(";")[1] == "nan"
    markdown = files["md"].read_text()
    assert markdown == summary_markdown(summary)
    assert markdown.startswith("| Variant | Image AUROC | Hamming score | Subset accuracy | Mean category AUROC |")
    mean, std = np.mean([0.81, 0.77, 0.85]), np.std([0.81, 0.77, 0.85], ddof=1)
    assert f"| sdmad | {mean:.3f} ± {std:.3f} |" in markdown
    assert "ddof=1" in markdown and "3 seeds (0, 1, 3)" in markdown and "k_shot=1" in markdown
    assert markdown.endswith("Note: demo data: figures show the workflow, not clinical performance.\n")
