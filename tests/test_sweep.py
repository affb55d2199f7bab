"""``sdmad sweep``: the skip / force / resume logic and a failing seed with a stand-in step runner, the command line,
and one small end-to-end sweep of 2 seeds through the real bundle (the summary itself: tests/test_sweep_summary.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sweep_metrics import strict_json, write_metrics

from sdmad_monai import sweep as sweep_module
from sdmad_monai.cli import _gather_overrides, main
from sdmad_monai.sweep import SweepError, parse_overrides, parse_seeds, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_parse_arguments():
    assert parse_seeds((0, 1, 2)) == [0, 1, 2] and parse_seeds(3) == [3] and parse_seeds("4, 5") == [4, 5]
    assert parse_seeds("[0, 1]") == [0, 1]
    for bad in ((0, 0), -1, "a", (), 1.5, True):
        with pytest.raises(SweepError):
            parse_seeds(bad)
    assert parse_overrides(["max_epochs=2", "slices=[0,5]", "train#dataloader#batch_size=4"]) == {
        "max_epochs": "2",
        "slices": "[0,5]",
        "train#dataloader#batch_size": "4",
    }
    assert parse_overrides({"max_epochs": 2, "dataset_dir": "/data", "pretrained": None}) == {
        "max_epochs": "2",
        "dataset_dir": "/data",
        "pretrained": "None",
    }
    assert parse_overrides("lr=1e-3") == {"lr": "1e-3"} and parse_overrides(None) == {}
    for bad, message in (
        (["seed=1"], "set for each seed"),
        (["work_dir=x"], "own work_dir"),
        (["k_shot"], "key=value"),
        (["a=1", "a=2"], "twice"),
        (["bad key=1"], "not a bundle config id"),
    ):
        with pytest.raises(SweepError, match=message):
            parse_overrides(bad)


def test_mistyped_override_is_refused_before_any_seed(tmp_path, configs):
    bundle = FakeBundle()
    with pytest.raises(SweepError, match="--k_shots: no such setting .*did you mean --k_shot"):
        run_sweep(
            "0", output_dir=tmp_path / "sweep", overrides=["k_shots=1"], echo=False, step_runner=bundle, **configs
        )
    with pytest.raises(SweepError, match="--max_epochs 'ten': expected an integer"):
        run_sweep(
            "0", output_dir=tmp_path / "sweep", overrides=["max_epochs=ten"], echo=False, step_runner=bundle, **configs
        )
    assert bundle.calls == [] and not (tmp_path / "sweep").exists()


def test_repeated_override_flags_are_gathered():
    argv = ["sweep", "--seeds", "0,1", "--override", "max_epochs=2", "--override=k_shot=1", "--force"]
    gathered = _gather_overrides(argv)
    assert gathered[:4] == ["sweep", "--seeds", "0,1", "--force"]
    assert gathered[4] == "--override" and json.loads(gathered[5]) == ["max_epochs=2", "k_shot=1"]
    assert _gather_overrides(["sweep", "--override", "a=1"]) == ["sweep", "--override", "a=1"]
    assert _gather_overrides(["process_folder", "--override", "a", "--override", "b"])[-1] == "b"


def test_failure_reason_is_the_root_cause(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        'Epoch [1/2]: 50%\rEpoch [1/2]: 100%\nTraceback (most recent call last):\n  File "x.py", line 1\n'
        "    raise DatasetError(\nsdmad_monai.workflows.DatasetError: dataset_dir /x does not exist\n\n"
        "The above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n"
        '  File "y.py", line 2\nRuntimeError: Failed to evaluate ConfigExpression:\n  "$expression"\n'
    )
    assert sweep_module._tail_reason(log) == "sdmad_monai.workflows.DatasetError: dataset_dir /x does not exist"
    log.write_text("Killed\n")
    assert sweep_module._tail_reason(log) == "Killed"


# --------------------------------------------------------------------------------------------- a stand-in bundle
class FakeBundle:
    """Step runner writing what the bundle's training / evaluation write; ``fail`` maps (seed, step) -> exit status."""

    def __init__(self, fail=None):
        self.calls: list[tuple[int, str]] = []
        self.fail = dict(fail or {})

    def __call__(self, step):
        self.calls.append((step.seed, step.name))
        assert f"--seed={step.seed}" in step.command and step.command[3:5] == ("run", step.name)
        assert f"--ckpt_dir={str(step.folder / 'models')!r}" in step.command
        assert f"--work_dir={str(step.folder / 'cache')!r}" in step.command
        if (step.seed, step.name) in self.fail:
            step.log_file.write_text("Traceback (most recent call last):\nValueError: broken on purpose\n")
            return self.fail[(step.seed, step.name)]
        step.log_file.write_text("ok\n")
        if step.name == "training":
            cache = step.folder / "cache"
            kshot = cache / f"kshot_1shot_seed{step.seed}.json"
            kshot.write_text(json.dumps({"seed": step.seed, "support": [{"file": f"vol{step.seed}", "slice": 5}]}))
            (cache / "splits.json").write_text(json.dumps({"files": {"kshot": str(kshot)}}))
            (step.folder / "models").mkdir(exist_ok=True)
            (step.folder / "models" / "model.pt").write_bytes(b"weights")
            (step.folder / "models" / "training_summary.json").write_text('{"best_validation_value": 0.5}')
        else:
            write_metrics(step.folder / "eval" / "metrics.json", step.seed)
        return 0


