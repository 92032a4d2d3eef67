"""Shared fixtures and helpers for the control-socket tests (no tests of its own).

The handler here is a stand-in for the controller: the server's own tests need something
that answers, blocks on demand or raises, not the real per-IP state machine.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx
from prometheus_client import CollectorRegistry

from hafloatd.config import ControlConfig
from hafloatd.control.protocol import ControlReply, ControlRequest
from hafloatd.control.server import ControlServer
from hafloatd.metrics import Metrics

WAIT_S = 5.0
ServerFactory = Callable[..., Awaitable[ControlServer]]


class StandInHandler:
    """Answers like a tiny controller; can block ``stop`` on a gate or raise on demand."""

    def __init__(self) -> None:
        self.requests: list[ControlRequest] = []
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()  # set when the server cancels a request in the handler
        self.gate: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.result: object = None  # when set, returned as-is instead of a reply

    async def handle(self, request: ControlRequest) -> ControlReply:
        self.requests.append(request)
        self.entered.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.error is not None:
            raise self.error
        if self.result is not None:
            return self.result  # type: ignore[return-value]
        if request.op == "monitor":
            return ControlReply.failure(7, "role stopped", ip=request.ip)
        return ControlReply.success(op=request.op, ip=request.ip)


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    with blockbuster_ctx():
        yield


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path is too deep for sun_path (107 bytes) on some hosts; /tmp/hfc-XXXX is not.
    directory = Path(tempfile.mkdtemp(prefix="hfc-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_path(short_dir: Path) -> str:
    return str(short_dir / "run" / "control.sock")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def handler() -> StandInHandler:
    return StandInHandler()


@pytest.fixture
async def make_server(
    socket_path: str, metrics: Metrics, handler: StandInHandler
) -> AsyncIterator[ServerFactory]:
    servers: list[ControlServer] = []

    async def factory(
        handler_: Any = None, *, path: str | None = None, **overrides: Any
    ) -> ControlServer:
        config = ControlConfig(socket_path=path or socket_path, **overrides)
        server = ControlServer(config, handler_ or handler, metrics=metrics)
        servers.append(server)
        await server.start()
        return server

    try:
        yield factory
    finally:
        for server in reversed(servers):
            await server.close(grace=0.5)


async def connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(WAIT_S):
        return await asyncio.open_unix_connection(path)


async def read_reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        line = await reader.readline()
    assert line.endswith(b"\n"), f"no complete reply line: {line!r}"
    reply = json.loads(line)
    assert isinstance(reply, dict)
    return reply


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything left until the server closes the connection (bounded)."""
    async with asyncio.timeout(WAIT_S):
        return await reader.read()


async def exchange(path: str, line: bytes) -> dict[str, Any]:
    reader, writer = await connect(path)
    try:
        writer.write(line if line.endswith(b"\n") else line + b"\n")
        await writer.drain()
        return await read_reply(reader)
    finally:
        writer.close()


def requests_total(metrics: Metrics, op: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "hafloatd_control_requests_total", {"op": op, "result": result}
    )
    return value or 0.0


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition the server updates from its own tasks."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.005)
    assert predicate(), what
