"""configs/multi_gpu_train.json, multi_gpu_evaluate.json and multi_gpu_inference.json with torchrun: two processes,
gloo backend on CPU (DDP, DistributedSampler), compared with one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdmad_monai.networks import SignDrivenDetector

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_training_on_cpu(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
        "-m", "monai.bundle", "run", "training",
        "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
        "--bundle_root", str(tmp_path),
        "--demo_volumes", "24", "--k_shot", "1", "--max_epochs", "2", "--val_interval", "1",
        "--validation_fraction", "0.3",
    ]  # fmt: skip
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = tmp_path / "models" / "model.pt"
    assert checkpoint.is_file()
    state = SignDrivenDetector.read_checkpoint(checkpoint)
    assert not any(key.startswith("module.") for key in state), "DDP prefix leaked into the checkpoint"
    SignDrivenDetector.load(checkpoint)
    summary = json.loads((tmp_path / "models" / "training_summary.json").read_text())
    assert summary["best_validation_metric"] == "val_mean_category_auroc"
    assert not (tmp_path / "models" / "resume.pt").exists()


ENVIRONMENT = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small demo bundle trained in one process (the checkpoint the distributed runs load)."""
    from monai.bundle import ConfigWorkflow

    root = tmp_path_factory.mktemp("trained")
    train = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "train.json"), workflow_type="train", bundle_root=str(root),
        demo_volumes=24, k_shot=1, max_epochs=1, val_interval=1, validation_fraction=0.3,
    )  # fmt: skip
    train.initialize()
    train.run()
    train.finalize()
    return root


def files_under(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_process_evaluation_gathers_every_slice(trained):
    import csv
    import io

    base = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--bundle_root", str(trained)]
    configs = "['configs/train.json','configs/evaluate.json'"
    one = base + ["--config_file", configs + "]", "--eval_dir", str(trained / "eval_one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29521"] + base[1:] + [
        "--config_file", configs + ",'configs/multi_gpu_evaluate.json']", "--eval_dir", str(trained / "eval_two")
    ]  # fmt: skip
    for command in (one, two):
        result = subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    a, b = files_under(trained / "eval_one"), files_under(trained / "eval_two")
    assert a.keys() == b.keys() and any(p.suffix == ".png" for p in a)
    assert json.loads(a[Path("metrics.json")]) == json.loads(b[Path("metrics.json")])  # on all slices, exactly
    rows_a, rows_b = (list(csv.reader(io.StringIO(f[Path("predictions.csv")].decode()))) for f in (a, b))
    assert len(rows_a) == len(rows_b) and rows_a[0] == rows_b[0]
    for x, y in zip(rows_a[1:], rows_b[1:]):  # same slices in the same order; scores equal up to the float
        assert x[:2] == y[:2]  # rounding of other batch compositions (a few 1e-8)
        assert [float(v) for v in x[2:]] == pytest.approx([float(v) for v in y[2:]], abs=1e-6)
    overlays = [p for p in a if p.parts[0] == "overlays"]
    assert overlays and all(a[p] == b[p] for p in overlays if p.suffix == ".csv")


def test_two_process_inference_writes_what_one_process_writes(trained, assert_same_outputs):
    import nibabel as nib
    import numpy as np

    tmp_path = trained
    volumes = sorted((tmp_path / ".sdmad_cache" / "demo" / "images").glob("*.nii.gz"))[:5]
    blank = tmp_path / "blank.nii.gz"  # one that cannot be assessed: listed once, by process 0
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 16), dtype=np.float32), np.eye(4)), blank)
    inputs = str([str(v) for v in volumes[:2]] + [str(blank)] + [str(v) for v in volumes[2:]])
    runs = {
        "one": [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json"],
        "two": [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
            "-m", "monai.bundle", "run", "inferring",
            "--config_file", "['configs/inference.json','configs/multi_gpu_inference.json']",
        ],
    }  # fmt: skip
    for name, command in runs.items():
        command = command + [
            "--bundle_root",
            str(tmp_path),
            "--input_files",
            inputs,
            "--output_dir",
            str(tmp_path / name),
            "--overlays_top",
            "3",
            "--overlays_random",
            "2",
        ]
        result = subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0, "a volume that cannot be assessed must fail the run"
        assert "1 of 6 volume(s) could not be processed" in result.stdout + result.stderr
    files = {name: files_under(tmp_path / name) for name in runs}
    # the run's gallery: 5 of the 15 slices, chosen from both processes' candidates exactly as by one process
    assert len([p for p in files["one"] if p.suffix == ".png"]) == 5
    assert_same_outputs(tmp_path / "two", tmp_path / "one")
    document = json.loads(files["two"][Path("findings.json")])
    assert [v["source"] for v in document["volumes"]] == [str(v) for v in volumes]
    assert [f["source"] for f in document["failed"]] == [str(blank)]
