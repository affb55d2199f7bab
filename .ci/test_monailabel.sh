#!/usr/bin/env bash
# CI: the MONAI Label integration (tests/label) in its own fresh virtual environment, with the `label` extra
# (monailabel 0.8.5 needs pydicom 2, so it is never installed together with `test`).
# Fails when a test fails, when pytest collects nothing (exit 5), and when any test is skipped: with
# SDMAD_REQUIRE_LABEL=1 a missing monailabel is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
python3 -m venv "$workdir/venv"
# shellcheck disable=SC1091
source "$workdir/venv/bin/activate"

echo "CI (MONAI Label): installing into $workdir/venv"
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e ".[label]"
pip check
python -c "import monailabel, pydicom, highdicom; print('monailabel', monailabel.__version__, '| pydicom', pydicom.__version__, '| highdicom', highdicom.__version__)"

echo "CI (MONAI Label): running tests/label"
set +e
SDMAD_REQUIRE_LABEL=1 python -m pytest tests/label -q -rs -p no:cacheprovider 2>&1 | tee "$workdir/pytest.log"
status=${PIPESTATUS[0]}
set -e
summary=$(tail -n 1 "$workdir/pytest.log")
if [[ $status -ne 0 ]]; then
  echo "CI (MONAI Label): pytest failed with exit code $status" >&2
  exit "$status"
fi
if [[ "$summary" != *passed* || "$summary" == *skipped* ]]; then
  echo "CI (MONAI Label): every test must run and pass here, got: $summary" >&2
  exit 1
fi
echo "CI (MONAI Label): passed in $(( $(date +%s) - started )) s"
