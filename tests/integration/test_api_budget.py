"""The API request budget, black-box: a real daemon at rest against the simulator spends only
its holder checks, on one connection that a start then reuses; the keep-warm GET fills in only
when the holder check is slower than ``api.keepalive_interval``. In process: the API's sockets
have TCP keepalive on, and a connection dropped at rest is counted and said once.

Cadences are shortened (a holder check every 200 ms against a 1 s keep-warm) so a rest of
many intervals takes seconds; the tests wait for request counts, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from hafloatd.control.client import request
from hafloatd.deadline import Deadline
from hafloatd.lab.nodes import DaemonNode, make_node
from hafloatd.lab.sim import Simulator
from hafloatd.metrics import Metrics
from tests.integration.test_doapi_support import api_client, sample
from tests.sim_fixtures import IP_NYC, IP_SFO

IP = IP_NYC  # unassigned in the simulator's scenario: a start POSTs an assign
REST_CHECKS = 12  # holder checks to sit through: 11 gaps of 200 ms, well past the 1 s keep-warm
MakeNode = Callable[..., Awaitable[DaemonNode]]


@pytest.fixture
async def make_daemon(simulator: Simulator, tmp_path: Path) -> AsyncIterator[MakeNode]:
    nodes: list[DaemonNode] = []

    async def factory(api: dict[str, Any]) -> DaemonNode:
        node = make_node(simulator, "node1", 1001, tmp_path, extra={"api": api})
        nodes.append(node)
        await node.start()
        return node

    yield factory
    for node in nodes:
        await node.stop()


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def ask(daemon: DaemonNode, op: str, **fields: Any) -> dict[str, Any]:
    return await request(daemon.socket_path, {"op": op, "deadline_ms": 5000, **fields}, 7.0)


async def scrape(daemon: DaemonNode) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(daemon.metrics_url) as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hafloatd_api_") and " " in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def human_status(daemon: DaemonNode) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hafloatd.cli", "status", "--socket", daemon.socket_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=daemon.env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_at_rest_only_holder_checks_are_sent_and_a_start_reuses_their_connection(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    daemon = await make_daemon(
        {"holder_check_interval": "200ms", "keepalive_interval": "1s", "hourly_budget": 40}
    )
    await wait_for(
        lambda: bool(simulator.requests("get_reserved_ip")), 10, "the first holder check"
    )
    simulator.clear_exchanges()  # from here on, counters.connections counts new connections

    await wait_for(
        lambda: len(simulator.requests("get_reserved_ip")) >= REST_CHECKS, 20, "holder checks"
    )
    rest = list(simulator.exchanges)
    # Only holder checks, although the API was never quiet for keepalive_interval (1 s)...
    assert {(e.method, e.endpoint, e.ip) for e in rest} == {("GET", "get_reserved_ip", IP)}
    assert simulator.requests("list_reserved_ips") == []
    # ...all on the connection the daemon opened at startup.
    assert simulator.counters.connections == 0
    [warm] = {e.connection_id for e in rest}

    reply = await ask(daemon, "start", ip=IP)
    assert reply["ocf"] == 0, reply
    [post] = simulator.posts(IP, droplet_id=1001)
    assert post.connection_id == warm  # one round trip: no TCP or TLS handshake first
    assert simulator.counters.connections == 0
    assert {e.connection_id for e in simulator.exchanges} == {warm}

    api = (await ask(daemon, "status"))["api"]
    assert api["hourly_budget"] == 40
    assert api["connections_opened"] == 1
    assert api["requests_last_hour"] >= len(rest) + 1
    metrics = await scrape(daemon)
    assert metrics["hafloatd_api_connections_opened_total"] == 1.0
    assert metrics["hafloatd_api_hourly_budget"] == 40.0
    assert metrics["hafloatd_api_requests_last_hour"] >= len(rest) + 1
    assert "(budget 40/hour idle)  connections opened 1" in await human_status(daemon)
    assert "event=api_connection_reopened" not in daemon.log()
    assert "event=api_over_budget" in daemon.log()  # 5 checks/s is far over 40/hour


async def test_keep_warm_fills_in_when_the_holder_check_is_slower(
    simulator: Simulator, make_daemon: MakeNode
) -> None:
    await make_daemon({"holder_check_interval": "10m", "keepalive_interval": "300ms"})
    await wait_for(
        lambda: len(simulator.requests("list_reserved_ips")) >= 3, 20, "three keep-warm GETs"
    )
    exchanges = list(simulator.exchanges)
    assert {e.endpoint for e in exchanges} == {"get_reserved_ip", "list_reserved_ips"}
    assert len(simulator.requests("get_reserved_ip")) == 1  # the startup check; next in 10 min
    assert len({e.connection_id for e in exchanges}) == 1
    assert all(e.query["per_page"] == "1" for e in simulator.requests("list_reserved_ips"))


# -- in process: the client's sockets ------------------------------------------------------------


def _tcp_sockets() -> list[tuple[int, int, str, int, int]]:
    """IPv4 TCP sockets of this network namespace: (local port, remote port, state, timer,
    inode), from /proc/net/tcp (state 01 established, 08 close-wait; timer 2: keepalive)."""
    rows = []
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            local, remote, state, timer = fields[1], fields[2], fields[3], fields[5]
            rows.append(
                (
                    int(local.split(":")[1], 16),
                    int(remote.split(":")[1], 16),
                    state,
                    int(timer.split(":")[0], 16),
                    int(fields[9]),
                )
            )
    return rows


def _fd_of_inode(inode: int) -> int:
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == f"socket:[{inode}]":
                return int(name)
    raise AssertionError(f"socket inode {inode} is not this process's")


async def test_api_connections_have_tcp_keepalive_and_a_drop_at_rest_is_counted_once(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    port = urlsplit(simulator.api_url).port
    metrics = Metrics()
    caplog.set_level(logging.DEBUG, logger="hafloatd.doapi")
    async with api_client(simulator, metrics=metrics) as api:
        await api.get_reserved_ip(IP_SFO, Deadline.after(5))
        clients = [row for row in _tcp_sockets() if row[1] == port and row[2] == "01"]
        assert len(clients) == 1
        client_port, _, _, timer, _ = clients[0]
        assert timer == 2  # the kernel runs the keepalive timer on it

        # The server closes the idle connection (as a server idle timeout or a middlebox would).
        [server] = [row for row in _tcp_sockets() if row[0] == port and row[1] == client_port]
        with socket.socket(fileno=os.dup(_fd_of_inode(server[4]))) as server_side:
            server_side.shutdown(socket.SHUT_RDWR)
        await wait_for(
            lambda: any(r[0] == client_port and r[2] == "08" for r in _tcp_sockets()),
            5,
            "the client to see the server's FIN",
        )
        await api.get_reserved_ip(IP_SFO, Deadline.after(5))
        await api.get_reserved_ip(IP_SFO, Deadline.after(5))  # on the new one: nothing to say
        assert api.connections_opened == 2
        assert api.requests_last_hour >= 3
    assert sample(metrics, "hafloatd_api_connections_opened_total") == 2.0
    reopened = [r for r in caplog.records if "event=api_connection_reopened" in r.getMessage()]
    assert len(reopened) == 1
    assert reopened[0].levelno == logging.INFO
    assert "connections_opened=2" in reopened[0].getMessage()