@pytest.fixture()
def configs(tmp_path):
    train, evaluate = tmp_path / "train.json", tmp_path / "evaluate.json"
    train.write_text('{"k_shot": 4, "max_epochs": 40}')  # the overrides below are checked against these keys
    evaluate.write_text('{"eval": 1}')
    return {"config_file": str(train), "evaluate_config": str(evaluate)}


def test_skip_force_and_changed_settings(tmp_path, configs):
    out = tmp_path / "sweep"
    bundle = FakeBundle()
    result = run_sweep("0,1", output_dir=out, overrides=["k_shot=1"], echo=False, step_runner=bundle, **configs)
    assert [o.status for o in result.seeds] == ["done", "done"] and not result.failed
    assert bundle.calls == [(0, "training"), (0, "evaluating"), (1, "training"), (1, "evaluating")]
    assert json.loads((out / "seed1" / "kshot_1shot_seed1.json").read_text())["seed"] == 1
    assert (out / "seed0" / "training_summary.json").is_file()
    assert (out / "seed0" / "cache" / "demo").is_symlink()
    record = json.loads((out / "seed0" / "sweep_seed.json").read_text())
    assert record["status"] == "done" and record["settings"]["overrides"] == {"k_shot": "1"}
    assert "--k_shot=1" in record["steps"]["evaluating"]["command"]

    bundle.calls.clear()
    again = run_sweep((0, 1), output_dir=out, overrides={"k_shot": 1}, echo=False, step_runner=bundle, **configs)
    assert bundle.calls == [] and [o.status for o in again.seeds] == ["skipped", "skipped"]
    assert again.summary["seeds"] == [0, 1]

    run_sweep((0, 1), output_dir=out, overrides={"k_shot": 1}, force=True, echo=False, step_runner=bundle, **configs)
    assert bundle.calls == [(0, "training"), (0, "evaluating"), (1, "training"), (1, "evaluating")]

    bundle.calls.clear()  # other settings: seed 0 starts again from empty folders, nothing of the old run is left
    (out / "seed0" / "models" / "resume.pt").write_bytes(b"stale")
    run_sweep(0, output_dir=out, overrides={"k_shot": 2}, echo=False, step_runner=bundle, **configs)
    assert bundle.calls == [(0, "training"), (0, "evaluating")]
    assert not (out / "seed0" / "models" / "resume.pt").exists()

    bundle.calls.clear()  # an edited config file is other settings too
    Path(configs["evaluate_config"]).write_text('{"eval": 2}')
    run_sweep(0, output_dir=out, overrides={"k_shot": 2}, echo=False, step_runner=bundle, **configs)
    assert bundle.calls == [(0, "training"), (0, "evaluating")]


def test_failed_evaluation_resumes_without_training_again(tmp_path, configs):
    out = tmp_path / "sweep"
    bundle = FakeBundle(fail={(0, "evaluating"): 1})
    result = run_sweep(0, output_dir=out, echo=False, step_runner=bundle, **configs)
    assert [o.status for o in result.failed] == ["failed"]
    assert "evaluation failed (exit status 1): ValueError: broken on purpose" in result.failed[0].error
    bundle.fail.clear()
    bundle.calls.clear()
    result = run_sweep(0, output_dir=out, echo=False, step_runner=bundle, **configs)
    assert bundle.calls == [(0, "evaluating")] and not result.failed


