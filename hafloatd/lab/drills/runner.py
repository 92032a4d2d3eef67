"""The drills, run against a real cluster while a client requests the reserved IP every 50 ms.

Each drill starts from a healthy baseline (``Cluster.reset``), breaks the node that runs
FloatIP in one way, waits for the outcome Pacemaker and hafloatd should produce, and records
what every party did and when (``phases.py``):

``node-crash``       SIGKILL of the node's PID 1 (a power loss): FloatIP moves.
``nginx-stopped``    nginx stopped on the node: health falls, FloatIP moves.
``hafloatd-killed``  kill -9 of hafloatd, restarted 2 s later as systemd does: nothing moves.
``graceful-move``    ``crm_resource --move`` to the other node, then ``--clear``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hafloatd.lab.cluster import Cluster, ClusterNode, ClusterStatus
from hafloatd.lab.cluster.daemonctl import ip_status, monitors_answered
from hafloatd.lab.drill import TrafficProbe
from hafloatd.lab.drills.phases import Breakdown, Mark, breakdown, first_line

DRILLS = ("node-crash", "nginx-stopped", "hafloatd-killed", "graceful-move")
RESTART_SEC = 2.0  # systemd/hafloatd.service: Restart=on-failure, RestartSec=2s
WINDOW_S = 1.0  # samples kept before the fault and after the first good answer
_ANY_FAILURE = r"Result of \w+ operation for FloatIP on {node}: (?!ok|not running)"


@dataclass
class DrillResult:
    drill: str
    round: int
    old: str
    new: str | None  # where FloatIP ended; None when it did not move
    fault: str
    fault_at: float
    dc_before: str | None
    expected_move: bool
    moved: bool = False
    breakdown: Breakdown = field(default_factory=Breakdown)
    downtime_s: float | None = None
    failed_requests: int = 0
    posts: int = 0
    accepted_posts: int = 0
    fail_counts: dict[str, int] = field(default_factory=dict)
    active_on_two_nodes: int = 0
    problems: list[str] = field(default_factory=list)
    samples: list[tuple[float, str | None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class DrillRunner:
    def __init__(self, cluster: Cluster, progress: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.progress = progress
        host, port = cluster.proxy_address()
        self.traffic = TrafficProbe(host, port)
        # TrafficProbe stamps with the monotonic clock; everything else here is wall time.
        self._wall_offset = time.time() - time.monotonic()

    async def run(self, drills: list[str], rounds: int) -> list[DrillResult]:
        task = asyncio.create_task(self.traffic.run(), name="lab-client")
        try:
            results = []
            for number in range(1, rounds + 1):
                for drill in drills:
                    results.append(await self.run_one(drill, number))
            return results
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_one(self, drill: str, number: int) -> DrillResult:
        cluster = self.cluster
        status = await cluster.reset()
        old = cluster.node(status.active_nodes()[0])
        new = cluster.other(old)
        await self._client_sees(old, time.time(), 15)
        mark = await cluster.log_mark()
        posts_before = len(cluster.simulator.posts(cluster.ip))
        self.progress(
            f"[{drill} #{number}] FloatIP on {old.name} (DC {status.dc}); "
            f"{_FAULTS[drill].format(node=old.name)}"
        )
        run = {
            "node-crash": self._node_crash,
            "nginx-stopped": self._nginx_stopped,
            "hafloatd-killed": self._hafloatd_killed,
            "graceful-move": self._graceful_move,
        }[drill]
        result = DrillResult(
            drill,
            number,
            old.name,
            None,
            _FAULTS[drill].format(node=old.name),
            0.0,
            status.dc,
            drill != "hafloatd-killed",
        )
        learned, extra = await run(result, old, new)
        await cluster.crm("crm_resource", "--wait", "--timeout=60s", check=False)
        final = await cluster.status(new if new.up else None)
        result.moved = final.started_on(new.name)
        result.new = new.name if result.moved else None
        first_new = await self._client_sees(new, result.fault_at, 30) if result.moved else None
        await self._record(
            result,
            old=old,
            new=new,
            final=final,
            learned=learned,
            extra=extra,
            first_new=first_new,
            posts_before=posts_before,
        )
        result.active_on_two_nodes = len(await cluster.active_on_two_nodes(mark))
        self._judge(result)
        if drill == "graceful-move":
            await cluster.clear()
        self.progress(f"[{drill} #{number}] " + _one_line(result))
        return result

    # --- the drills: each sets fault_at and returns (what told Pacemaker, extra marks) ------

    async def _node_crash(
        self, result: DrillResult, old: ClusterNode, new: ClusterNode
    ) -> tuple[Mark | None, list[Mark]]:
        result.fault_at = await self.cluster.crash(old)
        await self._wait_started(new, 60)
        left = await asyncio.to_thread(
            first_line,
            new.corosync_log,
            r"A new membership .* was formed\. Members left",
            result.fault_at,
        )
        if left:
            left.label, left.source = f"Corosync: {old.name} left the membership", "corosync"
        return left, []

    async def _nginx_stopped(
        self, result: DrillResult, old: ClusterNode, new: ClusterNode
    ) -> tuple[Mark | None, list[Mark]]:
        cluster = self.cluster
        result.fault_at = await cluster.stop_web(old)
        health = cluster.spec.health
        fall_s = health.fall * health.interval_s if health else 0.0
        await self._wait_started(new, cluster.spec.resource.monitor_interval_s + fall_s + 30)
        extra = [
            Mark(line.at, "health check fell", "hafloatd")
            for line in old.daemon_events("probe_transition", result.fault_at)[:1]
            if "to=down" in line.text
        ]
        extra += [
            Mark(line.at, "crm_resource --fail run", "hafloatd")
            for line in old.daemon_events("pacemaker_notified", result.fault_at)[:1]
        ]
        return await self._failure_seen(old, result.fault_at), extra

    async def _hafloatd_killed(
        self, result: DrillResult, old: ClusterNode, new: ClusterNode
    ) -> tuple[Mark | None, list[Mark]]:
        cluster = self.cluster
        result.fault_at = await cluster.kill_hafloatd(old, signal.SIGKILL)
        await asyncio.sleep(RESTART_SEC)  # systemd's RestartSec, part of the fault
        await old.start_hafloatd()
        extra = [Mark(time.time(), "hafloatd restarted (RestartSec=2s)", "lab", "restart")]
        # The outcome is known once the restarted daemon answered a monitor (nothing moved)
        # or Pacemaker recorded a failure of one it missed.
        interval = cluster.spec.resource.monitor_interval_s
        async with asyncio.timeout(2 * interval + 15):
            while True:
                if old.up and await monitors_answered(old):
                    break
                if (await cluster.status()).failures:
                    await self._wait_started(new, cluster.spec.resource.start_timeout_s + 15)
                    break
                await asyncio.sleep(0.1)
        return await self._failure_seen(old, result.fault_at), extra

    async def _graceful_move(
        self, result: DrillResult, old: ClusterNode, new: ClusterNode
    ) -> tuple[Mark | None, list[Mark]]:
        result.fault_at = time.time()
        await self.cluster.move(new)
        await self._wait_started(new, 30)
        return Mark(result.fault_at, "crm_resource --move", "lab"), []

    # --- records --------------------------------------------------------------------------

    async def _wait_started(self, node: ClusterNode, timeout: float) -> ClusterStatus:
        return await self.cluster.wait_for(
            lambda s: s.started_on(node.name), timeout, f"FloatIP started on {node.name}", node=node
        )

    async def _failure_seen(self, node: ClusterNode, since: float) -> Mark | None:
        seen = await asyncio.to_thread(
            first_line, node.pacemaker_log, _ANY_FAILURE.format(node=node.name), since
        )
        if seen:
            op = "asyncmon" if "asyncmon" in seen.label else "monitor"
            seen.label, seen.source = f"Pacemaker records the failure ({op})", "pacemaker"
        return seen

    async def _client_sees(self, node: ClusterNode, since: float, timeout: float) -> float:
        began = await self.traffic.wait_for(node.page, since - self._wall_offset, timeout)
        return began + self._wall_offset

    async def _record(
        self,
        result: DrillResult,
        *,
        old: ClusterNode,
        new: ClusterNode,
        final: ClusterStatus,
        learned: Mark | None,
        extra: list[Mark],
        first_new: float | None,
        posts_before: int,
    ) -> None:
        cluster, sim = self.cluster, self.cluster.simulator
        posts = sim.posts(cluster.ip)[posts_before:]
        result.posts = len(posts)
        accepted = [e for e in posts if e.state_changed]
        result.accepted_posts = len(accepted)
        result.fail_counts = {n: final.fail_count(n) for n in final.nodes}
        end = first_new if first_new is not None else time.time()
        samples = [(s.at + self._wall_offset, self._who(s.answer)) for s in self.traffic.samples]
        result.samples = [
            s for s in samples if result.fault_at - WINDOW_S <= s[0] <= end + WINDOW_S
        ]
        if not result.moved:
            marks = [Mark(result.fault_at, "fault", "lab", "fault"), *extra]
            result.breakdown = Breakdown(marks=sorted(marks, key=lambda m: m.at))
            result.failed_requests = sum(
                1 for at, who in samples if at >= result.fault_at and at <= end and who is None
            )
            return
        start_exec = await asyncio.to_thread(
            first_line, new.pacemaker_log, r"executing - rsc:FloatIP action:start", result.fault_at
        )
        post = accepted[0] if accepted else None
        done_at = None
        if post is not None:
            action_id = _action_id(post.response_json())
            done_at = next(
                (a.completed_at for a in sim.actions(cluster.ip) if a.id == action_id), None
            )
        extra = extra + await self._daemon_marks(new, result.fault_at)
        result.breakdown = breakdown(
            result.fault_at,
            learned=learned,
            start_exec=start_exec,
            post_at=post.received_at if post else None,
            action_done_at=done_at,
            first_new_at=first_new,
            extra=extra,
        )
        before_new = [at for at, who in samples if who == old.name and at < (first_new or 0)]
        last_old = max(before_new, default=None)
        if last_old is not None and first_new is not None:
            result.downtime_s = round(first_new - last_old, 3)
            result.failed_requests = sum(
                1 for at, who in samples if last_old < at < first_new and who is None
            )

    async def _daemon_marks(self, node: ClusterNode, since: float) -> list[Mark]:
        """hafloatd's own timeline of the start: request received, POST sent."""
        try:
            timeline = (await ip_status(node, self.cluster.ip)).get("last_failover") or {}
        except Exception:  # the lab reports without it rather than fail the drill
            return []
        marks = []
        for key, label in (("received", "hafloatd received start"), ("post_sent", "POST sent")):
            at = timeline.get(key)
            if isinstance(at, int | float) and at >= since:
                marks.append(Mark(float(at), label, "hafloatd"))
        return marks

    def _who(self, answer: str | None) -> str | None:
        for node in self.cluster.nodes:
            if answer == node.page:
                return node.name
        return None

    def _judge(self, result: DrillResult) -> None:
        problems = result.problems
        if result.expected_move:
            if not result.moved:
                problems.append("FloatIP did not move")
            if result.accepted_posts != 1:
                problems.append(f"{result.accepted_posts} assign POSTs instead of 1")
            if result.new and result.fail_counts.get(result.new, 0):
                problems.append(f"fail-count {result.fail_counts[result.new]} on {result.new}")
        else:
            if result.moved:
                problems.append("FloatIP moved although only the daemon restarted")
            if result.posts:
                problems.append(f"{result.posts} POSTs for a daemon restart")
            if any(result.fail_counts.values()):
                problems.append(f"fail-counts {result.fail_counts} after a daemon restart")
        if result.active_on_two_nodes:
            problems.append("Pacemaker logged 'active on 2 nodes'")


_FAULTS = {
    "node-crash": "SIGKILL of {node}'s PID 1 (power loss)",
    "nginx-stopped": "nginx stopped on {node}",
    "hafloatd-killed": "kill -9 of hafloatd on {node}, restarted after 2 s",
    "graceful-move": "crm_resource --move FloatIP away from {node}",
}


def _action_id(body: Any) -> int | None:
    if isinstance(body, dict) and isinstance(body.get("action"), dict):
        value = body["action"].get("id")
        return value if isinstance(value, int) else None
    return None


def _one_line(result: DrillResult) -> str:
    if result.moved:
        down = f"{result.downtime_s:.2f} s" if result.downtime_s is not None else "?"
        what = f"moved to {result.new}, client downtime {down}"
    else:
        what = f"nothing moved, {result.failed_requests} failed requests"
    verdict = "ok" if result.ok else "PROBLEM: " + "; ".join(result.problems)
    return f"{what}, {result.accepted_posts} assign POST(s): {verdict}"
