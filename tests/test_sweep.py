"""``sdmad sweep``: aggregation over hand-made metrics.json files (numbers against numpy, NaN, valid JSON, CSV), the
skip / force / resume logic and a failing seed with a stand-in step runner, the command line, and one small
end-to-end sweep of 2 seeds through the real bundle."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdmad_monai import sweep as sweep_module
from sdmad_monai.cli import _gather_overrides, main
from sdmad_monai.sweep import SweepError, parse_overrides, parse_seeds, run_sweep
from sdmad_monai.sweep_summary import aggregate, metrics_complete, summary_csv, summary_markdown, write_summary

ROOT = Path(__file__).resolve().parents[1]
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
    return {"num_slices": 30, "categories": CATEGORIES, "variants": variants, "run": {"checkpoint": "model.pt"},
            "note": "demo data: figures show the workflow, not clinical performance"}


def write_metrics(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_document(seed), indent=2))  # json.dumps writes NaN, like the report
    return path


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture()
def summary(tmp_path):
    seeds = sorted(VALUES)
    documents = {s: metrics_complete(write_metrics(tmp_path / f"seed{s}" / "metrics.json", s)) for s in seeds}
    return aggregate(documents)


def test_aggregate_matches_numpy(summary):
    assert summary["seeds"] == [0, 1, 3]
    assert summary["metrics"] == ["image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"]
    assert list(summary["variants"]) == ["clip", "sdmad"] and summary["categories"] == CATEGORIES
    for variant in ("clip", "sdmad"):
        for index, metric in enumerate(("image_auroc", "hamming_score", "subset_accuracy")):
            values = np.array([VALUES[s][variant][index] for s in (0, 1, 3)])
            stats = summary["variants"][variant]["metrics"][metric]
            assert stats["mean"] == float(np.mean(values)) and stats["std"] == float(np.std(values, ddof=1))
            assert stats["n"] == 3 and stats["per_seed"] == {"0": values[0], "1": values[1], "3": values[2]}
    # NaN left out of a category's mean and count
    dural = summary["variants"]["sdmad"]["category_auroc"]["Dural thickening"]
    assert dural["n"] == 2 and dural["per_seed"] == {"0": 0.75, "1": None, "3": 0.70}
    assert dural["mean"] == float(np.mean([0.75, 0.70])) and dural["std"] == float(np.std([0.75, 0.70], ddof=1))
    small_vessel = summary["variants"]["sdmad"]["category_auroc"][CATEGORIES[2]]
    assert small_vessel["n"] == 2 and small_vessel["mean"] == float(np.mean([0.90, 0.95]))
    undefined = summary["variants"]["clip"]["category_auroc"]["Dural thickening"]
    assert undefined == {"mean": None, "std": None, "n": 0, "per_seed": {"0": None, "1": None, "3": None}}
    assert "ddof=1" in summary["std"]
    assert summary["notes"] == ["demo data: figures show the workflow, not clinical performance"]  # once, not per seed


def test_one_defined_value_has_no_std():
    document = metrics_document(0)
    stats = aggregate({7: document})["variants"]["sdmad"]["metrics"]["image_auroc"]
    assert stats == {"mean": 0.81, "std": None, "n": 1, "per_seed": {"7": 0.81}}
    assert aggregate({7: None})["seeds"] == []


def test_summary_files(tmp_path, summary):
    summary = {**summary, "settings": {"overrides": {"k_shot": "1"}}}
    files = write_summary(tmp_path, summary)
    assert set(files) == {"json", "csv", "md", "png"}
    assert strict_json(files["json"])["variants"]["clip"]["category_auroc"]["Dural thickening"]["mean"] is None
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["csv"].read_text() == summary_csv(summary)
    rows = {(r["variant"], r["metric"]): r for r in csv.DictReader(files["csv"].open())}
    assert len(rows) == 2 * (4 + len(CATEGORIES))
    row = rows[("sdmad", "image_auroc")]
    assert float(row["mean"]) == float(np.mean([0.81, 0.77, 0.85]))
    assert float(row["std"]) == float(np.std([0.81, 0.77, 0.85], ddof=1))
    assert row["n"] == "3" and row["seeds"] == "0;1;3"
    assert [float(v) for v in row["values"].split(";")] == [0.81, 0.77, 0.85]
    row = rows[("sdmad", "category_auroc/Dural thickening")]
    assert row["n"] == "2" and row["values"].split(";")[1] == "nan"
    markdown = files["md"].read_text()
    assert markdown == summary_markdown(summary)
    assert markdown.startswith("| Variant | Image AUROC | Hamming score | Subset accuracy | Mean category AUROC |")
    mean, std = np.mean([0.81, 0.77, 0.85]), np.std([0.81, 0.77, 0.85], ddof=1)
    assert f"| sdmad | {mean:.3f} ± {std:.3f} |" in markdown
    assert "ddof=1" in markdown and "3 seeds (0, 1, 3)" in markdown and "k_shot=1" in markdown
    assert markdown.endswith("Note: demo data: figures show the workflow, not clinical performance.\n")


def test_parse_arguments():
    assert parse_seeds((0, 1, 2)) == [0, 1, 2] and parse_seeds(3) == [3] and parse_seeds("4, 5") == [4, 5]
    assert parse_seeds("[0, 1]") == [0, 1]
    for bad in ((0, 0), -1, "a", (), 1.5, True):
        with pytest.raises(SweepError):
            parse_seeds(bad)
    assert parse_overrides(["max_epochs=2", "slices=[0,5]", "train#dataloader#batch_size=4"]) == {
        "max_epochs": "2", "slices": "[0,5]", "train#dataloader#batch_size": "4"
    }
    assert parse_overrides({"max_epochs": 2, "dataset_dir": "/data", "pretrained": None}) == {
        "max_epochs": "2", "dataset_dir": "/data", "pretrained": "None"
    }
    assert parse_overrides("lr=1e-3") == {"lr": "1e-3"} and parse_overrides(None) == {}
    for bad, message in ((["seed=1"], "set for each seed"), (["work_dir=x"], "own work_dir"), (["k_shot"], "key=value"),
                         (["a=1", "a=2"], "twice"), (["bad key=1"], "not a bundle config id")):
        with pytest.raises(SweepError, match=message):
            parse_overrides(bad)


def test_mistyped_override_is_refused_before_any_seed(tmp_path, configs):
    bundle = FakeBundle()
    with pytest.raises(SweepError, match="--k_shots: no such setting .*did you mean --k_shot"):
        run_sweep("0", output_dir=tmp_path / "sweep", overrides=["k_shots=1"], echo=False, step_runner=bundle, **configs)
    with pytest.raises(SweepError, match="--max_epochs 'ten': expected an integer"):
        run_sweep("0", output_dir=tmp_path / "sweep", overrides=["max_epochs=ten"], echo=False, step_runner=bundle,
                  **configs)
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
        "Epoch [1/2]: 50%\rEpoch [1/2]: 100%\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
        "    raise DatasetError(\nsdmad_monai.workflows.DatasetError: dataset_dir /x does not exist\n\n"
        "The above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n"
        "  File \"y.py\", line 2\nRuntimeError: Failed to evaluate ConfigExpression:\n  \"$expression\"\n"
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
        main(["sweep", "--seeds", "0,1,3", "--output_dir", str(out), "--config_file", configs["config_file"],
              "--evaluate_config", configs["evaluate_config"], "--override", "max_epochs=2", "--override", "k_shot=1"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("sdmad: error:")]
    assert len(lines) == 1 and "1 of 3 seed(s) failed: seed 1: training failed" in lines[0]
    assert captured.out.startswith("| Variant |") and "2 seeds (0, 3)" in captured.out
    assert json.loads((out / "seed0" / "sweep_seed.json").read_text())["settings"]["overrides"] == {
        "max_epochs": "2", "k_shot": "1"
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
    assert baseline["mean"] == pytest.approx(np.mean([m["baselines"]["all_negative"]["hamming_score"] for m in seed_metrics]))
    assert (out / "summary.csv").read_text().startswith("variant,metric,mean,std,n,seeds,values\n")
    assert (out / "summary.png").stat().st_size > 10_000
    assert run.stdout == (out / "summary.md").read_text() and "| sdmad |" in run.stdout
    assert "seed 2/2 (seed=1): training" in run.stderr