def test_a_failing_seed_does_not_sink_the_others(tmp_path, configs):
    out = tmp_path / "sweep"
    bundle = FakeBundle(fail={(1, "training"): 3})

    def runner(step):
        if step.seed == 3 and step.name == "evaluating":
            raise OSError("no python here")
        return bundle(step)

    result = run_sweep("0,1,3,4", output_dir=out, echo=False, step_runner=runner, **configs)
    assert [o.status for o in result.seeds] == ["done", "failed", "failed", "done"]
    assert [(o.seed, o.error.split(";")[0]) for o in result.failed] == [
        (1, "training failed (exit status 3): ValueError: broken on purpose"),
        (3, "evaluation could not run: OSError: no python here"),
    ]
    assert {(0, "evaluating"), (4, "evaluating")} <= set(bundle.calls) and (1, "evaluating") not in bundle.calls
    summary = strict_json(out / "summary.json")
    assert summary["seeds"] == [0, 4] and summary["seeds_requested"] == [0, 1, 3, 4]
    assert set(summary["failed"]) == {"1", "3"} and "broken on purpose" in summary["failed"]["1"]
    assert summary["per_seed"]["1"]["status"] == "failed"
    assert summary["variants"]["sdmad"]["metrics"]["image_auroc"]["n"] == 2
    assert json.loads((out / "seed1" / "sweep_seed.json").read_text())["status"] == "failed"


def test_command_line_reports_failed_seeds(tmp_path, configs, monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "run_bundle_step", FakeBundle(fail={(1, "training"): 1}))
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "sweep",
                "--seeds",
                "0,1,3",
                "--output_dir",
                str(out),
                "--config_file",
                configs["config_file"],
                "--evaluate_config",
                configs["evaluate_config"],
                "--override",
                "max_epochs=2",
                "--override",
                "k_shot=1",
            ]
        )
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("sdmad: error:")]
    assert len(lines) == 1 and "1 of 3 seed(s) failed: seed 1: training failed" in lines[0]
    assert captured.out.startswith("| Variant |") and "2 seeds (0, 3)" in captured.out
    assert json.loads((out / "seed0" / "sweep_seed.json").read_text())["settings"]["overrides"] == {
        "max_epochs": "2",
        "k_shot": "1",
    }
    with pytest.raises(SystemExit):
        main(["sweep", "--seeds", "0", "--output_dir", str(out), "--override", "output_dir=x"])
    assert "sdmad: error: --override output_dir=... is not allowed" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- end to end
def test_two_seeds_end_to_end(tmp_path):
    """Two seeds through the real bundle, tiny settings: per-seed folders, different k-shot lists, summary files."""
    out = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "sdmad_monai", "sweep", "--seeds", "0,1", "--output_dir", str(out), "--quiet",
        "--override", "demo_volumes=24", "--override", "k_shot=1", "--override", "max_epochs=2",
        "--override", "val_interval=1", "--override", "validation_fraction=0.3",
    ]  # fmt: skip
    start = time.monotonic()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=540)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-4000:]
    print(f"2-seed sweep: {elapsed:.0f} s")
    supports = {}
    for seed in (0, 1):
        folder = out / f"seed{seed}"
        for name in ("models/model.pt", "eval/metrics.json", "training_summary.json", "train.log", "evaluate.log"):
            assert (folder / name).is_file(), name
        assert list((folder / "runs").glob("events.out.tfevents.*"))
        kshot = json.loads((folder / f"kshot_1shot_seed{seed}.json").read_text())
        assert kshot["seed"] == seed
        supports[seed] = [(item["file"], item["slice"]) for item in kshot["support"]]
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        assert metrics["run"]["splits_file"] == str(folder / "cache" / "splits.json")
    assert supports[0] != supports[1], "each seed must draw its own support set"
    summary = strict_json(out / "summary.json")
    assert summary["seeds"] == [0, 1] and not summary["failed"]
    assert list(summary["variants"]) == ["clip", "sdmad_no_ss", "sdmad", "baseline_all_negative"]
    seed_metrics = [json.loads((out / f"seed{s}" / "eval" / "metrics.json").read_text()) for s in (0, 1)]
    for variant in ("clip", "sdmad_no_ss", "sdmad"):
        stats = summary["variants"][variant]["metrics"]["image_auroc"]
        seed_values = [m["variants"][variant]["image_auroc"] for m in seed_metrics]
        assert stats["n"] == 2 and stats["mean"] == pytest.approx(np.mean(seed_values))
    baseline = summary["variants"]["baseline_all_negative"]["metrics"]["hamming_score"]
    assert baseline["mean"] == pytest.approx(
        np.mean([m["baselines"]["all_negative"]["hamming_score"] for m in seed_metrics])
    )
    assert (out / "summary.csv").read_text().startswith("variant,metric,mean,std,n,seeds,values\n")
    assert (out / "summary.png").stat().st_size > 10_000
    assert run.stdout == (out / "summary.md").read_text() and "| sdmad |" in run.stdout
    assert "seed 2/2 (seed=1): training" in run.stderr
