"""configs/train_bmad.json end to end: 4-shot-style BMAD training with the pixel terms on a generated BMAD-like folder
(tiny model, 2 epochs), then configs/evaluate_bmad.json on the trained checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from sklearn.metrics import roc_auc_score

from sdmad_monai.data import generate_bmad_like_dataset
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = {"k_shot": 2, "max_epochs": 2, "val_interval": 1, "bmad_support_views": 1}


def workflow(names, root, dataset, run_id, **override):
    return ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in names],
        meta_file=str(CONFIGS / "metadata.json"),
        run_id=run_id,
        bundle_root=str(root),
        dataset_dir=str(dataset),
        **{**SMALL, **override},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bmad_train")
    dataset = generate_bmad_like_dataset(root / "BrainMRI", num_train=4, num_normal=3, num_abnormal=3, size=32)
    train = workflow(["train.json", "train_bmad.json"], root, dataset, "training")
    train.initialize()
    train.run()
    train.finalize()
    return root, dataset, train


def test_training_uses_the_valid_support_set_and_the_pixel_terms(trained):
    root, _, train = trained
    checkpoint = root / "models" / "model.pt"
    assert checkpoint.is_file()
    detector = SignDrivenDetector.load(checkpoint)
    assert detector.category_labels == ["abnormal"] and detector.prompt_bank.name == "bmad-brainmri"
    summary = json.loads((root / "models" / "training_summary.json").read_text())
    assert summary["best_validation_metric"] == "val_pixel_auroc"  # pixel-level dataset: selected on the maps
    assert "val_image_auroc" in summary["last_validation_metrics"]
    record = json.loads((root / ".sdmad_cache" / "bmad" / "bmad_training.json").read_text())
    support = [Path(item["image"]) for item in record["support"]]
    assert all(path.parts[-4] == "valid" for path in support)  # valid/<good|Ungood>/img/<file>; never test
    assert [item["label"] for item in record["support"]] == [[0.0]] * 2 + [[1.0]] * 2
    assert all(item["mask"] for item in record["support"][2:]) and record["pixel_level"] is True
    assert record["num_validation_images"] == 2 and record["num_validation_abnormal"] == 1
    # the pixel terms were in the loss, with every support image's mask valid (normal: empty mask)
    loss = train.parser.get_parsed_content("loss")
    assert loss.pixel_loss_weight == 4.0 and loss.components["pixel_images"] == 4.0
    assert loss.components["pixel_dice"] > 0.0
    # the adapters moved away from their initialisation
    layers = train.parser.get_parsed_content("image_adapter_layers")
    fresh = SignDrivenDetector.from_preset("tiny", prompt_bank=detector.prompt_bank, image_adapter_layers=layers)
    trained_state, fresh_state = detector.image_adapters.state_dict(), fresh.image_adapters.state_dict()
    assert any(not torch.equal(trained_state[k], fresh_state[k]) for k in trained_state)


def test_evaluate_bmad_on_the_trained_checkpoint(trained):
    root, dataset, _ = trained
    evaluate = workflow(
        ["train.json", "train_bmad.json", "evaluate_bmad.json"],
        root,
        dataset,
        "evaluating",
        overlays_top=1,
        overlays_random=1,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    metrics = json.loads((root / "eval_bmad" / "metrics.json").read_text())
    rows = list(csv.DictReader((root / "eval_bmad" / "predictions.csv").open()))
    assert metrics["num_images"] == len(rows) == 6  # the test split only
    assert all("test_" in row["file"] for row in rows)
    expected = roc_auc_score([int(r["label"]) for r in rows], [float(r["image_score"]) for r in rows])
    assert metrics["image_auroc"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert metrics["run"]["checkpoint"] == str(root / "models" / "model.pt")


def test_image_level_dataset_trains_without_the_pixel_terms(tmp_path):
    dataset = generate_bmad_like_dataset(tmp_path / "OCT17", num_train=2, num_normal=3, num_abnormal=3, size=16)
    train = workflow(["train.json", "train_bmad.json"], tmp_path, dataset, "training")
    parser = train.parser
    parser.parse()
    assert parser.get_parsed_content("pixel_loss_weight") == 0.0
    assert parser.get_parsed_content("train#trainer#prepare_batch").masks is False
    assert list(parser.get_parsed_content("validate#key_metric")) == ["val_image_auroc"]
    splits = parser.get_parsed_content("splits")
    assert splits.pixel_level is False and not any("mask" in item for item in splits.training)
    assert parser.get_parsed_content("validate#additional_metrics") is None
    assert parser.get_parsed_content("prompt_bank").name == "bmad-oct17"
