"""SO_PEERCRED checks with REAL client processes running as other users (needs root).

The socket directory is made traversable for these tests only (the temp parent gets 0711);
the socket itself keeps its production mode 0660, with a group chosen per test.
"""

# ruff: noqa: F811  (fixtures imported from test_control_support are test parameters)

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop

from hafloatd.config import ControlConfig
from hafloatd.control.server import ControlServer
from hafloatd.metrics import Metrics
from tests.integration.test_control_support import (  # noqa: F401  (fixtures)
    WAIT_S,
    ServerFactory,
    StandInHandler,
    _no_blocking_calls,
    handler,
    make_server,
    metrics,
    requests_total,
    short_dir,
    socket_path,
)

pytestmark = pytest.mark.needs_root

REPO_ROOT = Path(__file__).resolve().parents[2]
HAFLOATD = str(Path(sys.executable).with_name("hafloatd"))  # the installed console script

# Stdlib only, like the OCF agent: connect, send one request, print the reply line.
RAW_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("CONNECT-ERROR", exc.errno)
    sys.exit(0)
s.sendall(b'{"op": "status"}\n')
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
s.settimeout(0.5)
try:
    state = "EOF" if s.recv(4096) == b"" else "DATA"
except TimeoutError:
    state = "OPEN"  # the server keeps the connection for further requests
print(data.decode().strip())
print(state)
"""

# The project's own client, to check the message an operator sees.
HAFLOATD_CLIENT = r"""
import sys
from hafloatd.control.client import request_sync
from hafloatd.errors import ControlError
try:
    print(request_sync(sys.argv[1], {"op": "status"}, 5.0))
except ControlError as exc:
    print("ControlError:", exc)
"""


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run clients as other users")
    for user in ("nobody", "hacluster"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip(f"user {user} does not exist")


async def open_parent(short_dir: Path) -> None:
    await asyncio.to_thread(os.chmod, short_dir, 0o711)


async def spawn_as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a process as ``user`` to completion.

    subprocess.run in a worker thread: uvloop's subprocess API has no user/group switch.
    Its timeout kills the child (by its PID) and reaps it.
    """
    account = pwd.getpwnam(user)
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        # user= alone only changes the uid: drop root's gid and groups too, like su would.
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=os.getgrouplist(user, account.pw_gid),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=WAIT_S * 2,
        check=False,
    )


async def run_as(user: str, *argv: str) -> list[str]:
    """Run a process as ``user``; return its stdout lines (it must exit 0)."""
    completed = await spawn_as(user, *argv)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


async def raw_status_as(user: str, path: str) -> tuple[dict[str, Any], str]:
    lines = await run_as(user, "/usr/bin/python3", "-c", RAW_CLIENT, path)
    assert len(lines) == 2, lines
    return json.loads(lines[0]), lines[1]


async def test_peer_running_as_nobody_is_refused_with_ocf_4_and_disconnected(
    make_server: ServerFactory, short_dir: Path, handler: StandInHandler, metrics: Metrics
) -> None:
    await open_parent(short_dir)
    # Group nogroup lets nobody reach the 0660 socket, so the peer check is what refuses it.
    server = await make_server(group="nogroup")
    reply, after = await raw_status_as("nobody", server.socket_path)
    nobody_uid = pwd.getpwnam("nobody").pw_uid
    assert reply == {"ok": False, "ocf": 4, "reason": f"peer uid={nobody_uid} not allowed"}
    assert after == "EOF"
    assert handler.requests == []
    assert requests_total(metrics, "unknown", "denied") == 1


async def test_peer_running_as_hacluster_is_served_with_the_default_mode_and_group(
    make_server: ServerFactory, short_dir: Path, handler: StandInHandler
) -> None:
    await open_parent(short_dir)
    server = await make_server()  # 0660 root:haclient in a 0750 root:haclient directory
    reply, after = await raw_status_as("hacluster", server.socket_path)
    assert reply["ok"] is True and reply["op"] == "status"
    assert after == "OPEN"  # allowed peers keep their connection for more requests
    [request] = handler.requests
    assert request.peer.uid == pwd.getpwnam("hacluster").pw_uid


