"""hafloatd.control.client against a real ControlServer and against misbehaving stand-ins."""

# ruff: noqa: F811  (fixtures imported from test_control_support are test parameters)

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hafloatd.control.client import ControlConnection, request, request_sync
from hafloatd.errors import ControlError
from tests.integration.test_control_support import (  # noqa: F401  (fixtures)
    WAIT_S,
    ServerFactory,
    StandInHandler,
    _no_blocking_calls,
    handler,
    make_server,
    metrics,
    short_dir,
    socket_path,
)

IP = "203.0.113.10"


async def test_request_returns_the_reply_object(make_server: ServerFactory) -> None:
    server = await make_server()
    reply = await request(server.socket_path, {"op": "start", "ip": IP}, timeout=WAIT_S)
    assert reply == {"ok": True, "ocf": 0, "reason": "", "op": "start", "ip": IP}


async def test_request_sync_returns_the_reply_object(make_server: ServerFactory) -> None:
    server = await make_server()
    reply = await asyncio.to_thread(
        request_sync, server.socket_path, {"op": "monitor", "ip": IP}, WAIT_S
    )
    assert reply == {"ok": False, "ocf": 7, "reason": "role stopped", "ip": IP}


async def test_connection_carries_several_requests(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    server = await make_server()
    async with ControlConnection(server.socket_path) as conn:
        first = await conn.request({"op": "status"})
        second = await conn.request({"op": "stop", "ip": IP})
        await conn.send_line(b"garbage")
        third = await conn.read_reply()
    assert first["ok"] and second["op"] == "stop"
    assert third["ocf"] == 2
    assert len({r.peer.pid for r in handler.requests}) == 1


async def test_missing_socket_asks_whether_hafloatd_is_running(short_dir: Path) -> None:
    path = str(short_dir / "absent.sock")
    with pytest.raises(ControlError, match=r"does not exist: is hafloatd running\?"):
        await request(path, {"op": "status"}, timeout=WAIT_S)
    with pytest.raises(ControlError, match=r"does not exist: is hafloatd running\?"):
        await asyncio.to_thread(request_sync, path, {"op": "status"}, WAIT_S)


async def test_stale_socket_says_nothing_is_listening(short_dir: Path) -> None:
    path = str(short_dir / "stale.sock")

    def leave_stale() -> None:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()

    await asyncio.to_thread(leave_stale)
    with pytest.raises(ControlError, match=r"nothing is listening .* is hafloatd running\?"):
        await request(path, {"op": "status"}, timeout=WAIT_S)
    with pytest.raises(ControlError, match="nothing is listening"):
        await asyncio.to_thread(request_sync, path, {"op": "status"}, WAIT_S)


async def test_stuck_daemon_times_out_with_a_clear_message(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    handler.gate = asyncio.Event()  # the handler never answers
    server = await make_server()
    with pytest.raises(ControlError, match=r"no reply from hafloatd on .* within 0.2s"):
        await request(server.socket_path, {"op": "status"}, timeout=0.2)
    with pytest.raises(ControlError, match=r"no reply from hafloatd on .* within 0.2s"):
        await asyncio.to_thread(request_sync, server.socket_path, {"op": "status"}, 0.2)


async def _serve_once(path: str, answer: bytes) -> asyncio.Server:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(respond, path)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"hello there\n", "garbled reply from hafloatd"),
        (b"[1, 2]\n", "unexpected reply from hafloatd"),
        (b"", "closed the connection on .* without a reply"),
    ],
)
async def test_a_stranger_on_the_socket_is_reported(
    short_dir: Path, answer: bytes, message: str
) -> None:
    path = str(short_dir / "stranger.sock")
    server = await _serve_once(path, answer)
    try:
        with pytest.raises(ControlError, match=message):
            await request(path, {"op": "status"}, timeout=WAIT_S)
        with pytest.raises(ControlError, match=message):
            await asyncio.to_thread(request_sync, path, {"op": "status"}, WAIT_S)
    finally:
        server.close()
        await server.wait_closed()


async def test_unencodable_payload_is_a_control_error(short_dir: Path) -> None:
    with pytest.raises(ControlError, match="cannot encode control request"):
        await asyncio.to_thread(request_sync, str(short_dir / "x.sock"), {"op": object()}, WAIT_S)
