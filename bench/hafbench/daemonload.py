"""Sections 4-6, the daemon on its own: footprint, control-socket throughput, API budget.

Each section starts its own ``hafloatd run`` against the simulator (loopback), makes it hold
the IP with the installed agent's ``start``, and talks to it only through the control socket
(``hafloatd.control.client``), ``/proc`` and the simulator's record.

- footprint: RSS (``VmRSS``) and open fds after start (plain HTTP and TLS), after 10,000 and
  250,000 monitor requests; CPU (utime + stime) over 60 s idle with a 1 s health interval.
- throughput: monitor requests per second from 8 concurrent clients, each on one persistent
  connection, then each opening one connection per request.
- budget: API requests of an idle daemon (IP held, health up) counted by the simulator over
  10 minutes, per hour; droplets one token serves at 5,000 requests/hour.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    PYTHON,
    BenchError,
    Daemon,
    Procs,
    SimProcess,
    WebStandIn,
    cpu_seconds,
    daemon_config,
    fd_count,
    hafloat_env,
    rss_kb,
    run_timed,
    wait_until,
)

from hafloatd.control.client import ControlConnection, request

CLIENTS = 8
TOKEN_LIMIT_PER_HOUR = 5000
MONITOR = {
    "op": "monitor",
    "ip": "203.0.113.10",
    "deadline_ms": 5000,
    "resource": "FloatIP",
    "node": "node1",
}
TARGET_RSS_MB = 40.0
# The daemon's third-party imports, loaded as `hafloatd run` loads them (its environment).
IMPORTS = "import aiohttp, uvloop, yaml, prometheus_client"
IMPORTS_ENV = {"FROZENLIST_NO_EXTENSIONS": "1"}
TARGET_IDLE_CPU_PCT = 0.5
TARGET_REQUESTS_PER_HOUR = 30.0


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run
    return uvloop.run


async def _drive(
    socket_path: str, total: int | None, seconds: float | None, persistent: bool
) -> tuple[int, float]:
    """8 clients sending monitors until ``total`` were answered or ``seconds`` passed."""
    count = 0
    issued = 0
    failures = 0
    began = time.monotonic()
    end = began + seconds if seconds is not None else None

    def more() -> bool:
        nonlocal issued
        if total is not None and issued >= total:
            return False
        if end is not None and time.monotonic() >= end:
            return False
        issued += 1
        return True

    async def client() -> None:
        nonlocal count, failures
        if persistent:
            async with ControlConnection(socket_path, group="root") as conn:
                while more():
                    reply = await conn.request(MONITOR)
                    count += 1
                    failures += reply.get("ocf") != 0
        else:
            while more():
                reply = await request(socket_path, MONITOR, 10.0, group="root")
                count += 1
                failures += reply.get("ocf") != 0

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    if failures:
        raise BenchError(f"{failures} of {count} monitor requests did not answer ocf 0")
    return count, time.monotonic() - began


def drive(
    socket_path: str,
    *,
    total: int | None = None,
    seconds: float | None = None,
    persistent: bool = True,
) -> tuple[int, float]:
    return _event_loop_runner()(_drive(socket_path, total, seconds, persistent))  # type: ignore[no-any-return]


def _holding_daemon(
    procs: Procs, workdir: Path, sim: SimProcess, agent: Path, **config: Any
) -> Daemon:
    daemon = Daemon(procs, workdir, daemon_config(workdir, sim, 1001, **config))
    started = run_timed([str(agent), "start"], hafloat_env("start", daemon.socket_path))
    if started.rc != 0:
        daemon.stop()
        raise BenchError(f"hafloat start exited {started.rc}")
    return daemon


def _wait_health(daemon: Daemon) -> None:
    wait_until(lambda: daemon.ip_status().get("health") == "up", 30, "health up", 0.1)


def footprint(
    procs: Procs, workdir: Path, agent: Path, quick: bool, progress: Callable[[str], None]
) -> dict[str, Any]:
    idle_s = 5.0 if quick else 60.0
    counts = (1_000, 5_000) if quick else (10_000, 250_000)
    result: dict[str, Any] = {"idle_s": idle_s, "points": []}
    web = WebStandIn()
    try:
        progress("footprint: TLS daemon after start")
        sim = SimProcess(procs, workdir, tls=True)
        try:
            daemon = _holding_daemon(
                procs, workdir / "tls", sim, agent, health_url=web.url, health_interval="1s"
            )
            _wait_health(daemon)
            time.sleep(1.0)
            result["tls_after_start"] = {"rss_kb": rss_kb(daemon.pid), "fds": fd_count(daemon.pid)}
            daemon.stop()
        finally:
            sim.stop()
        progress(f"footprint: plain daemon, idle {idle_s:g} s, then {counts[1]:,} monitors")
        sim = SimProcess(procs, workdir)
        try:
            daemon = _holding_daemon(
                procs, workdir / "plain", sim, agent, health_url=web.url, health_interval="1s"
            )
            _wait_health(daemon)
            time.sleep(1.0)
            pid = daemon.pid
            result["points"].append(
                {"after": "start", "monitors": 0, "rss_kb": rss_kb(pid), "fds": fd_count(pid)}
            )
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            time.sleep(idle_s)
            cpu = cpu_seconds(pid) - cpu0
            wall = time.monotonic() - wall0
            result["idle_cpu_pct"] = 100.0 * cpu / wall
            result["idle_cpu_s"] = cpu
            done = 0
            for target in counts:
                sent, _ = drive(daemon.socket_path, total=target - done)
                done += sent
                time.sleep(0.5)
                result["points"].append(
                    {
                        "after": f"{done:,} monitors",
                        "monitors": done,
                        "rss_kb": rss_kb(pid),
                        "fds": fd_count(pid),
                    }
                )
            daemon.stop()
        finally:
            sim.stop()
        # The interpreter alone, and with the daemon's third-party imports: the part of the
        # RSS that is not hafloatd's own doing (VmRSS of that process, as for the daemon).
        result["python_rss_kb"] = _own_rss_kb("pass")
        result["imports_rss_kb"] = _own_rss_kb(IMPORTS)
    finally:
        web.close()
    return result


def _own_rss_kb(code: str) -> int:
    """VmRSS of a fresh interpreter (the daemon's) once it ran ``code``."""
    show = "print(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])"
    done = subprocess.run(
        [PYTHON, "-c", f"{code}\n{show}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **IMPORTS_ENV},
    )
    return int(done.stdout.strip())


def throughput(
    procs: Procs, workdir: Path, agent: Path, quick: bool, progress: Callable[[str], None]
) -> dict[str, Any]:
    seconds = 1.0 if quick else 5.0
    progress(
        f"throughput: {CLIENTS} clients, {seconds:g} s persistent, {seconds:g} s "
        "one connection per request"
    )
    sim = SimProcess(procs, workdir)
    result: dict[str, Any] = {"clients": CLIENTS, "seconds": seconds}
    try:
        daemon = _holding_daemon(procs, workdir / "tp", sim, agent)
        drive(daemon.socket_path, total=2_000)  # warm-up
        for key, persistent in (("persistent", True), ("per_request", False)):
            count, took = drive(daemon.socket_path, seconds=seconds, persistent=persistent)
            result[key] = {"requests": count, "seconds": took, "per_s": count / took}
        daemon.stop()
    finally:
        sim.stop()
    return result


def budget(
    procs: Procs, workdir: Path, agent: Path, window_s: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    progress(f"API budget: an idle daemon counted by the simulator over {window_s:g} s")
    web = WebStandIn()
    sim = SimProcess(procs, workdir)
    try:
        daemon = _holding_daemon(procs, workdir / "budget", sim, agent, health_url=web.url)
        _wait_health(daemon)
        sim.wait_idle()
        time.sleep(2.0)  # the start's own requests (and a recheck they trigger) are not idle
        seq = sim.last_seq()
        began = time.monotonic()
        time.sleep(window_s)
        took = time.monotonic() - began
        exchanges = [e for e in sim.exchanges(seq) if e["received_monotonic"] <= began + took]
        daemon.stop()
    finally:
        sim.stop()
        web.close()
    by_endpoint = Counter(str(e["endpoint"]) for e in exchanges)
    per_hour = len(exchanges) * 3600.0 / took
    return {
        "window_s": took,
        "requests": len(exchanges),
        "by_endpoint": dict(by_endpoint),
        "per_hour": per_hour,
        "droplets_per_token": TOKEN_LIMIT_PER_HOUR / per_hour if per_hour else None,
        "connections": len({e["connection_id"] for e in exchanges}),
    }
