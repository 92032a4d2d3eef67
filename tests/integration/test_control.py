"""ControlServer on a real Unix socket: protocol, limits, permissions, lifecycle."""

# ruff: noqa: F811  (fixtures imported from test_control_support are test parameters)

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import socket
import stat
import time
from pathlib import Path

import pytest

from hafloatd.config import ControlConfig
from hafloatd.control.protocol import DEFAULT_DEADLINE_MS, ControlReply, PeerCred, parse_request
from hafloatd.control.server import ControlServer
from hafloatd.errors import ControlError, ProtocolError, UnknownIpError
from hafloatd.metrics import Metrics
from tests.integration.test_control_support import (  # noqa: F401  (fixtures)
    WAIT_S,
    ServerFactory,
    StandInHandler,
    _no_blocking_calls,
    connect,
    exchange,
    handler,
    make_server,
    metrics,
    read_eof,
    read_reply,
    requests_total,
    short_dir,
    socket_path,
    wait_until,
)

IP = "203.0.113.10"
ME = PeerCred(pid=1, uid=0, gid=0)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- requests and replies -------------------------------------------------------------


async def test_start_request_reaches_the_handler_with_peer_credentials(
    make_server: ServerFactory, handler: StandInHandler, metrics: Metrics
) -> None:
    server = await make_server()
    reply = await exchange(
        server.socket_path,
        line(
            {"op": "start", "ip": IP, "deadline_ms": 15000, "resource": "FloatIP", "node": "node-1"}
        ),
    )
    assert reply == {"ok": True, "ocf": 0, "reason": "", "op": "start", "ip": IP}
    [request] = handler.requests
    assert request.op == "start"
    assert request.ip == IP
    assert request.deadline_ms == 15000
    assert request.resource == "FloatIP"
    assert request.node == "node-1"
    assert request.probe is False
    assert request.peer.pid == os.getpid()
    assert request.peer.uid == os.geteuid()
    assert requests_total(metrics, "start", "ok") == 1


