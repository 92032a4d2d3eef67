"""What the cluster tests share: a client of the reserved IP, waits, the POST record, logs.

The simulator is reached only through ``Cluster.simulator`` (its recorded exchanges are
typed ``Any`` here), so the simulator's import path lives in the harness alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from hafloatd.lab.cluster import Cluster, ClusterError, ClusterNode
from hafloatd.lab.cluster.daemonctl import monitors_answered
from hafloatd.lab.drill import TrafficProbe


@contextlib.asynccontextmanager
async def client(cluster: Cluster) -> AsyncIterator[TrafficProbe]:
    """Requests the reserved IP (the simulator's proxy) every 50 ms while the block runs."""
    host, port = cluster.proxy_address()
    traffic = TrafficProbe(host, port)
    task = asyncio.create_task(traffic.run(), name="reserved-ip-client")
    try:
        yield traffic
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def answered_by(traffic: TrafficProbe, node: ClusterNode, timeout: float = 15) -> float:
    """Monotonic time of the first request after now answered by ``node``'s web server."""
    return await traffic.wait_for(node.page, time.monotonic(), timeout)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None


def posts(cluster: Cluster, since: int = 0) -> list[Any]:
    """Every assign/unassign POST the API received for the reserved IP, from index ``since``."""
    return cluster.simulator.posts(cluster.ip)[since:]


def accepted(exchanges: list[Any]) -> list[Any]:
    """The POSTs that created an action (the ones that can move the IP)."""
    return [e for e in exchanges if e.state_changed]


def assign_targets(exchanges: list[Any]) -> list[int]:
    return [int(e.request_json().get("droplet_id", 0)) for e in accepted(exchanges)]


async def api_post(cluster: Cluster, body: dict[str, Any]) -> int:
    """POST an action on the reserved IP as another API user would (the cluster's token)."""
    sim = cluster.simulator
    url = f"{sim.api_url}/v2/reserved_ips/{cluster.ip}/actions"
    headers = {"Authorization": f"Bearer {cluster.token}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(headers=headers, timeout=timeout) as session,
        session.post(url, json=body) as reply,
    ):
        return reply.status


async def diagnostics(cluster: Cluster) -> str:
    """crm_mon as each live node sees it, Pacemaker's resource lines, the daemons' logs."""
    parts = ["===== cluster diagnostics"]
    for node in cluster.nodes:
        if node.up:
            try:
                parts.append(
                    f"--- crm_mon on {node.name}: {(await cluster.status(node)).summary()}"
                )
            except ClusterError as exc:
                parts.append(f"--- crm_mon on {node.name}: {exc}")
        else:
            parts.append(f"--- {node.name} is down")
    lines = await asyncio.to_thread(cluster.pacemaker_log)
    keys = ("FloatIP", "active on 2", "error:", "warning:")
    parts.append("--- pacemaker.log (FloatIP, errors, last 60)")
    parts += [line for line in lines if any(k in line for k in keys)][-60:]
    for node in cluster.nodes:
        parts.append(f"--- hafloatd on {node.name} (last 30 lines)")
        parts += [f"{line.at:.3f} {line.text}" for line in node.daemon_log[-30:]]
    parts.append("--- simulator POSTs")
    parts += [e.summary() for e in posts(cluster)]
    return "\n".join(parts)


async def right_after_a_monitor(node: ClusterNode, timeout: float = 30) -> float:
    """Wait until ``node``'s daemon answers its next recurring monitor; monotonic time then.

    Faults timed from here land at a known place in the monitor cadence: the next monitor
    is one interval away (Pacemaker reschedules a recurring monitor an interval after it).
    """
    base = await monitors_answered(node)
    try:
        async with asyncio.timeout(timeout):
            while await monitors_answered(node) <= base:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no monitor reached hafloatd on {node.name} in {timeout}s") from None
    return time.monotonic()
