"""Hand-made ``metrics.json`` documents for the sweep tests (tests/test_sweep.py, tests/test_sweep_summary.py):
three seeds of two variants, with NaN where a category AUROC is undefined in a seed, as ProtocolReport writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CATEGORIES = ["Craniotomy", "Dural thickening", "Global label: Small vessel chronic white matter ischemic change"]
NAN = float("nan")
# per seed: variant -> (image_auroc, hamming_score, subset_accuracy, category AUROCs); NaN: undefined in that seed
VALUES = {
    0: {"clip": (0.61, 0.50, 0.10, [0.55, NAN, 0.70]), "sdmad": (0.81, 0.90, 0.60, [0.80, 0.75, 0.90])},
    1: {"clip": (0.58, 0.52, 0.12, [0.52, NAN, 0.66]), "sdmad": (0.77, 0.88, 0.55, [0.85, NAN, 0.95])},
    3: {"clip": (0.66, 0.47, 0.08, [0.60, NAN, 0.71]), "sdmad": (0.85, 0.93, 0.65, [0.78, 0.70, NAN])},
}


def metrics_document(seed: int) -> dict:
    """A metrics.json as ProtocolReport writes it (NaN for undefined AUROCs); seeds other than those of VALUES get
    seed 0's numbers."""
    variants = {}
    for variant, (image, hamming, subset, per_category) in VALUES.get(seed, VALUES[0]).items():
        defined = [v for v in per_category if not math.isnan(v)]
        variants[variant] = {
            "image_auroc": image,
            "hamming_score": hamming,
            "subset_accuracy": subset,
            "category_auroc": dict(zip(CATEGORIES, per_category)),
            "mean_category_auroc": float(np.mean(defined)),
            "num_categories_in_mean": len(defined),
        }
    return {
        "num_slices": 30,
        "categories": CATEGORIES,
        "variants": variants,
        "run": {"checkpoint": "model.pt"},
        "note": "demo data: figures show the workflow, not clinical performance",
    }


def write_metrics(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_document(seed), indent=2))  # json.dumps writes NaN, like the report
    return path


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)