async def test_pipelined_requests_on_one_connection_are_answered_in_order(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    server = await make_server()
    reader, writer = await connect(server.socket_path)
    try:
        writer.write(
            line({"op": "start", "ip": IP})
            + line({"op": "monitor", "ip": IP, "probe": True})
            + line({"op": "status"})
        )
        await writer.drain()
        replies = [await read_reply(reader) for _ in range(3)]
    finally:
        writer.close()
    assert [r["ocf"] for r in replies] == [0, 7, 0]
    assert replies[1] == {"ok": False, "ocf": 7, "reason": "role stopped", "ip": IP}
    assert replies[2]["op"] == "status"
    assert [r.op for r in handler.requests] == ["start", "monitor", "status"]
    assert handler.requests[1].probe is True


async def test_blank_lines_are_ignored(make_server: ServerFactory) -> None:
    server = await make_server()
    reader, writer = await connect(server.socket_path)
    try:
        writer.write(b"\n\r\n  \n" + line({"op": "status"}))
        await writer.drain()
        reply = await read_reply(reader)
    finally:
        writer.close()
    assert reply["ok"] is True


async def test_final_line_without_newline_is_answered_before_close(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    reader, writer = await connect(server.socket_path)
    writer.write(b'{"op": "status"}')
    writer.write_eof()
    reply = await read_reply(reader)
    assert reply["ok"] is True
    assert await read_eof(reader) == b""
    writer.close()


async def test_default_deadline_applies_when_absent(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    server = await make_server()
    await exchange(server.socket_path, line({"op": "stop", "ip": IP}))
    assert handler.requests[0].deadline_ms == DEFAULT_DEADLINE_MS


MALFORMED = [
    pytest.param(b"not json", "not a JSON object", id="not-json"),
    pytest.param(b"[1, 2]", "expected a JSON object, got array", id="array"),
    pytest.param(b'"start"', "expected a JSON object, got string", id="string"),
    pytest.param(b"null", "expected a JSON object, got null", id="null"),
    pytest.param(b"{}", "unknown op null", id="op-missing"),
    pytest.param(b'{"op": "reboot", "ip": "203.0.113.10"}', "unknown op 'reboot'", id="op-unknown"),
    pytest.param(b'{"op": 1}', "unknown op number", id="op-number"),
    pytest.param(b'{"op": "start"}', "op start needs an ip", id="ip-missing"),
    pytest.param(b'{"op": "monitor", "ip": null}', "op monitor needs an ip", id="ip-null"),
    pytest.param(b'{"op": "start", "ip": 42}', "ip must be a string", id="ip-number"),
    pytest.param(b'{"op": "start", "ip": "1.2.3"}', "is not an IPv4 address", id="ip-bad"),
    pytest.param(b'{"op": "start", "ip": "2001:db8::1"}', "is not an IPv4 address", id="ipv6"),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "deadline_ms": -1}',
        "deadline_ms must be >= 0",
        id="deadline-negative",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "deadline_ms": "20s"}',
        "deadline_ms must be an integer, got string",
        id="deadline-string",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "deadline_ms": 1.5}',
        "deadline_ms must be an integer, got number",
        id="deadline-float",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "deadline_ms": true}',
        "deadline_ms must be an integer, got boolean",
        id="deadline-bool",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "deadline_ms": 99999999999}',
        "deadline_ms must be <=",
        id="deadline-huge",
    ),
    pytest.param(
        b'{"op": "monitor", "ip": "203.0.113.10", "probe": "yes"}',
        "probe must be true or false",
        id="probe-string",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "resource": "-rf"}',
        "is not a Pacemaker resource id",
        id="resource-option",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "resource": ["a"]}',
        "resource must be a string, got array",
        id="resource-array",
    ),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "node": "--force"}',
        "is not a Pacemaker node name",
        id="node-option",
    ),
    pytest.param(
        b'{"op": "stop", "op": "start", "ip": "203.0.113.10"}',
        "duplicate key 'op'",
        id="duplicate-key",
    ),
    pytest.param(b"\xff\xfe{}", "not valid UTF-8", id="not-utf8"),
    pytest.param(b"[" * 30000 + b"]" * 30000, "not a JSON object", id="deep-nesting"),
    pytest.param(
        b'{"op": "start", "ip": "203.0.113.10", "deadline_ms": ' + b"9" * 5000 + b"}",
        "not a JSON object",
        id="huge-integer",
    ),
    pytest.param(b'{"op": "status", "x": NaN', "not a JSON object", id="truncated"),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
async def test_malformed_request_gets_ocf_2_and_the_connection_keeps_serving(
    make_server: ServerFactory,
    handler: StandInHandler,
    metrics: Metrics,
    raw: bytes,
    reason: str,
) -> None:
    server = await make_server()
    reader, writer = await connect(server.socket_path)
    try:
        writer.write(raw + b"\n")
        await writer.drain()
        reply = await read_reply(reader)
        assert reply["ok"] is False
        assert reply["ocf"] == 2
        assert reason in reply["reason"]
        assert reply["reason"].startswith("invalid request: ")
        # Same connection, next request: served normally.
        writer.write(line({"op": "status"}))
        await writer.drain()
        assert (await read_reply(reader))["ok"] is True
    finally:
        writer.close()
    # And a new connection too: the daemon did not fall over.
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True
    assert handler.requests and all(r.op == "status" for r in handler.requests)
    assert requests_total(metrics, "unknown", "invalid") == 1


def test_parse_request_normalises_and_ignores_unknown_keys() -> None:
    request = parse_request(
        b'{"op": "validate", "ip": "203.0.113.10", "future_field": {"x": 1}}', ME
    )
    assert request.op == "validate"
    assert request.ip == IP
    assert request.peer is ME
    assert request.deadline().remaining() > 19.0


