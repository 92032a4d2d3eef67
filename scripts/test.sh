#!/usr/bin/env bash
# Set up (system packages + .venv) and run every check CI runs: ruff, mypy --strict, then the
# test tiers one after the other, each timed (the model-based test of the truth runs beside
# unit and integration): unit, integration, cluster (a real two-node
# Pacemaker cluster in namespaces), systemd (the unit run by a real systemd 252 booted in
# systemd-nspawn; its Debian root is cached in /var/cache/hafloatd-systemd-tier, built on the
# first run). Under CI=true the last two must run: a missing capability fails them.
# Every tier runs even when an earlier one failed; exits non-zero on any failure, including a
# tier that collects no test (pytest exit 5). Arguments, if any, go to one plain pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The model-based test of the truth (tests/integration/test_truth_model.py) runs 60 examples by
# default; CI runs 500 (an explicit HAFLOATD_MODEL_EXAMPLES still wins).
if [ "${CI:-}" = "true" ]; then
  export HAFLOATD_MODEL_EXAMPLES="${HAFLOATD_MODEL_EXAMPLES:-500}"
fi
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
if [ "$#" -gt 0 ]; then
  echo "== pytest $*"
  exec .venv/bin/pytest -p no:cacheprovider "$@"
fi
status=0
summary=""
logdir=$(mktemp -d)
background=()
cleanup() {
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$logdir"
}
trap cleanup EXIT
seconds_since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN{printf "%.1f", a-b}'; }
record() {  # NAME BEGAN RC: one line of the closing summary
  summary+=$(printf '%-12s %7ss  exit %s' "$1" "$(seconds_since "$2")" "$3")$'\n'
  [ "$3" = 0 ] || status=1
}
step() {  # NAME COMMAND...: run, tee to the log directory (*.log: pytest's, summed up at the end), time
  local name=$1 log began rc
  shift
  log="$logdir/${name// /-}.$([ "$1" = pytest_tier ] && echo log || echo txt)"
  echo "== $name"
  began=$(date +%s.%N)
  set +e
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  record "$name" "$began" "$rc"
}
pytest_tier() { .venv/bin/pytest -p no:cacheprovider "$@"; }

# Two long, mostly waiting jobs run beside the unit and integration tiers on this 2-core
# machine: the model-based test of the truth (500 examples under CI, its own pytest
# process and log, printed when it ends) and, for the systemd tier, the Debian root it
# boots (debootstrap, about a minute on a cold cache; the tier waits on the cache's lock).
model=tests/integration/test_truth_model.py
model_began=$(date +%s.%N)
( set +e; pytest_tier "$model" >"$logdir/model.log" 2>&1; echo $? >"$logdir/model.rc" ) &
background+=($!)
( .venv/bin/python -c 'from tests.systemd.image import base_root, cache_dir; base_root(cache_dir())' \
    >"$logdir/systemd-root.txt" 2>&1 || true ) &
background+=($!)

step unit pytest_tier tests/unit
step integration pytest_tier tests/integration --ignore "$model"
echo "== $model (ran beside the tiers above)"
wait "${background[0]}" || true
cat "$logdir/model.log"
record "model" "$model_began" "$(cat "$logdir/model.rc" 2>/dev/null || echo 1)"
wait "${background[1]}" || true
step cluster pytest_tier tests/cluster
step systemd pytest_tier tests/systemd
# Benchmarks are not tests, but one repetition of each runs here so they cannot rot: under
# CI=true, or locally with HAFLOATD_BENCH_SMOKE=1 (as root, about 4 minutes). The reports go
# to the log directory, never over docs/benchmarks.md.
bench_smoke=${HAFLOATD_BENCH_SMOKE:-0}
case "${CI:-}" in true|TRUE|1|yes) bench_smoke=1 ;; esac
if [ "$bench_smoke" = 1 ]; then
  step "bench smoke" bench/run --quick --output "$logdir/benchmarks.md"
  # bench/soak's one-minute smoke (about 70 s): two daemons, monitors, failovers, faults.
  step "soak smoke" bench/soak --duration 60 --output "$logdir/soak.md"
fi
echo "== tier times"
printf '%s' "$summary"
# One closing line over all tiers, in the plain form CI reads.
.venv/bin/python - "$logdir" <<'PY'
import pathlib, re, sys
totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
for log in sorted(pathlib.Path(sys.argv[1]).glob("*.log")):
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last):
        totals["errors" if word.startswith("error") else word] += int(count)
failed = totals["failed"] + totals["errors"]
line = f"tests: {totals['passed']} passed, {failed} failed"
print(line + (f", {totals['skipped']} skipped" if totals["skipped"] else ""))
PY
exit $status
