"""bench/run: every benchmark of hafloatd beside its baseline, measured in the same run.

    bench/run                      all six sections; rewrites docs/benchmarks.md (~25 min)
    bench/run --quick              1 repetition each, short durations (CI's smoke, < 3 min);
                                   prints the report instead of writing docs/benchmarks.md
    bench/run --only start,monitor only those sections (report printed, docs untouched)

Sections: start (start latency), monitor (cost of one monitor), failover (downtime under a
real two-node Pacemaker), footprint (RSS, fds, idle CPU), throughput (control socket),
budget (API requests/hour at rest). Run as root on the project's Debian machine (scripts/
setup.sh): the start section makes two network namespaces, failover a whole cluster.
Every process it starts is stopped by PID; the namespaces it makes are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import common
import daemonload
import failover
import monitor
import report
import start

SECTIONS = ("start", "monitor", "footprint", "throughput", "failover", "budget")
DOC = common.REPO / "docs" / "benchmarks.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument(
        "--quick", "--smoke", action="store_true", help="1 repetition of each, short durations (CI)"
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help=f"comma-separated sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where the report goes (default: docs/benchmarks.md for a full run, stdout otherwise)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures")
    parser.add_argument(
        "--reps", type=int, default=None, help="rounds of start (40) and monitor (200)"
    )
    parser.add_argument("--crash-rounds", type=int, default=None, help="node crashes (10)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the other failovers (3)"
    )
    parser.add_argument(
        "--budget-window",
        type=float,
        default=None,
        help="seconds the idle daemon is counted (600; --quick: 10)",
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = only or list(SECTIONS)
    if args.crash_rounds is not None and not args.quick and args.crash_rounds < 10:
        print("note: fewer than 10 node crashes; the issue asks for N >= 10", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run: run as root (namespaces, a Pacemaker cluster)", file=sys.stderr)
        return 2
    # SIGTERM/SIGHUP unwind like Ctrl-C: every finally block stops its processes by PID and
    # deletes its namespaces (the cluster harness adds its own teardown while it runs).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    quick = args.quick
    reps_start = args.reps or (1 if quick else 40)
    reps_monitor = args.reps or (1 if quick else 200)
    crash_rounds = args.crash_rounds or (1 if quick else 10)
    rounds = args.rounds or (1 if quick else 3)
    window = args.budget_window or (10.0 if quick else 600.0)

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    run_info = report.machine_info()
    run_info["mode"] = "quick (1 repetition each, short durations)" if quick else "full"
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    procs = common.Procs()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hafloatd-bench-") as tmp:
        workdir = Path(tmp)
        try:
            agent = common.install_agent(workdir / "root")
            common.require_tools("curl", "bash")
            for name in args.sections:
                section_dir = workdir / name
                section_dir.mkdir()
                progress(f"== {name}")
                try:
                    if name == "start":
                        results[name] = start.run(procs, section_dir, agent, reps_start, progress)
                    elif name == "monitor":
                        results[name] = monitor.run(
                            procs, section_dir, agent, reps_monitor, progress
                        )
                    elif name == "footprint":
                        results[name] = daemonload.footprint(
                            procs, section_dir, agent, quick, progress
                        )
                    elif name == "throughput":
                        results[name] = daemonload.throughput(
                            procs, section_dir, agent, quick, progress
                        )
                    elif name == "failover":
                        results[name] = asyncio.run(failover.run(crash_rounds, rounds, progress))
                    elif name == "budget":
                        results[name] = daemonload.budget(
                            procs, section_dir, agent, window, progress
                        )
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    progress(f"{name} FAILED: {errors[name]}")
                    traceback.print_exc()
                finally:
                    procs.stop_all()
        finally:
            procs.stop_all()
    run_info["duration_s"] = time.monotonic() - began
    run_info["load_end"] = os.getloadavg()
    text = report.render(run_info, results, errors, args.sections)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"run": run_info, "results": results, "errors": errors},
                indent=2,
                default=report.to_json,
            )
            + "\n"
        )
    output = args.output
    if output is None and not quick and args.sections == list(SECTIONS) and not errors:
        output = DOC
    if output is None:
        print(text)
    else:
        output.write_text(text)
        progress(f"report written to {output}")
    for name, error in errors.items():
        print(f"bench/run: section {name} failed: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