def test_parse_request_status_needs_no_ip() -> None:
    request = parse_request(b'{"op": "status"}', ME)
    assert request.ip is None
    assert request.resource is None and request.node is None


def test_parse_request_raises_protocol_error_with_ocf_2() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(b"{", ME)
    assert info.value.ocf_code == 2


def test_reply_json_line_puts_ok_ocf_reason_first_and_keeps_them_authoritative() -> None:
    reply = ControlReply(1, "two\nlines", {"ok": True, "role": "x"})
    assert reply.to_json_line() == b'{"ok":false,"ocf":1,"reason":"two lines","role":"x"}\n'


def test_reply_ok_is_derived_from_the_ocf_code() -> None:
    assert ControlReply(0).ok is True
    assert ControlReply(7, "role stopped").ok is False
    assert ControlReply.success(role="started").to_json_line() == (
        b'{"ok":true,"ocf":0,"reason":"","role":"started"}\n'
    )
    assert ControlReply.from_error(UnknownIpError("not mine")) == ControlReply(5, "not mine")


def test_reply_rejects_an_ocf_code_out_of_range() -> None:
    with pytest.raises(ValueError, match="OCF exit code"):
        ControlReply(42)


def test_reply_failure_refuses_the_success_code() -> None:
    with pytest.raises(ValueError, match="use success"):
        ControlReply.failure(0, "not a failure")


# --- limits ---------------------------------------------------------------------------


async def test_oversize_line_gets_an_error_and_the_connection_is_closed(
    make_server: ServerFactory, metrics: Metrics
) -> None:
    server = await make_server(max_line_bytes=1024)
    reader, writer = await connect(server.socket_path)
    try:
        writer.write(b'{"op": "status", "pad": "' + b"x" * 4000 + b'"}\n')
        await writer.drain()
        reply = await read_reply(reader)
        assert reply == {
            "ok": False,
            "ocf": 2,
            "reason": "invalid request: line exceeds 1024 bytes",
        }
        assert await read_eof(reader) == b""
    finally:
        writer.close()
    assert requests_total(metrics, "unknown", "invalid") == 1
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True


async def test_oversize_line_without_newline_is_cut_off_too(make_server: ServerFactory) -> None:
    server = await make_server(max_line_bytes=1024)
    reader, writer = await connect(server.socket_path)
    try:
        writer.write(b"x" * 5000)  # never a newline: the server must not buffer forever
        await writer.drain()
        reply = await read_reply(reader)
        assert reply["ocf"] == 2 and "exceeds 1024 bytes" in reply["reason"]
    finally:
        writer.close()


async def test_line_of_exactly_max_line_bytes_is_accepted(make_server: ServerFactory) -> None:
    server = await make_server(max_line_bytes=1024)
    head = b'{"op": "status", "pad": "'
    tail = b'"}'
    raw = head + b"x" * (1024 - len(head) - len(tail)) + tail
    assert len(raw) == 1024
    assert (await exchange(server.socket_path, raw))["ok"] is True


async def test_idle_connection_is_closed_after_the_read_timeout(
    make_server: ServerFactory, metrics: Metrics
) -> None:
    server = await make_server(read_timeout=0.2)
    reader, writer = await connect(server.socket_path)
    started = time.monotonic()
    try:
        assert await read_eof(reader) == b""
    finally:
        writer.close()
    assert 0.15 <= time.monotonic() - started < WAIT_S
    await wait_until(
        lambda: metrics.registry.get_sample_value("hafloatd_control_connections") == 0,
        "connection gauge back to 0",
    )


