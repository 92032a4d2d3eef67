#!/usr/bin/env bash
# Set up (system packages + .venv) and run every check CI runs: ruff, mypy --strict, pytest.
# Exits non-zero on any failure, including a pytest run that collects no test (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check hafloatd tests bench
echo "== mypy --strict hafloatd"
.venv/bin/mypy --strict hafloatd
echo "== pytest"
.venv/bin/pytest -p no:cacheprovider "$@"
