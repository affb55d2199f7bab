"""Bundle overrides are checked against the config files before any work, and a bundle command that fails on bad
input ends with one line (the real ``python -m monai.bundle run`` in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdmad_monai.errors import innermost_user_error, running_bundle_command
from sdmad_monai.overrides import BundleOptionError, check_command_line_overrides, check_overrides

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "configs" / "train.json")
EVALUATE = [TRAIN, str(ROOT / "configs" / "evaluate.json")]
LAUNCHER = str(Path("site-packages") / "monai" / "bundle" / "__main__.py")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_epoch": 2}, "--max_epoch: no such setting in " + TRAIN + "; did you mean --max_epochs?"),
        ({"learnin_rate": 5}, "did you mean --learning_rate?"),
        ({"max_epochs": "abc"}, "--max_epochs 'abc': expected an integer (the default is 40)"),
        ({"text_adapter": "false"}, "--text_adapter 'false': expected True or False"),
        ({"learning_rate": "fast"}, "expected a number"),
        ({"slices": 5}, "expected a list"),
        ({"train#dataloader#batch_siz": 4}, "did you mean --train#dataloader#batch_size?"),
    ],
)
def test_bad_overrides_are_refused_with_the_closest_name(overrides, message):
    with pytest.raises(BundleOptionError) as info:
        check_overrides(TRAIN, overrides)
    assert message in str(info.value)


def test_good_overrides_pass():
    check_overrides(
        TRAIN,
        {
            "max_epochs": 2,
            "learning_rate": 1,
            "text_adapter": False,
            "slices": [0, 5],
            "dataset_dir": "/data",
            "train#dataloader#batch_size": 4,
            "device": "$torch.device('cpu')",
        },
    )
    check_overrides(EVALUATE, {"eval_split": "validation", "max_epochs": 3})
    check_overrides(str(ROOT / "configs" / "inference.json"), {"slices": None, "anomaly_maps": False})
    with pytest.raises(BundleOptionError, match="eval_dir"):
        check_overrides(TRAIN, {"eval_dirr": "x"})


def test_command_line_is_read_as_monai_bundle_reads_it():
    argv = [
        LAUNCHER,
        "run",
        "training",
        "--config_file",
        TRAIN,
        "--max_epochs",
        "2",
        "--text_adapter",
        "False",
        "--logging_file",
        "configs/logging.conf",
        "--slices",
        "[0,5]",
    ]
    assert running_bundle_command(argv)
    check_command_line_overrides(argv)
    with pytest.raises(BundleOptionError, match="--max_epoch:"):
        check_command_line_overrides(argv[:5] + ["--max_epoch=2"])
    with pytest.raises(BundleOptionError, match="--eval_splt:"):
        check_command_line_overrides(
            [LAUNCHER, "run", "evaluating", "--config_file", str(EVALUATE), "--eval_splt", "x"]
        )
    # not a bundle command line (pytest itself, a ConfigWorkflow built in Python): nothing is checked
    assert not running_bundle_command(["pytest", "run", "--max_epoch", "2"])
    check_command_line_overrides(["pytest", "run", "--config_file", TRAIN, "--max_epoch", "2"])


def test_innermost_user_error_is_found_under_monai_wrappers():
    try:
        try:
            raise FileNotFoundError("Dataset /data/x does not exist")
        except FileNotFoundError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression: '$...'") from error
    except RuntimeError as wrapped:
        assert str(innermost_user_error(wrapped)) == "Dataset /data/x does not exist"
    assert innermost_user_error(KeyError("bug")) is None


def test_bundle_command_with_a_mistyped_option_ends_in_one_line(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            TRAIN,
            "--bundle_root",
            str(tmp_path),
            "--max_epoch",
            "2",
            "--learnin_rate",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("sdmad: error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "--max_epoch: no such setting" in errors[0] and "did you mean --max_epochs?" in errors[0]
    log = Path(errors[0].split("full traceback: ")[1].split(";")[0])
    assert "Traceback" in log.read_text()
    log.unlink()
    assert not (tmp_path / ".sdmad_cache").exists()  # refused before the demo data was generated
