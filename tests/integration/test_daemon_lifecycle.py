"""Daemon lifecycle as a process: sd_notify, SIGHUP reload, status, Pacemaker notification."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from hafloatd.control.client import request
from hafloatd.lab.nodes import (
    REPO,
    DaemonNode,
    StandInWeb,
)
from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
OTHER_IP = "203.0.113.30"
# An injected latency no deadline in these tests comes near; the simulator ends the held
# request when it stops.
POST_HELD_S = 600.0


async def status_json(daemon: DaemonNode) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hafloatd.cli",
        "status",
        "--json",
        "--socket",
        daemon.socket_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**daemon.env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def node1(node1_configured: DaemonNode) -> DaemonNode:
    return node1_configured


async def test_ready_status_and_watchdog_pings_reach_notify_socket(node1: DaemonNode) -> None:
    node1.env["WATCHDOG_USEC"] = "200000"  # 0.2 s: pings every 0.1 s
    await node1.start()
    assert node1.notify is not None
    assert node1.pid is not None
    await node1.notify.wait_for("WATCHDOG=1", timeout=5)
    await node1.notify.wait_for("WATCHDOG=1", timeout=5)


async def test_the_lab_reads_every_notify_message_so_a_long_lived_daemon_drops_none(
    node1: DaemonNode,
) -> None:
    """The lab's notify socket is read as messages arrive, as systemd reads its own: nobody
    waiting on it, 30 watchdog pings (3x the kernel's datagram queue of 10 here) all arrive,
    and the daemon never finds the socket full (it logged sd_notify_dropped when it did)."""
    node1.env["WATCHDOG_USEC"] = "200000"  # a ping every 0.1 s
    await node1.start()
    notify = node1.notify
    assert notify is not None

    def pings() -> int:
        return sum("WATCHDOG=1" in message for message in notify.messages)

    async with asyncio.timeout(15):
        while pings() < 30:
            await asyncio.sleep(0.05)
    assert "sd_notify_dropped" not in node1.log()


async def test_sighup_reload_applies_new_ips_and_rejects_bad_config(
    simulator: Simulator, node1: DaemonNode
) -> None:
    await node1.start()
    assert node1.notify is not None
    validate = await node1.agent("validate-all", ip=OTHER_IP)
    assert validate.rc == 5

    good = dict(node1.config)
    good["ips"] = [{"address": IP}, {"address": OTHER_IP, "on_stop": "unassign"}]
    good["api"] = {**good["api"], "request_timeout": "3s"}  # needs a restart: kept, said so
    node1.write_config(good)
    await node1.signal(signal.SIGHUP)
    await node1.notify.wait_for("RELOADING=1")
    await node1.notify.wait_for("READY=1")
    assert (await node1.agent("validate-all", ip=OTHER_IP)).rc == 0
    assert "event=reload_partial kept_old=api" in node1.log()

    bad = dict(good)
    bad["health"] = {**good["health"], "fall": -1}
    node1.config_path.write_text(yaml.safe_dump(bad))
    await node1.signal(signal.SIGHUP)
    await node1.notify.wait_for("RELOADING=1")
    status_line = await node1.notify.wait_for("READY=1")
    assert "reload rejected" in status_line
    assert "health.fall" in node1.log()
    # The old (good) configuration is still in force and the daemon still serves.
    assert (await node1.agent("validate-all", ip=OTHER_IP)).rc == 0
    assert (await node1.agent("start")).rc == 0


async def test_status_reports_role_holder_timeline_and_token_state(
    simulator: Simulator, node1: DaemonNode
) -> None:
    await node1.start()
    assert (await node1.agent("start")).rc == 0
    status = await status_json(node1)
    assert status["droplet"]["id"] == 1001
    assert status["api"]["token_valid"] is True
    assert status["api"]["ratelimit_remaining"] is not None
    (entry,) = status["ips"]
    assert entry["role"] == "started"
    assert entry["held_here"] is True
    timeline = entry["last_failover"]
    assert timeline["outcome"] == "moved"
    stamps = [timeline[p] for p in ("received", "post_sent", "api_accepted", "holder_confirmed")]
    assert stamps == sorted(stamps)
    assert "test-token" not in json.dumps(status)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hafloatd.cli",
        "status",
        "--socket",
        node1.socket_path,
        stdout=asyncio.subprocess.PIPE,
        env={**node1.env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    table = out.decode()
    assert proc.returncode == 0
    assert IP in table
    assert "started" in table
    assert "holder_confirmed+" in table


async def test_status_counts_the_loop_tasks_and_requests_leave_none_behind(
    simulator: Simulator, node1: DaemonNode
) -> None:
    """``tasks`` (what bench/soak watches for a leak): present, sane, and back where it was
    once 400 monitors and statuses on their own connections, a stop and a start are answered."""
    await node1.start()
    assert (await node1.agent("start")).rc == 0

    async def tasks() -> int:
        reply = await request(node1.socket_path, {"op": "status"}, 5)
        count = reply["tasks"]
        assert isinstance(count, int) and not isinstance(count, bool), reply
        return count

    before = await tasks()
    # This request's own connection task and the daemon's own loops; far fewer than 64.
    assert 2 <= before <= 64, before
    monitor = {"op": "monitor", "ip": IP, "resource": "FloatIP", "node": "node1"}
    for _ in range(20):
        replies = await asyncio.gather(
            *(request(node1.socket_path, monitor, 5) for _ in range(18)),
            *(request(node1.socket_path, {"op": "status"}, 5) for _ in range(2)),
        )
        assert all(reply["ok"] for reply in replies), replies
    assert (await node1.agent("stop")).rc == 0
    assert (await node1.agent("start")).rc == 0
    # Work just answered may still be unwinding (a connection closing): give it a moment.
    settle_by = asyncio.get_running_loop().time() + 5
    while (after := await tasks()) > before and asyncio.get_running_loop().time() < settle_by:
        await asyncio.sleep(0.05)
    assert after <= before, f"tasks {before} before the requests, {after} after"


async def test_health_failure_notifies_pacemaker_at_once(
    simulator: Simulator, node1: DaemonNode, web1: StandInWeb, tmp_path: Path
) -> None:
    record = tmp_path / "crm_resource.argv"
    fake = tmp_path / "crm_resource"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    fake.chmod(0o755)
    node1.config["pacemaker"] = {"notify_failures": True, "crm_resource": str(fake)}
    await node1.start()
    assert (await node1.agent("start", resource="FloatIP", node="node1")).rc == 0
    web1.status = 500
    async with asyncio.timeout(10):
        while not record.exists():
            await asyncio.sleep(0.05)
    assert record.read_text().split() == ["--fail", "--resource", "FloatIP", "--node", "node1"]


async def test_deadline_too_short_fails_start_within_it(
    simulator: Simulator, node1: DaemonNode
) -> None:
    # The POST is held far past any deadline here: only the daemon's deadline can end the start.
    simulator.faults.latency(POST_HELD_S, endpoint="post_action")
    await node1.start()
    result = await node1.agent("start", timeout_ms=1000)
    assert result.rc == 1
    # The daemon's own answer naming its deadline, not the agent giving up on a silent daemon
    # ("… unreachable: no answer to op=start within …"; the socket path names this test).
    assert "deadline exceeded" in result.exit_reason, result.exit_reason
    assert "no answer" not in result.exit_reason
    # Answered while the server still held the POST: the deadline ended it, not an answer.
    assert simulator.posts() == []
    assert simulator.holder(IP) is None


async def test_bad_token_fails_start_with_permission_code(
    simulator: Simulator, node1: DaemonNode
) -> None:
    node1.env["HAFLOATD_DO_TOKEN"] = "wrong-token-value"
    await node1.start()
    result = await node1.agent("start")
    assert result.rc == 4
    assert "token" in result.exit_reason.lower()
    assert "wrong-token-value" not in result.stderr + node1.log()
    async with aiohttp.ClientSession() as session, session.get(node1.metrics_url) as resp:
        metrics = await resp.text()
    assert "hafloatd_api_token_valid 0.0" in metrics
    assert "wrong-token-value" not in metrics


async def test_check_config_accepts_lab_config(node1: DaemonNode) -> None:
    node1.write_config()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hafloatd.cli",
        "check-config",
        str(node1.config_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()


async def run_daemon_expecting_exit(node: DaemonNode) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hafloatd.cli", "run", "--config", str(node.config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=node.env,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_invalid_config_exits_78_naming_the_key(node1: DaemonNode) -> None:
    node1.config["health"] = {**node1.config["health"], "rise": 0}
    node1.write_config()
    rc, out = await run_daemon_expecting_exit(node1)
    assert rc == 78  # EX_CONFIG: RestartPreventExitStatus keeps systemd from looping
    assert "health.rise" in out


async def test_group_readable_token_file_is_refused_with_the_chmod_to_run(
    node1: DaemonNode, tmp_path: Path
) -> None:
    token_file = tmp_path / "do-token"
    token_file.write_text("test-token\n")
    token_file.chmod(0o640)
    node1.config["api"] = {
        **node1.config["api"],
        "token_source": "file",
        "token_file": str(token_file),
    }
    node1.env.pop("HAFLOATD_DO_TOKEN")
    node1.write_config()
    rc, out = await run_daemon_expecting_exit(node1)
    assert rc == 78
    assert f"chmod 600 {token_file}" in out
    assert "test-token" not in out
