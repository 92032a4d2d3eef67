"""The agent-only failover drill: ``hafloatd lab`` where no Pacemaker cluster can run.

The DigitalOcean simulator (API, one metadata service per droplet, a TCP proxy standing in for
the reserved IP), two simulated droplets each with a stand-in web server and its own
``hafloatd run`` process, and the real OCF agent executed the way Pacemaker executes it:
``start`` on node1, then ``stop`` there and ``start`` on node2, while a client requests the
reserved IP every 50 ms. It prints the failover timeline and the downtime the client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hafloatd.lab.nodes import (
    DaemonNode,
    LoopbackWeb,
    NginxWeb,
    make_node,
    nginx_web,
    stand_in_web,
)
from hafloatd.lab.sim import SimDroplet, SimReservedIp, SimScenario, Simulator

RESERVED_IP = "203.0.113.10"
POLL_INTERVAL_S = 0.05
PHASES = ("received", "post_sent", "api_accepted", "action_completed", "holder_confirmed")


class LabError(Exception):
    """The drill could not run; the message says which part failed."""


@dataclass
class Sample:
    at: float  # monotonic
    answer: str | None  # the node name that answered, None on failure


@dataclass
class TrafficProbe:
    """Requests the reserved IP (the simulator's proxy) every 50 ms, like the tutorial's curl
    loop at finer grain; each request is a new TCP connection with a short timeout."""

    host: str
    port: int
    samples: list[Sample] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            began = time.monotonic()
            self.samples.append(Sample(began, await self._request()))
            await asyncio.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - began)))

    async def _request(self) -> str | None:
        try:
            async with asyncio.timeout(0.5):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(b"GET / HTTP/1.0\r\nHost: reserved-ip\r\n\r\n")
                    data = await reader.read()  # HTTP/1.0: the server closes at the end
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
            return None
        return body.decode(errors="replace").strip() or None

    async def wait_for(self, answer: str, since: float, timeout: float) -> float:
        """Monotonic time of the first sample after ``since`` answered by ``answer``."""
        async with asyncio.timeout(timeout):
            while True:
                for sample in reversed(self.samples):
                    if sample.at < since:
                        break
                    if sample.answer == answer:
                        return self._first_since(answer, since)
                await asyncio.sleep(POLL_INTERVAL_S / 2)

    def _first_since(self, answer: str, since: float) -> float:
        return next(s.at for s in self.samples if s.at >= since and s.answer == answer)

    def last_answer_before(self, answer: str, before: float) -> float | None:
        times = [s.at for s in self.samples if s.at < before and s.answer == answer]
        return times[-1] if times else None

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for s in self.samples if start <= s.at <= end and s.answer is None)


async def run_lab(
    action_delay: float, rounds: int, tls: bool, keep: bool, json_path: str | None = None
) -> int:
    """The agent-only drill; ``json_path`` ('-': stdout) gets the results as JSON."""
    workdir = Path(tempfile.mkdtemp(prefix="hafloatd-lab-"))
    try:
        async with _lab(workdir, action_delay, tls) as (sim, nodes):
            results = await _drill(sim, nodes, rounds, action_delay)
            _print_report(results, action_delay, workdir if keep else None)
            if json_path == "-":
                print(json.dumps(results, indent=2))
            elif json_path:
                text = json.dumps(results, indent=2) + "\n"
                await asyncio.to_thread(Path(json_path).write_text, text)
            ok = all(r["ok"] for r in results)
            return 0 if ok else 1
    finally:
        if keep:
            print(f"lab directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def _lab(
    workdir: Path, action_delay: float, tls: bool
) -> AsyncIterator[tuple[Simulator, list[DaemonNode]]]:
    async with contextlib.AsyncExitStack() as stack:
        webs: list[LoopbackWeb] = []
        for name in ("node1", "node2"):
            if NginxWeb.available():  # Debian's nginx, as on a real droplet
                webs.append(await stack.enter_async_context(nginx_web(name, workdir)))
            else:
                webs.append(await stack.enter_async_context(stand_in_web(name)))
        token = "lab-" + os.urandom(16).hex()
        scenario = SimScenario(
            tokens=(token,),
            droplets=tuple(
                SimDroplet(id=1001 + i, name=f"node{i + 1}", region="nyc3", backend=web.backend)
                for i, web in enumerate(webs)
            ),
            reserved_ips=(SimReservedIp(ip=RESERVED_IP, region="nyc3", droplet_id=None),),
            action_delay=action_delay,
            tls=tls,
        )
        sim = Simulator(scenario)
        await stack.enter_async_context(sim)
        print(f"simulator: API {sim.api_url} (action delay {action_delay:.2f} s)")
        host, port = sim.proxy_address(RESERVED_IP)
        print(f"reserved IP {RESERVED_IP} is the proxy at {host}:{port}")
        token_file = workdir / "do-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        nodes: list[DaemonNode] = []
        for index, web in enumerate(webs):
            name = f"node{index + 1}"
            node = make_node(
                sim,
                name,
                1001 + index,
                workdir,
                health_url=web.url,
                extra={"api": {"token_source": "file", "token_file": str(token_file)}},
            )
            node.env.pop("HAFLOATD_DO_TOKEN", None)
            stack.push_async_callback(node.stop)
            await node.start()
            nodes.append(node)
            kind = "nginx" if isinstance(web, NginxWeb) else "stand-in web server"
            print(f"{name}: droplet {node.droplet_id}, hafloatd pid {node.pid}, {kind} {web.url}")
        yield sim, nodes


async def _drill(
    sim: Simulator, nodes: list[DaemonNode], rounds: int, action_delay: float
) -> list[dict[str, Any]]:
    host, port = sim.proxy_address(RESERVED_IP)
    traffic = TrafficProbe(host, port)
    traffic_task = asyncio.create_task(traffic.run(), name="lab-traffic")
    timeout = 10 + 3 * action_delay
    results: list[dict[str, Any]] = []
    try:
        first = nodes[0]
        began = time.monotonic()
        start = await first.agent("start")
        if start.rc != 0:
            raise LabError(f"start on {first.name} failed (rc {start.rc}): {start.stderr.strip()}")
        await traffic.wait_for(first.name, began, timeout)
        print(f"{first.name} holds {RESERVED_IP} (start took {start.wall_s * 1000:.0f} ms)")
        for index in range(rounds):
            old, new = nodes[index % 2], nodes[(index + 1) % 2]
            results.append(await _failover(sim, traffic, old, new, timeout))
    finally:
        traffic_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic_task
    return results


async def _failover(
    sim: Simulator, traffic: TrafficProbe, old: DaemonNode, new: DaemonNode, timeout: float
) -> dict[str, Any]:
    posts_before = len(sim.posts(RESERVED_IP))
    stop_at = time.monotonic()
    stop_wall = time.time()
    stop = await old.agent("stop")
    start_at = time.monotonic()
    start = await new.agent("start")
    start_done = time.monotonic()
    first_new = await traffic.wait_for(new.name, stop_at, timeout)
    last_old = traffic.last_answer_before(old.name, first_new) or stop_at
    timeline = (await _status(new)).get("last_failover") or {}
    phases_ms: dict[str, float | None] = {}
    for phase in PHASES:
        at = timeline.get(phase)
        phases_ms[phase] = (
            round((at - stop_wall) * 1000, 1) if isinstance(at, int | float) else None
        )
    return {
        "from": old.name,
        "to": new.name,
        "ok": stop.rc == 0 and start.rc == 0,
        "stop_rc": stop.rc,
        "start_rc": start.rc,
        "start_reason": start.exit_reason,
        "ms_after_stop_command": {
            "start_exec": round((start_at - stop_at) * 1000, 1),
            **phases_ms,
            "start_exit": round((start_done - stop_at) * 1000, 1),
            "first_answer_from_new": round((first_new - stop_at) * 1000, 1),
        },
        "last_answer_from_old_ms": round((last_old - stop_at) * 1000, 1),
        "downtime_ms": round((first_new - last_old) * 1000, 1),
        "failed_requests": traffic.failures_between(last_old, first_new),
        "posts": len(sim.posts(RESERVED_IP)) - posts_before,
        "confirmed_by": timeline.get("confirmed_by"),
    }


async def _status(node: DaemonNode) -> dict[str, Any]:
    """The daemon's status entry for the reserved IP, over its control socket."""
    reader, writer = await asyncio.open_unix_connection(node.socket_path)
    try:
        writer.write(b'{"op":"status","deadline_ms":3000}\n')
        line = await asyncio.wait_for(reader.readline(), 3.0)
    finally:
        writer.close()
    reply = json.loads(line)
    for entry in reply.get("ips", []):
        if entry.get("ip") == RESERVED_IP:
            return dict(entry)
    return {}


def _print_report(results: list[dict[str, Any]], action_delay: float, kept: Path | None) -> None:
    print()
    print("Pacemaker is NOT involved in this drill: the OCF agent is executed directly, the way")
    print("Pacemaker would run it (stop on the old node, then start on the new one).")
    for number, result in enumerate(results, 1):
        ms = result["ms_after_stop_command"]
        print()
        route = f"{result['from']} -> {result['to']}"
        print(f"failover {number}: {route}  (ms after `stop` was exec'd)")
        rows = [
            ("stop exited / start exec'd", ms["start_exec"]),
            ("start request received by hafloatd", ms["received"]),
            ("POST sent", ms["post_sent"]),
            ("API accepted (201)", ms["api_accepted"]),
            (f"action completed (confirmed by {result['confirmed_by']})", ms["action_completed"]),
            ("holder confirmed", ms["holder_confirmed"]),
            ("start exited 0" if result["start_rc"] == 0 else "start FAILED", ms["start_exit"]),
            (f"first answer from {result['to']}", ms["first_answer_from_new"]),
        ]
        for label, value in rows:
            shown = "-" if value is None else f"{value:8.1f}"
            print(f"  {label:<48} {shown}")
        print(
            f"  downtime seen by the client: {result['downtime_ms']:.0f} ms "
            f"({result['failed_requests']} failed requests at 50 ms; simulated action "
            f"{action_delay * 1000:.0f} ms); POSTs: {result['posts']}"
        )
        if result["start_rc"] != 0:
            print(f"  start failed: {result['start_reason']}")
