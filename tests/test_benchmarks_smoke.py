"""Smoke test of the benchmark scripts in benchmarks/: each CPU script's main() on the tiny model with tiny sizes
(``--smoke``), checking the JSON result it writes; the GPU-only script must refuse clearly without CUDA."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _run(name: str, tmp_path: Path, *extra: str) -> dict:
    result = _load(name).main(["--smoke", "--output", str(tmp_path), *extra])
    written = json.loads((tmp_path / f"{name}_smoke.json").read_text())
    assert written["benchmark"] == name == result["benchmark"]
    for key in ("command", "machine", "settings", "summary"):
        assert key in written, key
    for key in ("cpu_count", "torch_threads", "versions", "date_utc"):
        assert key in written["machine"], key
    return written


def test_bench_inference_smoke(tmp_path):
    result = _run("bench_inference", tmp_path)
    (model,) = result["models"]
    assert model["model"] == "sdmad-tiny" and 0 < model["flops"]["adapter_flop_fraction"] < 1
    for row in model["rows"]:
        for key in ("detector_ms_per_batch", "ratio_vs_adapters_disabled", "ratio_vs_bare", "text_calls_during_timing"):
            assert key in row, key
        assert sum(row["text_calls_during_timing"].values()) == 0  # text features are not recomputed per batch


def test_bench_inference_outputs_smoke(tmp_path):
    result = _run("bench_inference_outputs", tmp_path, "--formats", "nii.gz", "dicom", "h5")
    assert [(r["format"], r["slices"], r["volumes"]) for r in result["summary"]] == [
        ("nii.gz", "fastmri", 7), ("dicom", "fastmri", 7), ("h5", "fastmri", 7)]  # fmt: skip
    row = result["summary"][1]
    assert set(row["seconds_per_volume"]) == {"scores", "maps", "default", "per_volume"}
    assert all(v > 0 for v in row["seconds_per_volume"].values())  # figures only: a smoke run times nothing reliably
    assert {
        "default_over_maps",
        "overlay_share_of_default",
        "volumes_per_second_default",
        "per_volume_over_maps",
        "overlay_share_of_per_volume",
    } <= set(row)


def test_bench_volume_pipeline_smoke(tmp_path):
    result = _run("bench_volume_pipeline", tmp_path, "--formats", "nii", "nii.gz", "h5")
    assert {(r["format"], r["policy"]) for r in result["rows"]} == {
        (f, p) for f in ("nii", "nii.gz", "h5") for p in ("indices", "all")
    }
    for row in result["rows"]:
        for key in ("lazy_read_ms", "full_read_ms", "pipeline_ms", "model_ms", "pipeline_over_model"):
            assert row[key] > 0, key
    assert {r["num_slices"] for r in result["rows"]} == {3, 12}


def test_bench_volume_pipeline_writes_a_readable_dicom_series(tmp_path):
    bench = _load("bench_volume_pipeline")
    from sdmad_monai.transforms import LoadSlices

    args = bench.parse_args(["--smoke", "--formats", "dicom"])
    paths = bench.write_volumes(tmp_path, args)
    slices = LoadSlices("axial", indices=[0, 5, 10])(paths["dicom"])
    assert [tuple(s.shape) for s in slices] == [(1, 32, 32)] * 3


def test_bench_training_step_smoke(tmp_path):
    result = _run("bench_training_step", tmp_path, "--activation-checkpointing", "off", "on")
    assert set(result["modes"]) == {"cached", "full"}
    assert set(result["runs"]) == {"cached", "full", "cached+ckpt", "full+ckpt"}
    assert result["runs"]["cached+ckpt"]["activation_checkpointing"] is True
    checkpointing = result["summary"]["activation_checkpointing"]["cached"]
    # the checkpointed frozen blocks keep only their inputs for backward
    assert 0 < checkpointing["saved_for_backward_mib_on"] < checkpointing["saved_for_backward_mib_off"]
    assert result["modes"]["cached"]["text_calls_per_step"] == {"last_block_only": 1.0, "full_encode_text": 0.0}
    assert result["modes"]["full"]["text_calls_per_step"] == {"last_block_only": 0.0, "full_encode_text": 1.0}
    for key in ("step_ms_cached", "step_ms_full", "speedup_full_over_cached", "peak_rss_mib_cached"):
        assert key in result["summary"], key


def test_bench_scale_smoke(tmp_path):
    result = _run("bench_scale", tmp_path)
    assert [r["size"] for r in result["rows"]] == [40, 80]
    assert [r["num_slices_reported"] for r in result["rows"]] == [40, 80]
    for key in ("time_ratio", "peak_rss_ratio", "size_ratio"):
        assert key in result["summary"], key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_scripts_refuse_without_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit) as refusal:
        _load("bench_gpu_throughput").main(["--output", str(tmp_path)])
    assert refusal.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refusal:
        _load("bench_training_step").main(["--device", "cuda", "--output", str(tmp_path)])
    assert "no CUDA GPU" in str(refusal.value.code)
    assert not list(tmp_path.iterdir())


def test_gpu_throughput_refuses_cpu_device(tmp_path):
    with pytest.raises(SystemExit) as refusal:
        _load("bench_gpu_throughput").main(["--device", "cpu", "--output", str(tmp_path)])
    assert refusal.value.code == 2


def test_probe_demo_prior_smoke(tmp_path):
    result = _run("probe_demo_prior", tmp_path)
    (row,) = result["summary"]
    assert row["pretrained"] == "none" and result["settings"]["slices_total"] == 72  # 24 volumes x slices 0/5/10
    for key in ("zero_shot_all_prompts", "zero_shot_sign_selection", "probe", "headroom"):
        assert len(row[key]) == 6, key
    for probe, zero_shot, headroom in zip(row["probe"], row["zero_shot_all_prompts"], row["headroom"]):
        if probe is None or zero_shot is None:  # too few positive volumes for the folds, or a single class
            assert headroom is None
        else:
            assert 0.0 <= probe <= 1.0 and 0.0 <= zero_shot <= 1.0
            assert abs(headroom - (probe - zero_shot)) < 1e-9
    (k_row,) = result["k_shot_probe"]  # smoke: k = 1, seed 0, on the bundle's own k-shot split
    assert (k_row["k_shot"], k_row["seed"]) == (1, 0) and k_row["training_slices"] > 0 and k_row["test_slices"] > 0
    assert len(k_row["zero_shot"]) == len(k_row["k_shot_probe"]) == 6
    assert any(p is not None for p in row["probe"])


def test_probe_training_ranking_smoke(tmp_path):
    result = _run("probe_training_ranking", tmp_path)
    (run,) = result["runs"]
    assert [row["epoch"] for row in run["history"]] == [0, 1, 2] and run["history"][0]["loss"] is None
    assert run["support_slices"] > 0 and run["test_slices"] > 0
    for row in run["history"]:
        for split in ("support", "test"):
            assert 0.0 <= row[split]["hamming"] <= 1.0 and 0.0 <= row[split]["subset_accuracy"] <= 1.0
            assert len(row[split]["category_auroc_per_category"]) == 6
    assert all(row["loss"] > 0 for row in run["history"][1:])
    (summary,) = result["summary"]
    assert summary["support_category_auroc_before"] == run["history"][0]["support"]["category_auroc"]


def test_probe_departures_smoke(tmp_path):
    result = _run("probe_departures", tmp_path)
    assert [row["variant"] for row in result["summary"]] == ["paper", "ranking", "ranking_text_only"]
    for run in result["runs"]:
        assert [row["epoch"] for row in run["history"]] == [0, 2]
        assert run["best"] in run["history"] and run["zero_shot"]["epoch"] == 0
    for row in result["summary"]:
        (run,) = [r for r in result["runs"] if r["variant"] == row["variant"]]
        assert row["mean_gain"] == run["best"]["test_category_auroc"] - run["zero_shot"]["test_category_auroc"]
