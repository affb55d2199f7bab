"""configs/evaluate_bmad.json end to end: protocol 1 on a generated BMAD-like folder with masks, tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow
from sklearn.metrics import roc_auc_score

from sdmad_monai.data import generate_bmad_like_dataset
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.prompts import load_bmad_prompt_bank

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_protocol(root: Path, dataset: Path, **override):
    workflow = ConfigWorkflow(
        # evaluated with the config set it was trained with: the network is built from the configs, the workflow
        # loads the checkpoint into it (DetectorCheckpointLoader)
        config_file=[str(CONFIGS / name) for name in ("train.json", "train_bmad.json", "evaluate_bmad.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        run_id="evaluating",
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(dataset),
        checkpoint=str(checkpoint_for(root, dataset)),
        pretrained=None,  # the checkpoints below are random-weight tiny detectors, not ones on the demo backbone
        overlays_top=2,
        overlays_random=2,
        k_shot=1,  # train_bmad.json's support set, resolved for the prompt bank; the small valid/ split holds 3
        **override,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    assert missing == [], f"evaluate_bmad.json lacks MONAI infer properties: {missing}"
    workflow.run()
    workflow.finalize()
    return json.loads((root / "eval_bmad" / "metrics.json").read_text())


def checkpoint_for(root: Path, dataset: Path) -> Path:
    """An untrained tiny detector with the dataset's single-category BMAD bank, as train_bmad.json builds it."""
    path = root / f"{dataset.name}.pt"
    if not path.exists():
        bank = load_bmad_prompt_bank(dataset.name)
        SignDrivenDetector.from_preset("tiny", prompt_bank=bank, categories=bank.labels).save(path)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tmp_path_factory.mktemp("bmad_bundle")


def test_brainmri_image_and_pixel_auroc(bundle):
    dataset = generate_bmad_like_dataset(bundle / "BrainMRI", num_train=5, num_normal=3, num_abnormal=3, size=48)
    metrics = run_protocol(bundle, dataset)
    rows = list(csv.DictReader((bundle / "eval_bmad" / "predictions.csv").open()))
    assert metrics["num_images"] == len(rows) == 6 and metrics["num_abnormal"] == 3
    expected = roc_auc_score([int(r["label"]) for r in rows], [float(r["image_score"]) for r in rows])
    assert metrics["image_auroc"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and metrics["pixel_auroc_error_bound"] < 1e-3
    assert 0.0 <= metrics["pixel_ap"] <= 1.0 and 0.0 < metrics["pixel_best_dice"] <= 1.0
    assert metrics["num_pixels"] == 6 * 64 * 64  # every pixel of every test image at the tiny model's 64 px
    run = metrics["run"]
    assert run["pixel_level"] is True and run["dataset"] == "BrainMRI" and len(run["memory_bank"]) == 4
    with open(bundle / "eval_bmad" / "predictions.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["file", "label", "image_score", "anomaly_map_max"]
    assert len({r["file"] for r in rows}) == 6  # one row per test image
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 0, 1, 1, 1]
    assert all(0.0 <= float(r["anomaly_map_max"]) <= 1.0 for r in rows)
    if "image_auroc_map_max" in metrics:
        by_map = roc_auc_score([int(r["label"]) for r in rows], [float(r["anomaly_map_max"]) for r in rows])
        assert metrics["image_auroc_map_max"] == pytest.approx(by_map, abs=1e-6)
    index = list(csv.DictReader((bundle / "eval_bmad" / "overlays" / "index.csv").open()))
    assert [r["kind"] for r in index] == ["top", "top", "random", "random"]
    # the overlays are ranked by the image scores of predictions.csv: the top two are its two highest, same values
    ranked = sorted(rows, key=lambda r: -float(r["image_score"]))
    top = [r for r in index if r["kind"] == "top"]
    assert [float(r["score"]) for r in top] == pytest.approx([float(r["image_score"]) for r in ranked[:2]], rel=1e-5)
    score_of = {r["file"]: float(r["image_score"]) for r in rows}
    for r in index:
        assert float(r["score"]) == pytest.approx(score_of[r["name"]], rel=1e-5), r
        assert r["label"] == ("abnormal" if int(next(p["label"] for p in rows if p["file"] == r["name"])) else "normal")
    assert all((bundle / "eval_bmad" / "overlays" / r["png"]).is_file() for r in index)
    assert (bundle / "eval_bmad" / "roc.png").is_file()


def test_image_level_only_dataset(bundle):
    dataset = generate_bmad_like_dataset(bundle / "OCT17", num_train=4, num_normal=2, num_abnormal=2, size=32)
    metrics = run_protocol(bundle, dataset, bmad_k_shot=2)
    assert "pixel_auroc" not in metrics and metrics["run"]["pixel_level"] is False
    assert "image and" not in metrics["run"]["pixel_level_reason"]
