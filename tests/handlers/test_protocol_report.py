"""ProtocolReport / protocol_metrics on a hand-made evaluation run by a real ignite Engine, checked against sklearn."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import accuracy_score, hamming_loss, roc_auc_score

from sdmad_monai.handlers import ProtocolReport, protocol_metrics

# the ROC panel of a one-class category has no curve, so matplotlib's legend() has nothing to show

CATEGORIES = ["Craniotomy", "Lesion", "Ventricles"]  # "Ventricles" is never positive: undefined AUROC
VARIANTS = ("clip", "sdmad")
PROMPTS = ["a normal brain", "a craniotomy", "a lesion", "big ventricles"]
PROMPT_CATEGORIES = [-1, 0, 1, 2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 8 slices in two batches of 4: labels for category 0 and 1 mixed, category 2 all zero
LABELS = torch.tensor(
    [
        [1, 0, 0],
        [0, 0, 0],
        [1, 1, 0],
        [0, 1, 0],
        [0, 0, 0],
        [1, 0, 0],
        [0, 0, 0],
        [0, 1, 0],
    ],
    dtype=torch.float32,
)


def make_outputs(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    n, k, p = LABELS.shape[0], LABELS.shape[1], len(PROMPTS)
    scores = torch.rand(n, k, generator=generator)
    predictions = (torch.rand(n, k, generator=generator) > 0.5).float()
    predictions[0] = LABELS[0]  # at least one fully correct row, so subset accuracy is not trivially 0
    return {
        "scores": scores,
        "predictions": predictions,
        "image_score": torch.rand(n, generator=generator),
        "similarities": torch.rand(n, p, generator=generator) * 2 - 1,
    }


OUTPUTS = {variant: make_outputs(seed) for seed, variant in enumerate(VARIANTS)}
FILES = [f"vol{i // 3}" for i in range(LABELS.shape[0])]
SLICES = [(i % 3) * 5 for i in range(LABELS.shape[0])]


def batches(batch_size: int = 4) -> list[dict]:
    data = []
    for start in range(0, LABELS.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        data.append(
            {
                "file": FILES[rows],
                "slice": torch.tensor(SLICES[rows]),
                "label": LABELS[rows],
                "pred": {v: {key: value[rows] for key, value in OUTPUTS[v].items()} for v in VARIANTS},
            }
        )
    return data


def evaluator(output_fn=None) -> Engine:
    def process(engine, batch):
        if output_fn is not None:
            return output_fn(batch)
        return {"label": batch["label"], "pred": batch["pred"]}

    return Engine(process)


def make_report(tmp_path, **kwargs) -> ProtocolReport:
    kwargs.setdefault("prompt_texts", PROMPTS)
    kwargs.setdefault("prompt_categories", PROMPT_CATEGORIES)
    return ProtocolReport(tmp_path / "report", CATEGORIES, extra_info={"checkpoint": "model.pt"}, **kwargs)


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("protocol")
    engine = evaluator()
    report = make_report(tmp_path)
    report.attach(engine)
    engine.run(batches(), max_epochs=2)  # two epochs: the second must start from a reset collection
    return engine, tmp_path / "report"


def expected_metrics(variant: str) -> dict:
    y = LABELS.numpy().astype(int)
    out = OUTPUTS[variant]
    per_category = {}
    for index, name in enumerate(CATEGORIES):
        column = y[:, index]
        per_category[name] = (
            roc_auc_score(column, out["scores"][:, index].numpy()) if column.min() != column.max() else math.nan
        )
    defined = [v for v in per_category.values() if not math.isnan(v)]
    predictions = out["predictions"].numpy().astype(int)
    return {
        "image_auroc": roc_auc_score(y.any(axis=1).astype(int), out["image_score"].numpy()),
        "hamming_score": 1.0 - hamming_loss(y, predictions),
        "subset_accuracy": accuracy_score(y, predictions),
        "category_auroc": per_category,
        "mean_category_auroc": float(np.mean(defined)),
        "num_categories_in_mean": len(defined),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_json_matches_sklearn(run_report, variant):
    _, folder = run_report
    results = json.loads((folder / "metrics.json").read_text())
    assert results["num_slices"] == LABELS.shape[0]  # not doubled by the second epoch
    assert results["num_normal_slices"] == 3
    assert results["positives_per_category"] == {"Craniotomy": 3, "Lesion": 3, "Ventricles": 0}
    assert results["categories"] == CATEGORIES
    assert results["run"] == {"checkpoint": "model.pt"}
    assert set(results["variants"]) == set(VARIANTS)
    got, expected = results["variants"][variant], expected_metrics(variant)
    for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key  # Hamming/subset are float32 means
    assert 0 < got["subset_accuracy"] < 1
    assert got["num_categories_in_mean"] == expected["num_categories_in_mean"] == 2
    assert set(got["category_auroc"]) == set(CATEGORIES)
    for name in CATEGORIES[:2]:
        assert got["category_auroc"][name] == pytest.approx(expected["category_auroc"][name], abs=1e-9)
    assert math.isnan(got["category_auroc"]["Ventricles"])  # one class only: NaN, excluded from the mean
    assert got["mean_category_auroc"] == pytest.approx(
        (got["category_auroc"]["Craniotomy"] + got["category_auroc"]["Lesion"]) / 2
    )


def test_engine_metrics(run_report):
    engine, folder = run_report
    results = json.loads((folder / "metrics.json").read_text())
    for variant in VARIANTS:
        for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
            assert engine.state.metrics[f"{variant}/{key}"] == pytest.approx(results["variants"][variant][key])
        assert engine.state.metrics[f"{variant}/mean_category_auroc"] == pytest.approx(
            expected_metrics(variant)["mean_category_auroc"]
        )


def test_predictions_csv(run_report):
    _, folder = run_report
    with open(folder / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    expected_header = ["file", "slice"] + [f"label:{n}" for n in CATEGORIES]
    for variant in VARIANTS:
        expected_header += [f"{variant}:score:{n}" for n in CATEGORIES]
        expected_header += [f"{variant}:prediction:{n}" for n in CATEGORIES]
        expected_header.append(f"{variant}:image_score")
    assert header == expected_header
    assert len(body) == LABELS.shape[0]
    assert [row[0] for row in body] == FILES
    assert [int(row[1]) for row in body] == SLICES
    column = header.index("sdmad:score:Lesion")
    assert [float(row[column]) for row in body] == pytest.approx(OUTPUTS["sdmad"]["scores"][:, 1].tolist(), rel=1e-5)
    column = header.index("label:Craniotomy")
    assert [float(row[column]) for row in body] == LABELS[:, 0].tolist()


def test_figures_are_png_and_no_temporary_files(run_report):
    _, folder = run_report
    for name in ("roc.png", "similarity_heatmap.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["metrics.json", "predictions.csv", "roc.png", "similarity_heatmap.png"]
    )
    assert not list(folder.rglob("*.tmp"))


def test_no_heatmap_without_prompt_texts(tmp_path):
    engine = evaluator()
    report = make_report(tmp_path, prompt_texts=None, prompt_categories=None)
    report.attach(engine)
    engine.run(batches(batch_size=3), max_epochs=1)  # uneven batches: 3 + 3 + 2
    folder = tmp_path / "report"
    assert (folder / "roc.png").read_bytes()[:8] == PNG_MAGIC
    assert not (folder / "similarity_heatmap.png").exists()
    results = json.loads((folder / "metrics.json").read_text())
    assert results["variants"]["clip"]["image_auroc"] == pytest.approx(expected_metrics("clip")["image_auroc"])


def test_protocol_metrics_direct():
    out = OUTPUTS["clip"]
    metrics = protocol_metrics(out["scores"], out["predictions"], out["image_score"], LABELS, CATEGORIES)
    expected = expected_metrics("clip")
    assert metrics["image_auroc"] == pytest.approx(expected["image_auroc"])
    assert metrics["num_categories_in_mean"] == 2
    # hand-made: perfect separation on every category
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    perfect = protocol_metrics(labels * 0.9, labels, labels.sum(dim=1), labels, ["a", "b"])
    assert perfect == {
        "image_auroc": 1.0,
        "hamming_score": 1.0,
        "subset_accuracy": 1.0,
        "category_auroc": {"a": 1.0, "b": 1.0},
        "mean_category_auroc": 1.0,
        "num_categories_in_mean": 2,
    }
    # no category defined: mean is NaN, none counted
    normal = torch.zeros(3, 2)
    empty = protocol_metrics(torch.rand(3, 2), normal, torch.rand(3), normal, ["a", "b"])
    assert math.isnan(empty["mean_category_auroc"]) and empty["num_categories_in_mean"] == 0
    assert math.isnan(empty["image_auroc"])
    assert empty["hamming_score"] == 1.0 and empty["subset_accuracy"] == 1.0


@pytest.mark.parametrize(
    "output_fn",
    [
        lambda batch: batch["pred"]["sdmad"]["scores"],  # a plain tensor
        lambda batch: [{"pred": batch["pred"], "label": batch["label"]}],  # decollated output
        lambda batch: {"label": batch["label"], "pred": batch["pred"]["sdmad"]["scores"]},  # not a variant dict
    ],
)
def test_output_not_protocol_inferer_dict(tmp_path, output_fn):
    engine = evaluator(output_fn)
    make_report(tmp_path).attach(engine)
    with pytest.raises(TypeError, match="ProtocolInferer"):
        engine.run(batches(), max_epochs=1)
    assert not (tmp_path / "report" / "metrics.json").exists()


def test_no_slice_collected(tmp_path):
    report = make_report(tmp_path)
    with pytest.raises(RuntimeError, match="collected no slice"):
        report.write()
    with pytest.raises(RuntimeError, match="collected no slice"):
        report.results()
    assert not (tmp_path / "report" / "metrics.json").exists()
