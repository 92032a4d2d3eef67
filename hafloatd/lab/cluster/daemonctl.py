"""Asking a node's hafloatd what it knows: its control socket and its metrics endpoint.

The control socket lives in the node's private ``/run``; the host reaches it through the
node's PID 1 (``/proc/PID/root/run/hafloatd/control.sock``). Metrics listen on the node's
address, reachable over the bridge. Plain JSON lines and Prometheus text: nothing from the
daemon's side is imported.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hafloatd.lab.cluster.node import ClusterNode
from hafloatd.lab.cluster.procs import ClusterError

SOCKET = "/run/hafloatd/control.sock"  # the default control.socket_path, as in production
METRICS_PORT = 9310


async def control_request(
    node: ClusterNode, request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """One JSON request over the node's control socket, one JSON reply."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(node.root_path(SOCKET))
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"hafloatd on {node.name} did not answer: {exc!r}") from None
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ClusterError(f"hafloatd on {node.name} answered {line!r}")
    return reply


async def ip_status(node: ClusterNode, ip: str) -> dict[str, Any]:
    """The daemon's ``status`` entry for ``ip`` (role, holder, health, last_failover...)."""
    reply = await control_request(node, {"op": "status", "deadline_ms": 3000})
    for entry in reply.get("ips", []):
        if isinstance(entry, dict) and entry.get("ip") == ip:
            return entry
    raise ClusterError(f"hafloatd on {node.name} has no status for {ip}: {reply}")


async def metrics_text(node: ClusterNode, timeout: float = 5.0) -> str:
    url = f"http://{node.address}:{METRICS_PORT}/metrics"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session, session.get(url) as reply:
        return await reply.text()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def monitors_answered(node: ClusterNode) -> float:
    """How many monitor requests this daemon process has answered (a counter)."""
    text = await metrics_text(node)
    return metric_sum(text, "hafloatd_control_requests_total", op="monitor")
