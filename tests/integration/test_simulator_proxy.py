"""The reserved-IP TCP proxy: traffic reaches whichever droplet holds the IP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from hafloatd.lab.sim import Simulator
from tests.sim_fixtures import IP_NYC, IP_SFO, move_ip

IO_TIMEOUT = 3.0


class LineBackend:
    """A stand-in web server: answers each line with ``name:line``; also speaks enough HTTP."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.address = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                if line.startswith(b"GET "):
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    body = self.name.encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(body), body)
                    )
                    await writer.drain()
                    break
                writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


BackendFactory = Callable[[str], Awaitable[LineBackend]]


@pytest.fixture
async def backend() -> AsyncIterator[BackendFactory]:
    started: list[LineBackend] = []

    async def factory(name: str) -> LineBackend:
        server = LineBackend(name)
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()


async def ask(sim: Simulator, ip: str, line: bytes = b"ping\n") -> bytes:
    """One connection through the proxy: send a line, return the answer (b"" if closed)."""
    host, port = sim.proxy_address(ip)
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(line)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                return await reader.readline()
            except ConnectionError:
                return b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_proxy_forwards_to_the_backend_of_the_holder(
    simulator: Simulator, backend: BackendFactory
) -> None:
    node3 = await backend("node3")
    simulator.set_backend(1003, node3.address)
    assert await ask(simulator, IP_SFO) == b"node3:ping\n"
    assert simulator.proxy_stats(IP_SFO).forwarded[1003] == 1


async def test_proxy_follows_the_ip_when_it_moves(
    simulator: Simulator, backend: BackendFactory
) -> None:
    node1, node2 = await backend("node1"), await backend("node2")
    simulator.set_backend(1001, node1.address)
    simulator.set_backend(1002, node2.address)
    await move_ip(simulator, IP_NYC, 1001)
    assert await ask(simulator, IP_NYC) == b"node1:ping\n"
    await move_ip(simulator, IP_NYC, 1002)
    assert await ask(simulator, IP_NYC) == b"node2:ping\n"


async def test_proxy_serves_http_like_the_curl_loop_of_a_drill(
    simulator: Simulator, backend: BackendFactory
) -> None:
    node3 = await backend("node3")
    simulator.set_backend(1003, node3.address)
    host, port = simulator.proxy_address(IP_SFO)
    timeout = aiohttp.ClientTimeout(total=IO_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://{host}:{port}/") as response,
    ):
        assert (response.status, await response.text()) == (200, "node3")


async def test_proxy_closes_connections_while_the_ip_is_unassigned(simulator: Simulator) -> None:
    assert await ask(simulator, IP_NYC) == b""
    assert simulator.proxy_stats(IP_NYC).refused == 1


async def test_proxy_closes_connections_when_the_holder_has_no_backend(
    simulator: Simulator,
) -> None:
    assert await ask(simulator, IP_SFO) == b""
    assert simulator.proxy_stats(IP_SFO).refused == 1


async def test_proxy_closes_connections_when_the_backend_is_down(
    simulator: Simulator, backend: BackendFactory
) -> None:
    node3 = await backend("node3")
    simulator.set_backend(1003, node3.address)
    await node3.stop()
    assert await ask(simulator, IP_SFO) == b""


async def test_a_move_resets_connections_pinned_to_the_previous_holder(
    simulator: Simulator, backend: BackendFactory
) -> None:
    node1, node2 = await backend("node1"), await backend("node2")
    simulator.set_backend(1001, node1.address)
    simulator.set_backend(1002, node2.address)
    await move_ip(simulator, IP_NYC, 1001)
    host, port = simulator.proxy_address(IP_NYC)
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"one\n")
        assert await reader.readline() == b"node1:one\n"
        await move_ip(simulator, IP_NYC, 1002)
        try:
            leftover = await reader.read()
        except ConnectionError:
            leftover = b""
        writer.close()
    assert leftover == b""
    assert simulator.proxy_stats(IP_NYC).reset_on_move == 1
    assert await ask(simulator, IP_NYC, b"two\n") == b"node2:two\n"


async def test_set_backend_refuses_a_malformed_address(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="host:port"):
        simulator.set_backend(1001, "nginx")
