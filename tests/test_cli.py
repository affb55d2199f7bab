"""The ``sdmad`` command line run as ``python -m sdmad_monai`` in a subprocess: success writes the SR, bad input
exits non-zero with a one-line error."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.networks import SignDrivenDetector

STUDY, AXIAL, CORONAL = "1.2.826.0.1.3680043.8.498.30", "1.2.826.0.1.3680043.8.498.31", "1.2.826.0.1.3680043.8.498.32"


def sdmad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdmad_monai", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sign selection kept no prompt")
        return SignDrivenDetector.from_preset("tiny").save(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_study")
    volume = np.random.default_rng(0).uniform(0, 1000, (32, 32, 12))
    write_dicom_series(volume, folder / "ax", "axial", STUDY, AXIAL, attributes={"BodyPartExamined": "BRAIN"})
    write_dicom_series(volume, folder / "cor", "coronal", STUDY, CORONAL)
    return folder


def test_process_folder(tmp_path, model, study):
    out = tmp_path / "out"
    run = sdmad("process_folder", "--input_dir", str(study), "--output_dir", str(out), "--model", str(model),
                "--slices", "0,5,10")
    assert run.returncode == 0, run.stderr
    sr = out / f"sdmad_sr_{AXIAL}.dcm"
    assert str(sr) in run.stdout.splitlines()
    assert sorted(p.name for p in out.iterdir()) == [sr.name, f"sdmad_sr_{AXIAL}.json"]
    assert pydicom.dcmread(sr).StudyInstanceUID == STUDY
    assert f"Series {CORONAL}" in run.stderr and "skipped" in run.stderr


def error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("sdmad: error:")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def test_failures(tmp_path, model, study):
    assert "Model checkpoint" in error_line(
        sdmad("process_folder", "--input_dir", str(study), "--output_dir", str(tmp_path), "--model", "missing.pt")
    )
    assert "Input folder" in error_line(
        sdmad("process_folder", "--input_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path),
              "--model", str(model))
    )
    line = error_line(
        sdmad("process_folder", "--input_dir", str(study / "cor"), "--output_dir", str(tmp_path / "out"),
              "--model", str(model))
    )
    assert "No series" in line and "orientation is coronal" in line
    assert not (tmp_path / "out").exists()
    bad_rules = tmp_path / "rules.json"
    bad_rules.write_text('{"modality": "MR"}')
    line = error_line(
        sdmad("process_folder", "--input_dir", str(study), "--output_dir", str(tmp_path / "out"),
              "--model", str(model), "--rules", str(bad_rules))
    )
    assert str(bad_rules) in line and "unknown key" in line


def test_no_pacs_command_yet():
    run = sdmad("--help")
    assert "process_folder" in run.stdout + run.stderr
    assert "pacs" not in (run.stdout + run.stderr).lower()
