"""Bundle overrides are checked against the config files before any work, and a bundle command that fails on bad
input ends with one line (the real ``python -m monai.bundle run`` in a subprocess). The one-line errors and the
tracebacks of sdmad_monai.errors are redacted, whatever the exception."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sdmad_monai.errors import (
    _write_traceback,
    innermost_user_error,
    install_bundle_error_hook,
    one_line,
    register_secrets,
    running_bundle_command,
)
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


# ------------------------------------------------------------------------------------------ redaction of errors
PASSWORD = "pw-" + secrets.token_urlsafe(12)
TOKEN = "tok." + secrets.token_urlsafe(24)


def unexpected_errors() -> list[BaseException]:
    """Exceptions no code of the package expects, quoting secrets: a requests ConnectionError with user info in the
    URL, a header dump with a Bearer token, and an OSError quoting a secret registered by the credentials loader."""
    registered = secrets.token_urlsafe(16)
    register_secrets(registered)
    return [
        requests.ConnectionError(
            f"HTTPSConnectionPool(host='pacs.example.org', port=443): Max retries exceeded with url "
            f"https://alice:{PASSWORD}@pacs.example.org/dicom-web/studies (Caused by NewConnectionError)"
        ),
        KeyError(f"request failed; headers {{'Accept': 'application/dicom+json', 'Authorization': 'Bearer {TOKEN}'}}"),
        RuntimeError(f"upstream said:\n  Authorization: Bearer {TOKEN}\n  status 502"),
        OSError(f"cannot open /run/secrets/{registered}.pem for the PACS"),
    ]


@pytest.mark.parametrize(
    "index, kept",
    [
        (0, ["Max retries exceeded with url https://***@pacs.example.org/dicom-web/studies", "NewConnectionError"]),
        (1, ["request failed; headers", "'Accept': 'application/dicom+json'", "Bearer ***"]),
        (2, ["upstream said: Authorization: Bearer *** status 502"]),
        (3, ["cannot open /run/secrets/***.pem for the PACS"]),
    ],
)
def test_one_line_redacts_unexpected_exceptions(index, kept):
    error = unexpected_errors()[index]
    line = one_line(error)
    assert "\n" not in line
    for secret in (PASSWORD, TOKEN, "alice:", *(a for a in str(error).split("/") if a.endswith(".pem"))):
        assert secret not in line
    for part in kept:
        assert part in line


def test_tracebacks_are_redacted(tmp_path, monkeypatch, capsys):
    """The traceback file of a bundle command's user error, and the traceback printed with SDMAD_DEBUG=1 or for a
    bug, hold no secret (the cause's message, quoted in the chain, included) but keep the rest."""
    cause = unexpected_errors()[0]
    try:
        try:
            raise cause
        except requests.ConnectionError as error:
            raise ValueError(f"DICOMweb server https://alice:{PASSWORD}@pacs.example.org refused") from error
    except ValueError as wrapped:
        error = wrapped
    written = Path(_write_traceback(type(error), error, error.__traceback__))
    text = written.read_text()
    written.unlink()
    assert "Traceback" in text and "Max retries exceeded" in text and "https://***@pacs.example.org" in text
    assert PASSWORD not in text and "alice" not in text

    monkeypatch.setattr(sys, "argv", [LAUNCHER, "run", "training"])
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.delenv("SDMAD_DEBUG", raising=False)
    install_bundle_error_hook()
    sys.excepthook(type(error), error, error.__traceback__)  # a user error: one line, the traceback in a file
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sdmad: error: DICOMweb server https://***@pacs.example.org refused (full traceback: ")
    log = Path(line.split("full traceback: ")[1].split(";")[0])
    assert PASSWORD not in log.read_text() and "Max retries exceeded" in log.read_text()
    log.unlink()
    monkeypatch.setenv("SDMAD_DEBUG", "1")
    sys.excepthook(type(error), error, error.__traceback__)
    bug = unexpected_errors()[1]
    monkeypatch.delenv("SDMAD_DEBUG")
    sys.excepthook(type(bug), bug, None)  # a bug: its traceback, redacted
    printed = capsys.readouterr().err
    assert printed.count("Traceback") == 2 and "Max retries exceeded" in printed and "KeyError" in printed
    assert "application/dicom+json" in printed
    assert PASSWORD not in printed and TOKEN not in printed and "alice" not in printed
