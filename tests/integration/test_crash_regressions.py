"""Regressions found by the crash-consistency test (test_crash_consistency.py): black-box, real
daemon processes, the real simulator, the control socket as the OCF agent uses it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hafloatd.control.client import request
from hafloatd.errors import ControlError
from hafloatd.lab.nodes import DaemonNode, make_node
from hafloatd.lab.sim import Simulator
from tests.integration.crash_support import settle, wait_until

IP = "203.0.113.10"


@pytest.fixture
async def node1(simulator: Simulator, tmp_path: Path) -> AsyncIterator[DaemonNode]:
    node = make_node(
        simulator, "node1", 1001, tmp_path, ips=[{"address": IP, "on_stop": "unassign"}]
    )
    await node.start()
    yield node
    await node.stop()


async def ask(node: DaemonNode, op: str) -> dict[str, object]:
    return await request(node.socket_path, {"op": op, "ip": IP, "deadline_ms": 10000}, 12)


async def test_an_unassign_in_flight_when_the_daemon_died_cannot_undo_the_next_start(
    simulator: Simulator, node1: DaemonNode
) -> None:
    """kill -9 while the stop's unassign POST is on its way (DigitalOcean applies it 1 s
    later); the restarted daemon's next start must not answer 0 from the IP still pointing
    here, only for the old unassign to take it away after the reply."""
    assert (await ask(node1, "start"))["ocf"] == 0
    held = simulator.faults.latency(1.0, endpoint="post_action", count=1)
    stopping = asyncio.create_task(ask(node1, "stop"))
    await wait_until(lambda: held.hits > 0, 5, "the unassign POST to arrive")
    await node1.kill()
    with pytest.raises(ControlError):
        await stopping  # the agent would answer 0 and leave a stop record
    await node1.start()
    reply = await ask(node1, "start")
    await settle(simulator)  # the old unassign has landed by now
    assert reply["ocf"] == 0, reply
    assert simulator.holder(IP) == 1001, simulator.holder_history(IP)
    assert (await ask(node1, "monitor"))["ocf"] == 0
