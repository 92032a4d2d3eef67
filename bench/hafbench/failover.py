"""Section 3: failover downtime under a real two-node Corosync + Pacemaker cluster.

Built with the cluster harness (``hafloatd.lab.cluster``, as ``hafloatd lab`` and the cluster
tests build it) while a client requests the reserved IP every 50 ms. In one cluster, one
after the other: the lab's own drills for ``ocf:hafloatd:hafloat`` (``DrillRunner``), then the
same faults for the baseline agent, installed as another OCF provider
(``ocf:hafloatd-baseline:floatip``) and run as resource ``FloatIPBaseline`` on the same
reserved IP while ``FloatIP`` is stopped. A second cluster with
``pacemaker.notify_failures: true`` repeats the nginx failure for hafloatd.

Downtime is what the client saw: last good answer from the old droplet -> first good answer
from the new one. It is decomposed as in the lab's summary: failure detection, Pacemaker's
decision, the agent (start executed -> assign POST arrives), DigitalOcean's action, first
answer. POSTs (all, and those that created an action) and Pacemaker's fail-count on the node
the resource moved to are counted per failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BASELINE_AGENT, BASELINE_ASSIGN, PYTHON, BenchError

from hafloatd.lab.cluster import (
    Cluster,
    ClusterError,
    ClusterNode,
    ClusterSpec,
    ClusterStatus,
    check_capabilities,
)
from hafloatd.lab.cluster.network import free_network
from hafloatd.lab.drill import TrafficProbe
from hafloatd.lab.drills.phases import Mark, breakdown, first_line
from hafloatd.lab.drills.runner import DrillResult, DrillRunner

OCF_ROOT = Path("/usr/lib/ocf")
PROVIDER = "hafloatd-baseline"
BASELINE_RSC = "FloatIPBaseline"
SCENARIOS = ("node-crash", "nginx-stopped", "nginx-stopped+notify", "graceful-move")
PHASE_KEYS = ("detection", "decision", "hafloatd", "action", "first_answer")
Progress = Callable[[str], None]


@dataclass
class Failover:
    """One failover of one agent, in the form the report uses for both."""

    scenario: str
    agent: str  # "hafloatd" or "baseline"
    round: int
    moved: bool
    downtime_s: float | None
    phases: dict[str, float | None]
    posts: int
    accepted_posts: int
    fail_count_new: int
    failed_requests: int
    waited_s: float = 0.0  # how long a failover that did not happen was waited for
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def from_drill(scenario: str, result: DrillResult) -> Failover:
    new = result.new or ""
    return Failover(
        scenario,
        "hafloatd",
        result.round,
        result.moved,
        result.downtime_s,
        dict(result.breakdown.phases),
        result.posts,
        result.accepted_posts,
        result.fail_counts.get(new, 0) if new else 0,
        result.failed_requests,
        problems=list(result.problems),
    )


async def run(crash_rounds: int, other_rounds: int, progress: Progress) -> dict[str, Any]:
    report = await check_capabilities()
    if not report.ok:
        raise BenchError(f"the cluster cannot run here: {report.explain()}")
    network = await free_network(f"hfb{os.getpid() % 1000}", range(200, 250))
    failovers: list[Failover] = []
    info: dict[str, Any] = {}
    installed = _install_baseline()
    try:
        spec = ClusterSpec(network=network)
        info["spec"] = {
            "token_ms": spec.token_ms,
            "action_delay_s": spec.action_delay,
            "health": spec.health.__dict__ if spec.health else None,
            "monitor_interval": spec.resource.monitor_interval,
        }
        progress("failover: building the cluster (notify_failures off)")
        async with _cluster(spec, progress) as cluster:
            info["pcs_line"] = cluster.pcs_line
            runner = DrillRunner(cluster, progress)
            traffic = asyncio.create_task(runner.traffic.run(), name="bench-client")
            try:
                plan = [
                    ("node-crash", crash_rounds),
                    ("nginx-stopped", other_rounds),
                    ("graceful-move", other_rounds),
                ]
                for drill, rounds in plan:
                    for number in range(1, rounds + 1):
                        result = await runner.run_one(drill, number)
                        failovers.append(from_drill(drill, result))
                baseline = BaselineDrills(cluster, runner.traffic, progress)
                info["baseline_resource"] = await baseline.create()
                for drill, rounds in plan:
                    for number in range(1, rounds + 1):
                        failovers.append(await baseline.run_one(drill, number))
            finally:
                traffic.cancel()
                await asyncio.gather(traffic, return_exceptions=True)
        progress("failover: building the cluster again with notify_failures on")
        async with _cluster(spec.replace(notify_failures=True), progress) as cluster:
            runner = DrillRunner(cluster, progress)
            traffic = asyncio.create_task(runner.traffic.run(), name="bench-client")
            try:
                for number in range(1, other_rounds + 1):
                    result = await runner.run_one("nginx-stopped", number)
                    failovers.append(from_drill("nginx-stopped+notify", result))
            finally:
                traffic.cancel()
                await asyncio.gather(traffic, return_exceptions=True)
    finally:
        for path in reversed(installed):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return {"info": info, "failovers": [f.to_json() for f in failovers]}


@contextlib.asynccontextmanager
async def _cluster(spec: ClusterSpec, progress: Progress) -> Any:
    cluster = Cluster(spec, progress=lambda line: progress("  " + line))
    try:
        await cluster.start()
        yield cluster
    finally:
        left = await cluster.stop()
        if left:
            raise BenchError(f"cluster teardown left: {left}")


def _install_baseline() -> list[Path]:
    """The baseline agent as provider ``hafloatd-baseline`` (and its assign script in that
    provider's library directory), on every node: the nodes share the host's /usr."""
    created: list[Path] = []
    for directory in (OCF_ROOT / "resource.d" / PROVIDER, OCF_ROOT / "lib" / PROVIDER):
        if not directory.exists():
            directory.mkdir(parents=True)
            created.append(directory)
    for source, target in (
        (BASELINE_AGENT, OCF_ROOT / "resource.d" / PROVIDER / "floatip"),
        (BASELINE_ASSIGN, OCF_ROOT / "lib" / PROVIDER / "assign-ip"),
    ):
        shutil.copyfile(source, target)
        target.chmod(0o755)
        created.append(target)
    return created


class BaselineDrills:
    """The lab's faults, applied to the baseline resource, recorded the way the lab does."""

    def __init__(self, cluster: Cluster, traffic: TrafficProbe, progress: Progress) -> None:
        self.cluster = cluster
        self.traffic = traffic
        self.progress = progress
        self._wall_offset = time.time() - time.monotonic()

    async def create(self) -> str:
        """Stop FloatIP, create FloatIPBaseline (per-node metadata URL by a #uname rule)."""
        cluster, sim = self.cluster, self.cluster.simulator
        await cluster.crm(
            "crm_resource", "-r", "FloatIP", "--meta", "-p", "target-role", "-v", "Stopped"
        )
        await cluster.wait_for(lambda s: not s.active_nodes(), 60, "FloatIP stopped")
        rsc = BASELINE_RSC
        common = {
            "floating_ip": cluster.ip,
            "do_token": cluster.token,
            "api_url": sim.api_url,
            "assign_ip": str(OCF_ROOT / "lib" / PROVIDER / "assign-ip"),
            "python": PYTHON,
        }
        pairs = "".join(
            f'<nvpair id="{rsc}-ia-{k}" name="{k}" value="{v}"/>' for k, v in common.items()
        )
        per_node = "".join(
            f'<instance_attributes id="{rsc}-ia-{n.name}" score="10">'
            f'<rule id="{rsc}-rule-{n.name}" score="INFINITY">'
            f'<expression id="{rsc}-expr-{n.name}" attribute="#uname" operation="eq" '
            f'value="{n.name}"/></rule>'
            f'<nvpair id="{rsc}-ia-{n.name}-md" name="metadata_url" '
            f'value="{sim.metadata_url(n.droplet_id)}"/></instance_attributes>'
            for n in cluster.nodes
        )
        spec = cluster.spec.resource
        xml = (
            f'<primitive id="{rsc}" class="ocf" provider="{PROVIDER}" type="floatip">'
            f'<instance_attributes id="{rsc}-ia">{pairs}</instance_attributes>{per_node}'
            f'<meta_attributes id="{rsc}-meta">'
            f'<nvpair id="{rsc}-meta-stick" name="resource-stickiness" '
            f'value="{spec.stickiness}"/>'
            f'<nvpair id="{rsc}-meta-ft" name="failure-timeout" value="{spec.failure_timeout}"/>'
            f"</meta_attributes><operations>"
            f'<op id="{rsc}-monitor" name="monitor" interval="{spec.monitor_interval}" '
            f'timeout="{spec.monitor_timeout}"/>'
            f'<op id="{rsc}-start" name="start" interval="0s" timeout="{spec.start_timeout}"/>'
            f'<op id="{rsc}-stop" name="stop" interval="0s" timeout="{spec.stop_timeout}"/>'
            f"</operations></primitive>"
        )
        await cluster.crm("cibadmin", "--create", "-o", "resources", "--xml-text", xml)
        holder = cluster.holder()
        if holder is None:
            raise BenchError("nobody holds the reserved IP after FloatIP stopped")
        await cluster.wait_for(
            lambda s: s.started_on(holder.name, rsc), 60, f"{rsc} started on {holder.name}"
        )
        return (
            f"{rsc} ocf:{PROVIDER}:floatip, same op timeouts and monitor interval as FloatIP, "
            f"resource-stickiness={spec.stickiness}, failure-timeout={spec.failure_timeout}, "
            "migration-threshold left at Pacemaker's default (INFINITY), as the recipe had it"
        )

    # --- one drill ------------------------------------------------------------------------

    async def reset(self, timeout: float = 120.0) -> ClusterStatus:
        """Every node, nginx and hafloatd up, no constraint, no failure, the baseline
        resource started where the IP points, no action pending."""
        cluster, sim = self.cluster, self.cluster.simulator
        await cluster.heal()
        for node in cluster.nodes:
            if not node.up:
                await cluster.boot_node(node)
                continue
            if "web" not in node.services or not node.services["web"].running:
                await node.start_web()
            if "hafloatd" not in node.services or not node.services["hafloatd"].running:
                await node.start_hafloatd()
        await cluster.wait_for(
            lambda s: s.all_online(len(cluster.nodes)), timeout, "both nodes online"
        )
        await sim.wait_idle(timeout)
        await cluster.crm("crm_resource", "--clear", "-r", BASELINE_RSC, check=False)
        await cluster.crm("crm_resource", "--cleanup", "-r", BASELINE_RSC)

        def settled(s: ClusterStatus) -> bool:
            holder = cluster.holder()
            return (
                holder is not None
                and s.started_on(holder.name, BASELINE_RSC)
                and s.total_fail_count(BASELINE_RSC) == 0
                and not sim.locked(cluster.ip)
            )

        return await cluster.wait_for(settled, timeout, f"{BASELINE_RSC} settled")

    async def run_one(self, drill: str, number: int) -> Failover:
        cluster, sim = self.cluster, self.cluster.simulator
        status = await self.reset()
        old = cluster.node(status.active_nodes(BASELINE_RSC)[0])
        new = cluster.other(old)
        await self._client_sees(old, time.time(), 15)
        posts_before = len(sim.posts(cluster.ip))
        self.progress(f"[baseline {drill} #{number}] {BASELINE_RSC} on {old.name}")
        learned: Mark | None = None
        waited = 0.0
        if drill == "node-crash":
            fault_at = await cluster.crash(old)
            moved = await self._wait_started(new, 60)
            learned = await asyncio.to_thread(
                first_line,
                new.corosync_log,
                r"A new membership .* was formed\. Members left",
                fault_at,
            )
        elif drill == "nginx-stopped":
            fault_at = await cluster.stop_web(old)
            health = cluster.spec.health
            # As long as hafloatd may take at most (the next monitor after `fall` probes),
            # and a margin: the baseline never notices, so the wait is the bound reported.
            waited = cluster.spec.resource.monitor_interval_s + 4.0
            waited += health.fall * health.interval_s if health else 0.0
            moved = await self._wait_started(new, waited)
        elif drill == "graceful-move":
            fault_at = time.time()
            await cluster.crm("crm_resource", "--move", "-r", BASELINE_RSC, "-N", new.name)
            learned = Mark(fault_at, "crm_resource --move", "lab")
            moved = await self._wait_started(new, 30)
        else:
            raise BenchError(f"no baseline drill {drill!r}")
        first_new = None
        if moved:
            first_new = await self._client_sees(new, fault_at, 30)
            # The recipe's restarts in place go on until the move lands: wait them out.
            await sim.wait_idle(30)
            await cluster.crm("crm_resource", "--wait", "--timeout=60s", check=False)
        final = await cluster.status(new if new.up else None)
        posts = sim.posts(cluster.ip)[posts_before:]
        accepted = [e for e in posts if e.state_changed]
        result = Failover(
            drill,
            "baseline",
            number,
            moved,
            None,
            {},
            len(posts),
            len(accepted),
            final.fail_count(new.name, BASELINE_RSC) if moved else 0,
            0,
            waited,
        )
        samples = [(s.at + self._wall_offset, self._who(s.answer)) for s in self.traffic.samples]
        if moved and first_new is not None:
            start_exec = await asyncio.to_thread(
                first_line,
                new.pacemaker_log,
                rf"executing - rsc:{BASELINE_RSC} action:start",
                fault_at,
            )
            post = accepted[0] if accepted else None
            done_at = None
            if post is not None:
                action_id = (post.response_json() or {}).get("action", {}).get("id")
                done_at = next(
                    (a.completed_at for a in sim.actions(cluster.ip) if a.id == action_id), None
                )
            result.phases = dict(
                breakdown(
                    fault_at,
                    learned=learned,
                    start_exec=start_exec,
                    post_at=post.received_at if post else None,
                    action_done_at=done_at,
                    first_new_at=first_new,
                ).phases
            )
            before = [at for at, who in samples if who == old.name and at < first_new]
            if before:
                result.downtime_s = round(first_new - max(before), 3)
                result.failed_requests = sum(
                    1 for at, who in samples if max(before) < at < first_new and who is None
                )
        else:
            result.failed_requests = sum(1 for at, who in samples if at >= fault_at and who is None)
            result.problems.append(f"did not fail over within {waited:g} s")
        if drill == "graceful-move":
            await cluster.crm("crm_resource", "--clear", "-r", BASELINE_RSC, check=False)
        down = f"{result.downtime_s:.2f} s" if result.downtime_s is not None else "-"
        self.progress(
            f"[baseline {drill} #{number}] moved={moved} downtime {down}, "
            f"{result.posts} POSTs ({result.accepted_posts} accepted), "
            f"fail-count {result.fail_count_new} on {new.name}"
        )
        return result

    async def _wait_started(self, node: ClusterNode, timeout: float) -> bool:
        try:
            await self.cluster.wait_for(
                lambda s: s.started_on(node.name, BASELINE_RSC),
                timeout,
                f"{BASELINE_RSC} on {node.name}",
                node=node,
            )
        except ClusterError:
            return False
        return True

    async def _client_sees(self, node: ClusterNode, since: float, timeout: float) -> float:
        began = await self.traffic.wait_for(node.page, since - self._wall_offset, timeout)
        return began + self._wall_offset

    def _who(self, answer: str | None) -> str | None:
        for node in self.cluster.nodes:
            if answer == node.page:
                return node.name
        return None


def summarize(failovers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and agent: the figures the report prints."""
    from common import stats  # noqa: PLC0415

    rows = []
    for scenario in SCENARIOS:
        for agent in ("hafloatd", "baseline"):
            mine = [f for f in failovers if f["scenario"] == scenario and f["agent"] == agent]
            if not mine:
                continue
            moved = [f for f in mine if f["moved"]]
            downtimes = [f["downtime_s"] for f in moved if f["downtime_s"] is not None]
            phases = {
                key: stats([f["phases"][key] for f in moved if f["phases"].get(key) is not None])
                for key in PHASE_KEYS
            }
            floors = [
                f["downtime_s"] - sum(f["phases"][k] for k in ("detection", "decision", "action"))
                for f in moved
                if f["downtime_s"] is not None
                and all(f["phases"].get(k) is not None for k in ("detection", "decision", "action"))
            ]
            rows.append(
                {
                    "scenario": scenario,
                    "agent": agent,
                    "rounds": len(mine),
                    "moved": len(moved),
                    "downtime": stats(downtimes),
                    "phases": phases,
                    "over_floor": stats(floors),
                    "posts": (min(f["posts"] for f in mine), max(f["posts"] for f in mine)),
                    "accepted": (
                        min(f["accepted_posts"] for f in mine),
                        max(f["accepted_posts"] for f in mine),
                    ),
                    "fail_count_new": (
                        min(f["fail_count_new"] for f in mine),
                        max(f["fail_count_new"] for f in mine),
                    ),
                    "waited_s": max(f["waited_s"] for f in mine),
                    "problems": sorted({p for f in mine for p in f["problems"]}),
                }
            )
    return rows


if __name__ == "__main__":  # a quick look: python failover.py [crash_rounds [other_rounds]]
    args = [int(a) for a in sys.argv[1:]] + [1, 1]
    print(asyncio.run(run(args[0], args[1], print)))
