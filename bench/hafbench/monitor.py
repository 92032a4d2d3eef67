"""Section 2: what one ``monitor`` costs, wall and CPU, beside its floors and the baseline.

Rows, interleaved round-robin (each round starting one row later, so drift and position hit
every row alike): the installed ``hafloat monitor`` against a running ``hafloatd run`` that
holds the IP; the baseline ``floatip monitor``; ``python3 -I -S -c pass`` with the agent's
interpreter; ``/bin/sh -c true``. Wall is spawn -> reaped, CPU the child's user + system time
(``wait4``). Network requests per call: requests to the metadata service and the API on TCP
connections opened during the call (the daemon's own keep-alive connections and background
polls are not the call's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BASELINE_AGENT,
    BenchError,
    Daemon,
    MetadataFront,
    Procs,
    SimProcess,
    baseline_env,
    daemon_config,
    hafloat_env,
    interpreter_of,
    run_timed,
    stats,
)

TARGET_OVER_FLOOR_MS = 0.5


@dataclass
class Row:
    name: str
    argv: list[str]
    env: dict[str, str]
    expect_rc: int = 0
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)

    def once(self, keep: bool) -> None:
        timed = run_timed(self.argv, self.env)
        if timed.rc != self.expect_rc:
            raise BenchError(f"{self.name}: exit code {timed.rc}, expected {self.expect_rc}")
        if keep:
            self.wall_ms.append(timed.wall_ms)
            self.cpu_ms.append(timed.cpu_ms)
            self.windows.append((timed.started, timed.ended))


def run(
    procs: Procs, workdir: Path, agent: Path, reps: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    progress(f"monitor: 4 rows interleaved, {reps} round(s)")
    sim = SimProcess(procs, workdir)
    front = MetadataFront(sim.metadata[1001])
    daemon = None
    try:
        daemon = Daemon(
            procs, workdir / "d", daemon_config(workdir / "d", sim, 1001, metadata_url=front.url)
        )
        start = run_timed([str(agent), "start"], hafloat_env("start", daemon.socket_path))
        if start.rc != 0:
            raise BenchError(f"hafloat start exited {start.rc}")
        interpreter = interpreter_of(agent)
        plain = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        rows = [
            Row(
                "hafloatd: hafloat monitor",
                [str(agent), "monitor"],
                hafloat_env("monitor", daemon.socket_path, 10000),
            ),
            Row(
                "baseline: floatip monitor",
                [str(BASELINE_AGENT), "monitor"],
                baseline_env("monitor", front.url, sim.api_url, interval_ms=10000),
            ),
            Row(
                f"floor: {interpreter} -I -S -c pass",
                [interpreter, "-I", "-S", "-c", "pass"],
                plain,
            ),
            Row("floor: /bin/sh -c true", ["/bin/sh", "-c", "true"], plain),
        ]
        for row in rows:
            row.once(False)
        seq = sim.last_seq()
        for number in range(reps):
            shift = number % len(rows)
            for row in rows[shift:] + rows[:shift]:
                row.once(True)
                time.sleep(0.002)
        exchanges = sim.exchanges(seq)
    finally:
        if daemon is not None:
            daemon.stop()
        front.close()
        sim.stop()
    first_seen: dict[int, float] = {}
    for exchange in exchanges:
        first_seen.setdefault(exchange["connection_id"], exchange["received_monotonic"])
    result_rows = []
    for row in rows:
        requests = 0
        for begin, end in row.windows:
            requests += front.new_connection_requests(begin, end)
            requests += sum(1 for e in exchanges if begin <= first_seen[e["connection_id"]] <= end)
        result_rows.append(
            {
                "name": row.name,
                "wall": stats(row.wall_ms),
                "cpu": stats(row.cpu_ms),
                "requests_per_call": requests / len(row.windows) if row.windows else None,
            }
        )
    agent_row, floor_row = rows[0], rows[2]
    over_floor = {
        what: stats(
            [a - f for a, f in zip(getattr(agent_row, what), getattr(floor_row, what), strict=True)]
        )
        for what in ("wall_ms", "cpu_ms")
    }
    return {"reps": reps, "rows": result_rows, "over_floor": over_floor}


def targets(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    agent = result["rows"][0]
    found = []
    for what in ("wall", "cpu"):
        over = result["over_floor"][f"{what}_ms"]
        if over:
            allowed = TARGET_OVER_FLOOR_MS
            found.append(
                (f"monitor {what} over the floor", over.median, allowed, over.median <= allowed)
            )
    requests = agent["requests_per_call"]
    if requests is not None:
        found.append(("monitor network requests", requests, 0.0, requests == 0))
    return found
