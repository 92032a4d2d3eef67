"""Regressions of issue 6's truth defects, black-box: real daemons, the real simulator, the
control socket as the OCF agent uses it.

Each test here failed on cdc95e1 (the code the defects were found in). To check that again, run
the daemons from another checkout: ``HAFLOATD_DAEMON_SOURCE=/path/to/old/checkout pytest
tests/integration/test_truth_regressions.py`` (the simulator and the test stay this checkout's).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hafloatd.control.client import request
from hafloatd.lab.nodes import DaemonNode, make_node
from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
MakeNode = Callable[..., Awaitable[DaemonNode]]


@pytest.fixture
async def make_daemon(simulator: Simulator, tmp_path: Path) -> AsyncIterator[MakeNode]:
    nodes: list[DaemonNode] = []

    async def factory(
        name: str, droplet_id: int, *, extra: dict[str, Any] | None = None
    ) -> DaemonNode:
        node = make_node(simulator, name, droplet_id, tmp_path, extra=extra)
        source = os.environ.get("HAFLOATD_DAEMON_SOURCE")
        if source:
            node.env["PYTHONPATH"] = source
        nodes.append(node)
        await node.start()
        return node

    yield factory
    for node in nodes:
        await node.stop()


async def ask(
    daemon: DaemonNode, op: str, deadline_s: float = 5.0, **fields: Any
) -> dict[str, Any]:
    """One control request as the agent sends it; the reply as a dict."""
    message = {"op": op, "ip": IP, "deadline_ms": int(deadline_s * 1000), **fields}
    return await request(daemon.socket_path, message, deadline_s + 2)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


# -- defect 1: a metadata "here" from before the POST confirmed a start -----------------------


async def test_errored_action_fails_the_start_even_when_lagging_metadata_says_here(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    node1 = await make_daemon("node1", 1001)
    node2 = await make_daemon("node2", 1002)
    assert (await ask(node1, "start"))["ocf"] == 0
    lag_s = 1.0

    async def held_for_longer_than_the_lag() -> bool:
        return simulator.holder_at(IP, time.monotonic() - lag_s) == 1001

    await wait_until(held_for_longer_than_the_lag, 5, "node1 to hold the IP for lag_s")
    simulator.set_metadata_lag(lag_s)  # node1's metadata keeps saying "here" for lag_s
    assert (await ask(node1, "stop"))["ocf"] == 0
    assert (await ask(node2, "start"))["ocf"] == 0
    simulator.faults.errored_actions(1)
    reply = await ask(node1, "start")
    assert simulator.holder(IP) == 1002
    assert reply["ocf"] != 0, reply  # the action errored: nothing moved here


# -- defect 2: a locked IP read as "already held" --------------------------------------------


async def test_start_while_another_droplets_assign_is_pending_is_not_already_held(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    node1 = await make_daemon("node1", 1001)
    node2 = await make_daemon("node2", 1002)
    assert (await ask(node1, "start"))["ocf"] == 0
    simulator.faults.stuck_actions(1)
    moving = asyncio.create_task(ask(node2, "start", 20.0))
    async with asyncio.timeout(5):
        while not simulator.locked(IP):
            await asyncio.sleep(0.01)
    reply = await ask(node1, "start", 1.5)  # Pacemaker's repeated start on node1
    still_locked = simulator.locked(IP)
    simulator.finish_stuck_actions()
    await moving
    assert not (reply["ocf"] == 0 and still_locked), f"held while in flux: {reply}"


# -- defect 3: an operation owned by its caller ------------------------------------------------


async def test_a_stop_that_gave_up_cannot_undo_a_later_start(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    """The stop's unassign action outlives the stop (stuck, then completes): the next start
    must wait for it, not answer "already here" from the IP it is about to lose."""
    node1 = await make_daemon(
        "node1", 1001, extra={"ips": [{"address": IP, "on_stop": "unassign"}]}
    )
    assert (await ask(node1, "start"))["ocf"] == 0
    simulator.faults.stuck_actions(1)
    assert (await ask(node1, "stop", 1.0))["ocf"] == 0  # stop never fails
    gets_before = len(simulator.requests("get_reserved_ip"))
    starting = asyncio.create_task(ask(node1, "start", 10.0))

    async def start_looked_or_answered() -> bool:
        return starting.done() or len(simulator.requests("get_reserved_ip")) > gets_before

    await wait_until(start_looked_or_answered, 5, "the start to look at the IP")
    simulator.finish_stuck_actions()  # the stop's unassign lands now
    reply = await starting
    await simulator.wait_idle()
    assert reply["ocf"] == 0, reply
    assert simulator.holder(IP) == 1001, simulator.holder_history(IP)
    assert (await ask(node1, "monitor"))["ocf"] == 0


# -- defect 4: a role-file error failed a stop -------------------------------------------------


async def test_stop_succeeds_when_the_role_cannot_be_written(make_daemon: MakeNode) -> None:
    node1 = await make_daemon("node1", 1001)
    assert (await ask(node1, "start"))["ocf"] == 0
    role_file = Path(node1.config["state_dir"]) / f"role-{IP}.json"
    role_file.unlink()
    role_file.mkdir()  # nothing can be renamed over a directory
    try:
        reply = await ask(node1, "stop")
        assert reply["ocf"] == 0, reply
        assert (await ask(node1, "monitor"))["ocf"] == 7
        status = await request(node1.socket_path, {"op": "status", "deadline_ms": 5000}, 5)
        entry = status["ips"][0]
        assert entry["role_persisted"] is False
        assert str(role_file) in entry["role_persist_error"]
    finally:
        shutil.rmtree(role_file)


# -- defect 11: failure notification forgotten after a restart ---------------------------------


async def test_failure_notification_is_armed_again_after_a_restart(
    make_daemon: MakeNode, tmp_path: Path
) -> None:
    calls = tmp_path / "crm_resource.calls"
    crm_resource = tmp_path / "crm_resource"
    crm_resource.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    crm_resource.chmod(stat.S_IRWXU)
    node1 = await make_daemon(
        "node1",
        1001,
        extra={
            "pacemaker": {"notify_failures": True, "crm_resource": str(crm_resource)},
        },
    )
    reply = await ask(node1, "start", resource="FloatIP", node="node1")
    assert reply["ocf"] == 0
    await node1.stop()
    # Restarted with a health check that fails (nobody listens on port 9): the fall must
    # reach Pacemaker, though no start told this daemon process the names.
    node1.config["health"] = {
        "url": "http://127.0.0.1:9/",
        "interval": "100ms",
        "timeout": "80ms",
        "rise": 1,
        "fall": 1,
    }
    await node1.start()

    async def notified() -> bool:
        return calls.exists() and "--fail" in calls.read_text()

    await wait_until(notified, 10, "crm_resource --fail")
    assert "FloatIP" in calls.read_text() and "node1" in calls.read_text()


# -- defects 12 and 14: an old API answer outvoted newer metadata ------------------------------


async def test_a_move_away_during_an_api_outage_is_seen_within_the_freshness_bound(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    node1 = await make_daemon("node1", 1001)
    assert (await ask(node1, "start"))["ocf"] == 0
    simulator.faults.server_errors(None, endpoint="*", status=503)
    simulator.move_out_of_band(IP, 1002)
    # metadata: poll 200ms, timeout 1s, lag 2s (default): bound 3*0.2 + 1 + 2 = 3.6 s
    bound_s = 3.6

    async def answers_not_running() -> bool:
        return (await ask(node1, "monitor"))["ocf"] != 0

    await wait_until(answers_not_running, bound_s + 1.0, "monitor to stop answering 0")
    reason = (await ask(node1, "monitor"))["reason"]
    assert "no droplet" not in reason, reason  # it is on droplet 1002: do not claim "none"


# -- defect 15: "already here" from a cached view ------------------------------------------------


async def test_a_repeated_start_right_after_an_out_of_band_move_does_not_answer_from_cache(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    node1 = await make_daemon("node1", 1001)
    assert (await ask(node1, "start"))["ocf"] == 0
    simulator.move_out_of_band(IP, 1002)  # locked until the action completes
    reply = await ask(node1, "start")
    locked_at_reply = simulator.locked(IP)
    await simulator.wait_idle()
    assert reply["ocf"] == 0, reply
    assert not locked_at_reply, json.dumps(reply)
    assert simulator.holder(IP) == 1001, simulator.holder_history(IP)
