"""The real daemon as a process, driven by the real OCF agent, against the simulator."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hafloatd.lab.nodes import (
    DaemonNode,
    NginxWeb,
    StandInWeb,
    make_node,
    nginx_web,
)
from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_INSTALLED, OCF_NOT_RUNNING = 0, 1, 5, 7


@pytest.fixture
async def node1(node1_configured: DaemonNode) -> DaemonNode:
    await node1_configured.start()
    return node1_configured


@pytest.fixture
async def node2(simulator: Simulator, tmp_path: Path) -> AsyncIterator[DaemonNode]:
    node = make_node(simulator, "node2", 1002, tmp_path)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def wait_health(node: DaemonNode, expected_rc: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while (await node.agent("monitor", interval_ms=10000)).rc != expected_rc:
            await asyncio.sleep(0.05)


async def test_start_assigns_confirms_and_monitor_reports_running(
    simulator: Simulator, node1: DaemonNode
) -> None:
    assert (await node1.agent("monitor", interval_ms=0)).rc == OCF_NOT_RUNNING
    result = await node1.agent("start")
    assert result.rc == OCF_SUCCESS, result.stderr
    assert simulator.holder(IP) == 1001
    assert len(simulator.posts(IP)) == 1
    monitor = await node1.agent("monitor", interval_ms=10000)
    assert monitor.rc == OCF_SUCCESS, monitor.stderr


async def test_start_is_idempotent_when_ip_already_held(
    simulator: Simulator, node1: DaemonNode
) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    assert len(simulator.posts(IP)) == 1


async def test_concurrent_starts_send_one_post(simulator: Simulator, node1: DaemonNode) -> None:
    results = await asyncio.gather(*(node1.agent("start") for _ in range(5)))
    assert [r.rc for r in results] == [OCF_SUCCESS] * 5
    assert len(simulator.posts(IP)) == 1


async def test_failover_moves_ip_to_second_node_with_one_post(
    simulator: Simulator, node1: DaemonNode, node2: DaemonNode
) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    assert (await node1.agent("stop")).rc == OCF_SUCCESS
    assert (await node1.agent("monitor", interval_ms=10000)).rc == OCF_NOT_RUNNING
    result = await node2.agent("start", node="node2")
    assert result.rc == OCF_SUCCESS, result.stderr
    assert simulator.holder(IP) == 1002
    assert len(simulator.posts(IP)) == 2
    assert (await node2.agent("monitor", interval_ms=10000)).rc == OCF_SUCCESS


async def test_monitor_fails_when_ip_taken_by_other_droplet(
    simulator: Simulator, node1: DaemonNode
) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    simulator.force_holder(IP, 1002)
    async with asyncio.timeout(10):
        while (result := await node1.agent("monitor", interval_ms=10000)).rc == OCF_SUCCESS:
            await asyncio.sleep(0.05)
    assert result.rc == OCF_ERR_GENERIC
    assert "1002" in result.exit_reason or "not this droplet" in result.exit_reason


async def test_monitor_fails_when_health_falls_and_recovers_on_rise(
    node1: DaemonNode, web1: StandInWeb
) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    await wait_health(node1, OCF_SUCCESS)
    web1.status = 503
    await wait_health(node1, OCF_ERR_GENERIC)
    result = await node1.agent("monitor", interval_ms=10000)
    assert "health" in result.exit_reason
    web1.status = 200
    await wait_health(node1, OCF_SUCCESS)


async def test_probe_of_unknown_ip_is_not_running_and_validate_is_not_installed(
    node1: DaemonNode,
) -> None:
    assert (await node1.agent("monitor", ip="203.0.113.99")).rc == OCF_NOT_RUNNING
    result = await node1.agent("validate-all", ip="203.0.113.99")
    assert result.rc == OCF_ERR_INSTALLED
    assert "203.0.113.99" in result.exit_reason
    assert (await node1.agent("validate-all")).rc == OCF_SUCCESS


async def test_role_survives_daemon_restart(simulator: Simulator, node1: DaemonNode) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    assert await node1.stop() == 0
    await node1.start()
    assert (await node1.agent("monitor", interval_ms=0)).rc == OCF_SUCCESS
    assert len(simulator.posts(IP)) == 1


async def test_daemon_down_outcomes(node1: DaemonNode) -> None:
    await node1.stop()
    # each waits for the daemon until its deadline (0.5 s of a 1 s timeout), then answers
    down = {"timeout_ms": 1000}
    assert (await node1.agent("monitor", interval_ms=0, **down)).rc == OCF_NOT_RUNNING
    assert (await node1.agent("stop", **down)).rc == OCF_SUCCESS
    monitor = await node1.agent("monitor", interval_ms=10000, **down)
    assert monitor.rc == OCF_ERR_GENERIC
    start = await node1.agent("start", **down)
    assert start.rc == OCF_ERR_GENERIC
    assert "unreachable" in start.exit_reason


async def kill_daemon(node: DaemonNode) -> None:
    """SIGKILL, as the OOM killer or a crash would: no cleanup, the socket file stays."""
    assert node.proc is not None
    node.proc.kill()
    await node.proc.wait()
    await node.stop()  # forget the reaped process


@pytest.mark.parametrize("holder_answer_delay_s", [0.0, 0.3])
async def test_recurring_monitor_waits_out_a_daemon_restart(
    simulator: Simulator, node1: DaemonNode, holder_answer_delay_s: float
) -> None:
    # Defect 10: systemd restarts a killed daemon in ~2 s; a monitor falling into that gap
    # must not answer "failed" (Pacemaker would move the IP for nothing). Nor may the
    # restarted daemon answer it before it knows who holds the IP (slow sources show it).
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    await kill_daemon(node1)
    if holder_answer_delay_s:
        simulator.faults.metadata_slow(holder_answer_delay_s, droplet_id=node1.droplet_id)
        simulator.faults.latency(holder_answer_delay_s, endpoint="get_reserved_ip")
    monitor = asyncio.ensure_future(node1.agent("monitor", interval_ms=10000))
    done, _ = await asyncio.wait({monitor}, timeout=1.0)  # systemd's RestartSec, shortened
    assert not done, f"answered while the daemon was down: {monitor.result()}"
    await node1.start()
    result = await monitor
    assert result.rc == OCF_SUCCESS, result.stderr


async def test_stop_while_the_daemon_is_down_holds_after_its_restart(
    simulator: Simulator, node1: DaemonNode
) -> None:
    # Defect 6: a stop answered while the daemon is down must not be undone by its restart
    # (the persisted role said started: "resource might be active on 2 nodes").
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    await kill_daemon(node1)
    stop = await node1.agent("stop")
    assert stop.rc == OCF_SUCCESS
    assert "assumed stopped" in stop.stderr
    record = Path(node1.socket_path).parent / f"stopped-{IP}"
    assert record.is_file()
    await node1.start()
    assert not record.exists()  # consumed by the daemon
    assert (await node1.agent("monitor", interval_ms=0)).rc == OCF_NOT_RUNNING
    assert (await node1.agent("monitor", interval_ms=10000)).rc == OCF_NOT_RUNNING
    assert await node1.stop() == 0  # and persisted: a clean restart keeps it
    await node1.start()
    assert (await node1.agent("monitor", interval_ms=0)).rc == OCF_NOT_RUNNING
    assert len(simulator.posts(IP)) == 1


async def test_stop_record_older_than_a_later_start_is_ignored(node1: DaemonNode) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    await kill_daemon(node1)
    record = Path(node1.socket_path).parent / f"stopped-{IP}"
    # a stop recorded before the start that the role file remembers
    record.write_text(f'{{"ip":"{IP}","stopped_at":{time.time() - 3600},"resource":null}}\n')
    await node1.start()
    assert not record.exists()
    assert (await node1.agent("monitor", interval_ms=0)).rc == OCF_SUCCESS


async def test_api_down_start_fails_within_deadline(
    simulator: Simulator, node1: DaemonNode
) -> None:
    simulator.faults.server_errors(None, endpoint="post_action,get_reserved_ip", status=503)
    result = await node1.agent("start", timeout_ms=3000)
    assert result.rc == OCF_ERR_GENERIC
    # The daemon's own answer, within its 2.5 s deadline: not the agent giving up on a
    # daemon still retrying (whose budget ends before Pacemaker's 3 s, see the unit tests).
    assert "503" in result.exit_reason, result.exit_reason
    assert "no answer to op=start" not in result.stderr


async def test_sigterm_stops_daemon_cleanly_and_token_never_logged(node1: DaemonNode) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    assert node1.notify is not None
    await node1.signal(signal.SIGTERM)
    await node1.notify.wait_for("STOPPING=1")
    assert await node1.stop() == 0
    assert "test-token" not in node1.log()


async def test_metrics_served_after_failover(node1: DaemonNode) -> None:
    assert (await node1.agent("start")).rc == OCF_SUCCESS
    async with aiohttp.ClientSession() as session, session.get(node1.metrics_url) as resp:
        text = await resp.text()
    assert resp.status == 200
    assert 'hafloatd_failovers_total{ip="203.0.113.10",outcome="moved"} 1.0' in text
    assert "test-token" not in text


@pytest.mark.skipif(not NginxWeb.available(), reason="nginx (Debian nginx-light) not installed")
async def test_monitor_fails_when_real_nginx_stops_and_recovers_when_it_returns(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with nginx_web("node1", tmp_path) as nginx:
        simulator.set_backend(1001, nginx.backend)
        node = make_node(simulator, "node1", 1001, tmp_path, health_url=nginx.url)
        await node.start()
        try:
            assert (await node.agent("start")).rc == OCF_SUCCESS
            await wait_health(node, OCF_SUCCESS)
            await nginx.stop()
            await wait_health(node, OCF_ERR_GENERIC)
            result = await node.agent("monitor", interval_ms=10000)
            assert "health" in result.exit_reason
            await nginx.start()
            await wait_health(node, OCF_SUCCESS)
        finally:
            await node.stop()


async def test_start_over_tls_posts_on_the_connection_warmed_at_startup(
    tls_simulator: Simulator, tmp_path: Path
) -> None:
    node = make_node(tls_simulator, "node1", 1001, tmp_path)
    await node.start()
    try:
        async with asyncio.timeout(10):  # the startup holder check opened (and warmed) it
            while not tls_simulator.requests("get_reserved_ip", ip=IP):
                await asyncio.sleep(0.02)
        assert (await node.agent("start")).rc == OCF_SUCCESS
    finally:
        await node.stop()
    (warm_up, *_) = tls_simulator.requests("get_reserved_ip", ip=IP)
    (post,) = tls_simulator.posts(IP)
    assert post.connection_id == warm_up.connection_id  # no new TCP or TLS handshake
    assert tls_simulator.holder(IP) == 1001
