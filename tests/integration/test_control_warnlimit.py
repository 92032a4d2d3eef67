"""ControlServer's warnings are limited per peer uid: a client cannot flood the journal.

The limiter itself is unit-tested (tests/unit/test_control_warnlimit.py); here, the server on
a real socket routes every warning a client can cause through it, owns the summary task and
writes what is still pending when it closes. The daemon-level proof under 10,000 hostile
inputs is tests/integration/test_control_fuzz.py.
"""

# ruff: noqa: F811  (fixtures imported from test_control_support are test parameters)

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from hafloatd.control.warnlimit import BURST
from hafloatd.errors import UnknownIpError
from hafloatd.metrics import Metrics
from tests.integration.test_control_support import (  # noqa: F401  (fixtures)
    ServerFactory,
    StandInHandler,
    _no_blocking_calls,
    connect,
    handler,
    make_server,
    metrics,
    read_eof,
    read_reply,
    requests_total,
    short_dir,
    socket_path,
)

FLOOD = 200


def suppressed(metrics: Metrics, event: str) -> float:
    value = metrics.registry.get_sample_value(
        "hafloatd_control_warnings_suppressed_total", {"event": event}
    )
    return value or 0.0


def messages(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


async def test_a_flood_of_invalid_requests_logs_a_burst_then_one_summary_at_close(
    make_server: ServerFactory, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        server = await make_server()
        reader, writer = await connect(server.socket_path)
        writer.write(b"{not json\n" * FLOOD)
        await writer.drain()
        replies = [await read_reply(reader) for _ in range(FLOOD)]
        writer.close()

        assert all(r["ocf"] == 2 for r in replies)  # every request is still answered
        assert requests_total(metrics, "unknown", "invalid") == FLOOD
        assert len(messages(caplog, "event=control_request_invalid")) == BURST
        assert suppressed(metrics, "control_request_invalid") == FLOOD - BURST
        assert messages(caplog, "event=control_warnings_suppressed") == []

        await server.close()

    assert messages(caplog, "event=control_warnings_suppressed") == [
        f"event=control_warnings_suppressed peer_uid=0 count={FLOOD - BURST} window_s=60 "
        f"events=control_request_invalid:{FLOOD - BURST}"
    ]
    tasks = {t.get_name() for t in asyncio.all_tasks()}
    assert "hafloatd-control-warning-summaries" not in tasks


async def test_oversize_lines_and_busy_refusals_share_the_peer_budget(
    make_server: ServerFactory, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        server = await make_server(max_line_bytes=1024, max_connections=1)
        held_reader, held_writer = await connect(server.socket_path)  # the one allowed slot
        held_writer.write(b'{"op":"status"}\n')
        await read_reply(held_reader)
        for _ in range(BURST + 5):
            reader, writer = await connect(server.socket_path)
            assert (await read_reply(reader))["ocf"] == 1  # busy
            await read_eof(reader)
            writer.close()
        held_writer.close()
        for _ in range(5):
            reader, writer = await connect(server.socket_path)
            writer.write(b"x" * 5000 + b"\n")
            reply = await read_reply(reader)
            assert reply["reason"] == "invalid request: line exceeds 1024 bytes"
            writer.close()

    assert len(messages(caplog, "event=control_connection_rejected reason=busy")) == BURST
    assert messages(caplog, "event=control_request_invalid") == []
    assert suppressed(metrics, "control_connection_rejected") == 5
    assert suppressed(metrics, "control_request_invalid") == 5


async def test_handler_failures_are_limited_too(
    make_server: ServerFactory,
    handler: StandInHandler,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler.error = UnknownIpError("203.0.113.99 is not configured")
    request = json.dumps({"op": "monitor", "ip": "203.0.113.99"}).encode() + b"\n"
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        server = await make_server()
        reader, writer = await connect(server.socket_path)
        writer.write(request * 30)
        await writer.drain()
        replies = [await read_reply(reader) for _ in range(30)]
        writer.close()

    assert {r["ocf"] for r in replies} == {5}
    assert len(messages(caplog, "event=control_handler_failed")) == BURST
    assert suppressed(metrics, "control_handler_failed") == 30 - BURST