async def test_half_sent_request_is_dropped_after_the_read_timeout(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    server = await make_server(read_timeout=0.2)
    reader, writer = await connect(server.socket_path)
    try:
        writer.write(b'{"op": "sta')
        await writer.drain()
        assert await read_eof(reader) == b""
    finally:
        writer.close()
    assert handler.requests == []


async def test_a_client_that_stops_reading_is_cut_off_and_its_socket_closed(
    make_server: ServerFactory, handler: StandInHandler, metrics: Metrics
) -> None:
    # Found by tests/integration/test_control_fuzz.py: the server gave up on such a client
    # (and stopped counting it against max_connections) but close() waited for the unread
    # replies to drain, forever: one open fd per client that pipelines requests and never
    # reads, until the daemon runs out of them.
    handler.result = ControlReply.success(pad="x" * 10_000)
    server = await make_server(read_timeout=0.1)

    async def open_fds() -> int:
        return len(await asyncio.to_thread(os.listdir, "/proc/self/fd"))

    before = await open_fds()
    _reader, writer = await connect(server.socket_path)
    try:
        writer.write(line({"op": "status"}) * 200)  # 2 MB of replies, none of them read
        await writer.drain()
        await wait_until(
            lambda: metrics.registry.get_sample_value("hafloatd_control_connections") == 0,
            "the server gave up on the client",
        )
        async with asyncio.timeout(WAIT_S):
            while await open_fds() > before + 1:  # the client's end only
                await asyncio.sleep(0.01)
    finally:
        writer.close()


async def test_connections_beyond_the_limit_get_an_error_and_are_closed(
    make_server: ServerFactory, metrics: Metrics
) -> None:
    server = await make_server(max_connections=2)
    held = [await connect(server.socket_path) for _ in range(2)]
    try:
        for reader, writer in held:  # a reply proves the server counted the connection
            writer.write(line({"op": "status"}))
            await writer.drain()
            assert (await read_reply(reader))["ok"] is True
        reader, writer = await connect(server.socket_path)
        reply = await read_reply(reader)
        assert reply == {
            "ok": False,
            "ocf": 1,
            "reason": "too many control connections (max 2); retry",
        }
        assert await read_eof(reader) == b""
        writer.close()
        assert requests_total(metrics, "unknown", "busy") == 1
        assert metrics.registry.get_sample_value("hafloatd_control_connections") == 2
        held[0][1].close()
        await wait_until(
            lambda: metrics.registry.get_sample_value("hafloatd_control_connections") == 1,
            "a slot freed",
        )
        assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True
    finally:
        for _reader, writer in held:
            writer.close()


# --- handler outcomes and deadlines ------------------------------------------------------


async def test_hafloatd_error_from_the_handler_keeps_its_ocf_code_and_message(
    make_server: ServerFactory, handler: StandInHandler, metrics: Metrics
) -> None:
    handler.error = UnknownIpError(f"{IP} is not in this daemon's ips: add it to the config")
    server = await make_server()
    reply = await exchange(server.socket_path, line({"op": "validate", "ip": IP}))
    assert reply == {
        "ok": False,
        "ocf": 5,
        "reason": f"{IP} is not in this daemon's ips: add it to the config",
    }
    assert requests_total(metrics, "validate", "error") == 1


async def test_unexpected_handler_exception_is_ocf_1_and_the_server_keeps_serving(
    make_server: ServerFactory, handler: StandInHandler, caplog: pytest.LogCaptureFixture
) -> None:
    handler.error = KeyError("role")
    server = await make_server()
    with caplog.at_level(logging.ERROR, logger="hafloatd.control"):
        reply = await exchange(server.socket_path, line({"op": "start", "ip": IP}))
    assert reply["ok"] is False and reply["ocf"] == 1
    assert reply["reason"] == "internal error: KeyError: 'role'"
    [record] = [r for r in caplog.records if r.name == "hafloatd.control"]
    assert "\n" not in record.getMessage()
    assert "test_control_support.py" in record.getMessage()  # where it was raised
    handler.error = None
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True


async def test_handler_returning_garbage_is_an_internal_error(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    handler.result = {"ok": True}
    server = await make_server()
    reply = await exchange(server.socket_path, line({"op": "status"}))
    assert reply == {"ok": False, "ocf": 1, "reason": "internal error: handler gave no reply"}


async def test_handler_overrunning_the_deadline_gets_deadline_exceeded(
    make_server: ServerFactory, handler: StandInHandler, metrics: Metrics
) -> None:
    handler.gate = asyncio.Event()  # never set: the handler would wait forever
    server = await make_server()
    started = time.monotonic()
    reply = await exchange(server.socket_path, line({"op": "start", "ip": IP, "deadline_ms": 100}))
    assert time.monotonic() - started < WAIT_S
    assert reply == {
        "ok": False,
        "ocf": 1,
        "reason": "deadline exceeded: start did not finish within 100 ms",
    }
    assert requests_total(metrics, "start", "error") == 1


async def test_zero_deadline_is_accepted_and_expires_at_once(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    handler.gate = asyncio.Event()
    server = await make_server()
    reply = await exchange(server.socket_path, line({"op": "start", "ip": IP, "deadline_ms": 0}))
    assert reply["reason"] == "deadline exceeded: start did not finish within 0 ms"


async def test_handler_timeout_error_of_its_own_is_not_called_a_deadline(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    handler.error = TimeoutError("metadata did not answer")
    server = await make_server()
    reply = await exchange(server.socket_path, line({"op": "start", "ip": IP}))
    assert reply == {"ok": False, "ocf": 1, "reason": "timeout: metadata did not answer"}


# --- socket file, directory, ownership ---------------------------------------------------


async def test_socket_is_0660_group_haclient_in_a_0750_directory(
    make_server: ServerFactory, socket_path: str
) -> None:
    await make_server()
    sock_stat = await asyncio.to_thread(os.stat, socket_path)
    dir_stat = await asyncio.to_thread(os.stat, os.path.dirname(socket_path))
    haclient = grp.getgrnam("haclient").gr_gid
    assert stat.S_ISSOCK(sock_stat.st_mode)
    assert stat.S_IMODE(sock_stat.st_mode) == 0o660
    assert sock_stat.st_gid == haclient
    assert stat.S_ISDIR(dir_stat.st_mode)
    assert stat.S_IMODE(dir_stat.st_mode) == 0o750
    assert dir_stat.st_gid == haclient
    leftovers = await asyncio.to_thread(os.listdir, os.path.dirname(socket_path))
    assert leftovers == ["control.sock"]  # no temporary bind name left behind


async def test_missing_group_is_skipped_with_a_warning(
    make_server: ServerFactory, socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        await make_server(group="hfnosuchgroup")
    sock_stat = await asyncio.to_thread(os.stat, socket_path)
    assert sock_stat.st_gid == os.getegid()
    assert stat.S_IMODE(sock_stat.st_mode) == 0o660
    assert any(
        "control_group_missing group=hfnosuchgroup" in r.getMessage() for r in caplog.records
    )


async def test_existing_directory_keeps_its_mode(
    make_server: ServerFactory, socket_path: str
) -> None:
    directory = os.path.dirname(socket_path)
    await asyncio.to_thread(os.mkdir, directory, 0o700)
    await make_server()
    dir_stat = await asyncio.to_thread(os.stat, directory)
    assert stat.S_IMODE(dir_stat.st_mode) == 0o700


async def test_world_writable_socket_directory_is_refused(
    make_server: ServerFactory, socket_path: str
) -> None:
    directory = os.path.dirname(socket_path)
    await asyncio.to_thread(os.mkdir, directory)
    await asyncio.to_thread(os.chmod, directory, 0o777)
    with pytest.raises(ControlError, match="world-writable"):
        await make_server()


async def test_stale_socket_file_is_replaced(
    make_server: ServerFactory, socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    def leave_stale_socket() -> None:
        os.mkdir(os.path.dirname(socket_path), 0o750)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(socket_path)
        stale.close()  # the file stays; nothing listens: what a crashed daemon leaves

    await asyncio.to_thread(leave_stale_socket)
    with caplog.at_level(logging.INFO, logger="hafloatd.control"):
        server = await make_server()
    assert any("control_socket_stale" in r.getMessage() for r in caplog.records)
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True


async def test_refuses_to_start_when_another_server_is_listening(
    make_server: ServerFactory, socket_path: str, metrics: Metrics
) -> None:
    first = await make_server()
    second = ControlServer(ControlConfig(socket_path=socket_path), StandInHandler())
    with pytest.raises(ControlError) as info:
        await second.start()
    message = str(info.value)
    assert f"another process (pid={os.getpid()}) is listening on {socket_path}" in message
    assert "\n" not in message
    # The first server is untouched and still answers.
    assert (await exchange(first.socket_path, line({"op": "status"})))["ok"] is True


async def test_refuses_to_replace_a_file_that_is_not_a_socket(
    make_server: ServerFactory, socket_path: str
) -> None:
    def plant_file() -> None:
        os.mkdir(os.path.dirname(socket_path), 0o750)
        Path(socket_path).write_text("not a socket")

    await asyncio.to_thread(plant_file)
    with pytest.raises(ControlError, match="exists and is not a socket"):
        await make_server()
    assert await asyncio.to_thread(Path(socket_path).read_text) == "not a socket"


async def test_missing_parent_of_the_socket_directory_is_a_clear_error(
    make_server: ServerFactory, short_dir: Path
) -> None:
    with pytest.raises(ControlError, match="parent does not exist"):
        await make_server(path=str(short_dir / "no" / "such" / "control.sock"))


async def test_close_removes_the_socket_file(make_server: ServerFactory, socket_path: str) -> None:
    server = await make_server()
    await server.close()
    assert not await asyncio.to_thread(os.path.exists, socket_path)


async def test_close_leaves_a_socket_that_another_daemon_put_in_place(
    make_server: ServerFactory, socket_path: str
) -> None:
    server = await make_server()

    def replace_socket() -> socket.socket:
        os.unlink(socket_path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(socket_path)
        return other

    other = await asyncio.to_thread(replace_socket)
    try:
        await server.close()
        assert await asyncio.to_thread(os.path.exists, socket_path)
    finally:
        other.close()


# --- shutdown -----------------------------------------------------------------------------


async def test_close_lets_an_in_flight_request_finish_and_drops_idle_connections(
    make_server: ServerFactory, handler: StandInHandler
) -> None:
    server = await make_server()
    idle_reader, idle_writer = await connect(server.socket_path)
    idle_writer.write(line({"op": "status"}))
    await idle_writer.drain()
    await read_reply(idle_reader)

    handler.gate = asyncio.Event()
    busy_reader, busy_writer = await connect(server.socket_path)
    busy_writer.write(line({"op": "stop", "ip": IP}))
    await busy_writer.drain()
    handler.entered.clear()
    await asyncio.wait_for(handler.entered.wait(), WAIT_S)

    closing = asyncio.create_task(server.close(grace=WAIT_S))
    assert await read_eof(idle_reader) == b""  # idle: closed at once, not after the grace
    assert not closing.done()
    handler.gate.set()
    reply = await read_reply(busy_reader)
    assert reply["ok"] is True and reply["op"] == "stop"
    await asyncio.wait_for(closing, WAIT_S)
    assert await read_eof(busy_reader) == b""
    idle_writer.close()
    busy_writer.close()


async def test_close_cancels_a_request_that_outlasts_the_grace(
    make_server: ServerFactory, handler: StandInHandler, metrics: Metrics
) -> None:
    server = await make_server()
    handler.gate = asyncio.Event()  # never set
    reader, writer = await connect(server.socket_path)
    writer.write(line({"op": "start", "ip": IP}))
    await writer.drain()
    await asyncio.wait_for(handler.entered.wait(), WAIT_S)
    # The handler would wait forever: close() returning at all means it cancelled it.
    await asyncio.wait_for(server.close(grace=0.1), WAIT_S)
    assert handler.cancelled.is_set() and not handler.gate.is_set()
    reply = await read_reply(reader)
    assert reply == {
        "ok": False,
        "ocf": 1,
        "reason": "hafloatd shutting down: request cancelled",
    }
    writer.close()
    assert requests_total(metrics, "start", "error") == 1
    assert metrics.registry.get_sample_value("hafloatd_control_connections") == 0


async def test_no_new_connections_after_close(make_server: ServerFactory) -> None:
    server = await make_server()
    await server.close()
    with pytest.raises(OSError):
        await connect(server.socket_path)


# --- peer credentials (in-process: this test runs as root) ---------------------------------


async def test_reload_changes_who_is_allowed(
    make_server: ServerFactory, socket_path: str, metrics: Metrics
) -> None:
    server = await make_server(allowed_users=("hacluster",))
    reply = await exchange(server.socket_path, line({"op": "status"}))
    assert reply == {"ok": False, "ocf": 4, "reason": f"peer uid={os.geteuid()} not allowed"}
    assert requests_total(metrics, "unknown", "denied") == 1
    await server.reload(ControlConfig(socket_path=socket_path, allowed_users=("root",)))
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True


async def test_reconfigure_applies_in_the_background(
    make_server: ServerFactory, socket_path: str
) -> None:
    server = await make_server(allowed_users=("hacluster",))
    server.reconfigure(ControlConfig(socket_path=socket_path, allowed_users=(0,)))
    await wait_until(lambda: 0 in server.snapshot()["allowed_uids"], "uid 0 allowed")  # type: ignore[operator]
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True


async def test_reload_reapplies_socket_group(make_server: ServerFactory, socket_path: str) -> None:
    server = await make_server()
    await server.reload(ControlConfig(socket_path=socket_path, group="root", mode=0o600))
    sock_stat = await asyncio.to_thread(os.stat, socket_path)
    assert sock_stat.st_gid == 0
    assert stat.S_IMODE(sock_stat.st_mode) == 0o600


async def test_reload_warns_that_a_socket_path_change_needs_a_restart(
    make_server: ServerFactory, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        await server.reload(ControlConfig(socket_path=str(short_dir / "other.sock")))
    assert server.socket_path.endswith("/run/control.sock")
    assert any("needs a daemon restart" in r.getMessage() for r in caplog.records)
    assert (await exchange(server.socket_path, line({"op": "status"})))["ok"] is True


async def test_unknown_user_names_are_skipped_with_a_warning(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        server = await make_server(allowed_users=("root", "hfnosuchuser", 4242))
    assert server.snapshot()["allowed_uids"] == [0, 4242]
    assert any(
        "control_unknown_name key=control.allowed_users name=hfnosuchuser" in r.getMessage()
        for r in caplog.records
    )


async def test_default_allowed_peers_are_root_and_hacluster(make_server: ServerFactory) -> None:
    server = await make_server()
    assert server.snapshot()["allowed_uids"] == sorted({0, pwd.getpwnam("hacluster").pw_uid})
    assert server.snapshot()["allowed_gids"] == []


async def test_request_metrics_and_connection_gauge(
    make_server: ServerFactory, metrics: Metrics
) -> None:
    server = await make_server()
    await exchange(server.socket_path, line({"op": "start", "ip": IP}))
    await exchange(server.socket_path, line({"op": "monitor", "ip": IP}))
    await exchange(server.socket_path, b"{")
    assert requests_total(metrics, "start", "ok") == 1
    assert requests_total(metrics, "monitor", "ok") == 1  # answered: OCF 7 is not an error
    assert requests_total(metrics, "unknown", "invalid") == 1
    await wait_until(
        lambda: metrics.registry.get_sample_value("hafloatd_control_connections") == 0,
        "all connections closed",
    )
