"""configs/multi_gpu_train.json with torchrun: two processes, gloo backend on CPU (DDP, DistributedSampler)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
