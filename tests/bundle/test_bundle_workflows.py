"""The MONAI bundle in configs/: train, evaluate and inference workflows on the tiny model and a small demo dataset,
MONAI's own checks (properties, verify_net_in_out, ckpt_export) and bad input stopping before training."""

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.prompts import PromptBankError
from sdmad_monai.workflows import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SMALL = {"demo_volumes": 24, "k_shot": 1, "max_epochs": 2, "val_interval": 1, "validation_fraction": 0.3}


def workflow(config_files, root, workflow_type=None, run_id="run", **override):
    files = [str(CONFIGS / name) for name in config_files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(root),
        **{**SMALL, **override},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    train = workflow(["train.json"], root, workflow_type="train")
    train.initialize()
    missing = train.check_properties()
    assert not missing, f"train.json lacks MONAI train properties: {missing}"
    train.run()
    train.finalize()
    return root


def test_training_writes_checkpoint_summary_and_logs(trained):
    checkpoint = trained / "models" / "model.pt"
    assert checkpoint.is_file() and checkpoint.stat().st_size < 2_000_000  # adapters + description only
    summary = json.loads((trained / "models" / "training_summary.json").read_text())
    assert summary["best_validation_metric"] == "val_mean_category_auroc"
    assert not (trained / "models" / "resume.pt").exists(), "a completed run must not leave a resume file"
    assert list((trained / "runs").glob("events.out.tfevents.*")), "TensorBoard logs expected"
    splits = json.loads((trained / ".sdmad_cache" / "splits.json").read_text())
    files = {name: {item["file"] for item in splits[name]} for name in ("training", "validation", "test")}
    assert not files["training"] & files["test"] and not files["validation"] & files["test"]
    detector = SignDrivenDetector.load(checkpoint)
    assert detector.category_labels == splits["categories"]


def test_evaluate_writes_the_three_protocols(trained):
    evaluate = workflow(["train.json", "evaluate.json"], trained, run_id="evaluating")
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    out = trained / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"clip", "sdmad_no_ss", "sdmad"}
    for values in metrics["variants"].values():
        assert {"image_auroc", "hamming_score", "subset_accuracy", "category_auroc", "mean_category_auroc"} <= set(values)
        assert 0.0 <= values["hamming_score"] <= 1.0
    splits = json.loads((trained / ".sdmad_cache" / "splits.json").read_text())
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(splits["test"]) == metrics["num_slices"]
    assert {"file", "slice", "sdmad:score:Craniotomy", "clip:prediction:Craniotomy"} <= set(rows[0])
    for name in ("roc.png", "similarity_heatmap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inference_on_volumes(trained, tmp_path):
    images = sorted((trained / ".sdmad_cache" / "demo" / "images").glob("*.nii.gz"))[:2]
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type=None,
        bundle_root=str(trained),
        input_files=[str(p) for p in images],
        output_dir=str(tmp_path / "inference"),
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    findings = json.loads((tmp_path / "inference" / "findings.json").read_text())
    assert [v["source"] for v in findings["volumes"]] == [str(p) for p in images]
    for volume in findings["volumes"]:
        assert [s["slice"] for s in volume["slices"]] == [0, 5, 10]
        assert len(volume["findings"]) == 6
    assert (tmp_path / "inference" / "slices.csv").read_text().count("\n") == 1 + 2 * 3


def test_verify_net_in_out_as_the_zoo_runs_it(tmp_path):
    # no override: metadata describes the default config's 3x64x64 input and 6 category scores
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        device="cpu",
        bundle_root=str(tmp_path),
    )


def test_ckpt_export_torchscript_gives_the_same_scores(trained, tmp_path):
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        key_in_ckpt="",
        use_trace=True,
        input_shape=[2, 3, 64, 64],
        bundle_root=str(tmp_path),
    )
    scripted = torch.jit.load(str(exported))
    detector = SignDrivenDetector.load(trained / "models" / "model.pt")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(scripted(images), detector(images), atol=1e-5)


@pytest.mark.parametrize(
    "override, error, message",
    [
        ({"dataset_dir": "/nonexistent/fastmri"}, DatasetError, "/nonexistent/fastmri"),
        ({"categories": ["Craniotomy", "Mass"]}, PromptBankError, "'Mass'"),
    ],
)
def test_bad_input_stops_before_training(tmp_path, override, error, message):
    train = workflow(["train.json"], tmp_path, **override)
    with pytest.raises(Exception) as info:
        train.initialize()
        train.run()
    chain, cause = [], info.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(e, error) and message in str(e) for e in chain), chain
    assert not (tmp_path / "models" / "model.pt").exists()


def test_paper_override_requires_real_data(tmp_path):
    train = workflow(["train.json", "paper.json"], tmp_path)
    with pytest.raises(Exception) as info:
        train.initialize()
        train.run()
    assert "needs real data" in repr(info.value) or "needs real data" in str(info.value.__cause__)
