"""The README's promises: its Python example runs as written, and .ci/run finds its test line."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"no code block after {marker} in README.md"
    return match.group(1)


@pytest.mark.filterwarnings("ignore")
def test_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block_after("<!-- readme:example -->"), "README.md", "exec"), namespace)
    assert tuple(namespace["scores"].shape) == (4, 6)
    assert set(namespace["predictions"].unique().tolist()) <= {0.0, 1.0}
    assert (tmp_path / "detector.pt").is_file()


def test_ci_runs_the_readme_test_line():
    line = block_after("<!-- ci:test-line -->").strip()
    assert line.startswith("pip install") and "pytest" in line and ".[test,deploy]" in line
    extracted = subprocess.run(
        ["awk", "/<!-- ci:test-line -->/{getline; getline; print; exit}", str(ROOT / "README.md")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == line
    assert "<!-- ci:test-line -->" in (ROOT / ".ci" / "run").read_text()


def test_main_job_line_is_the_bundle_training():
    two_lines = README.split("## Two lines", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in two_lines.splitlines() if line.startswith("pip install")]
    assert len(lines) == 2, "the README promises exactly two copy-paste lines"
    assert "monai.bundle run training --config_file configs/train.json" in lines[0]
