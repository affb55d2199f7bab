"""A hand-made evaluation run for the ProtocolReport tests (tests/handlers/test_protocol_report.py and
test_report_figures.py): 8 slices of 3 categories in batches of 4, two variants' outputs from fixed seeds, the keep
masks of sign selection, and the expected metrics computed with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import torch
from ignite.engine import Engine
from sklearn.metrics import accuracy_score, hamming_loss, roc_auc_score

from sdmad_monai.handlers import ProtocolReport

CATEGORIES = ["Craniotomy", "Lesion", "Ventricles"]  # "Ventricles" is never positive: undefined AUROC
VARIANTS = ("clip", "sdmad")
PROMPTS = ["a normal brain", "a craniotomy", "a lesion", "big ventricles"]
PROMPT_CATEGORIES = [-1, 0, 1, 2]
# sign selection's keep masks: with CLIP's prompt features (adapters off) and with the trained ones
KEEP = {"clip": torch.tensor([True, False, True, False]), "sdmad": torch.tensor([False, True, True, True])}
DEMO_DATA = {"dataset_dir": None, "demo_volumes": 24}
REAL_DATA = {"dataset_dir": "/data/fastmri", "demo_volumes": None}
NOTE_TAIL = "figures show the workflow, not clinical performance"
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
        # as ProtocolInferer: the scoring mask, and for clip what sign selection keeps for its prompt features
        data[-1]["pred"]["sdmad"]["keep"] = KEEP["sdmad"]
        data[-1]["pred"]["clip"]["keep"] = torch.ones(len(PROMPTS), dtype=torch.bool)
        data[-1]["pred"]["clip"]["sign_selection_keep"] = KEEP["clip"]
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