async def test_allowed_groups_admit_a_peer_by_its_gid(
    make_server: ServerFactory, short_dir: Path, handler: StandInHandler
) -> None:
    await open_parent(short_dir)
    server = await make_server(group="nogroup", allowed_groups=("nogroup",))
    reply, _after = await raw_status_as("nobody", server.socket_path)
    assert reply["ok"] is True
    assert handler.requests[0].peer.uid == pwd.getpwnam("nobody").pw_uid


async def test_outsider_cannot_reach_the_default_socket_and_is_told_what_to_do(
    make_server: ServerFactory, short_dir: Path, handler: StandInHandler
) -> None:
    await open_parent(short_dir)
    server = await make_server()
    lines = await run_as("nobody", sys.executable, "-c", HAFLOATD_CLIENT, server.socket_path)
    assert lines == [
        f"ControlError: permission denied on {server.socket_path} for uid "
        f"{pwd.getpwnam('nobody').pw_uid}: run as root or as a member of haclient"
    ]
    assert handler.requests == []


# --- `hafloatd status` as a real process: a refusal is explained, never an empty table ------


async def test_status_as_a_refused_user_says_why_and_what_to_do(
    make_server: ServerFactory, short_dir: Path, handler: StandInHandler
) -> None:
    await open_parent(short_dir)
    server = await make_server(group="nogroup")  # nobody reaches the socket; the peer check refuses
    result = await spawn_as("nobody", HAFLOATD, "status", "--socket", server.socket_path)
    uid = pwd.getpwnam("nobody").pw_uid
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"hafloatd status: hafloatd on {server.socket_path} refused user nobody (uid {uid}): "
        f"peer uid={uid} not allowed; run as root, or add nobody to control.allowed_users and "
        f"reload (systemctl reload hafloatd)"
    ]
    assert handler.requests == []


async def test_status_json_as_a_refused_user_prints_the_reply_and_the_reason(
    make_server: ServerFactory, short_dir: Path
) -> None:
    await open_parent(short_dir)
    server = await make_server(group="nogroup")
    result = await spawn_as("nobody", HAFLOATD, "status", "--json", "--socket", server.socket_path)
    uid = pwd.getpwnam("nobody").pw_uid
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "ocf": 4,
        "reason": f"peer uid={uid} not allowed",
    }
    assert f"refused user nobody (uid {uid}): peer uid={uid} not allowed" in result.stderr


async def test_status_without_access_to_the_socket_says_why(
    make_server: ServerFactory, short_dir: Path
) -> None:
    await open_parent(short_dir)
    server = await make_server()  # 0660 root:haclient: nobody cannot even connect
    result = await spawn_as("nobody", HAFLOATD, "status", "--socket", server.socket_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"hafloatd status: permission denied on {server.socket_path} for uid "
        f"{pwd.getpwnam('nobody').pw_uid}: run as root or as a member of haclient"
    ]


async def test_status_as_an_allowed_user_prints_the_table_and_exits_0(
    make_server: ServerFactory, short_dir: Path
) -> None:
    await open_parent(short_dir)
    server = await make_server()
    result = await spawn_as("hacluster", HAFLOATD, "status", "--socket", server.socket_path)
    assert result.returncode == 0, result.stderr
    assert "IP  ROLE  HOLDER" in result.stdout
    assert result.stderr == ""


def test_peer_check_works_under_uvloop(short_dir: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], float]:
        await open_parent(short_dir)
        metrics = Metrics()
        handler = StandInHandler()
        config = ControlConfig(socket_path=str(short_dir / "run" / "control.sock"), group="nogroup")
        server = ControlServer(config, handler, metrics=metrics)
        await server.start()
        try:
            denied, _ = await raw_status_as("nobody", server.socket_path)
            reader, writer = await asyncio.open_unix_connection(server.socket_path)
            writer.write(b'{"op": "status"}\n')
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                allowed = json.loads(await reader.readline())
            writer.close()
        finally:
            await server.close()
        return denied, allowed, requests_total(metrics, "unknown", "denied")

    denied, allowed, denied_count = uvloop.run(scenario())
    assert denied["ocf"] == 4
    assert allowed["ok"] is True
    assert denied_count == 1
