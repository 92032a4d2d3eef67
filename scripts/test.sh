#!/usr/bin/env bash
# Set up (system packages + .venv) and run every check CI runs: ruff, mypy --strict, pytest.
# Exits non-zero on any failure, including a pytest run that collects no test (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check hafloatd tests bench ocf
echo "== mypy --strict hafloatd"
.venv/bin/mypy --strict hafloatd
# The OCF agent runs under the system python3 (Debian 12: 3.11, EL9: 3.9): mypy at the oldest
# version it can target, vermin for 3.9 (annotations are evaluated at run time there).
echo "== mypy --strict ocf/hafloat_agent.py (Python 3.10)"
.venv/bin/mypy --strict --python-version 3.10 ocf/hafloat_agent.py
echo "== vermin ocf/ (Python 3.9+)"
.venv/bin/vermin -t=3.9- --no-tips --violations --eval-annotations ocf/hafloat ocf/hafloat_agent.py
echo "== pytest"
.venv/bin/pytest -p no:cacheprovider "$@"
