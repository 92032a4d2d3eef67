"""The metrics endpoint's HTTP, spoken to over real sockets (aiohttp as the client)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hafloatd.metrics import Metrics
from hafloatd.metrics_server import MetricsServer


class Health:
    def __init__(self) -> None:
        self.ok = True

    def __call__(self) -> bool:
        return self.ok


@pytest.fixture
async def served() -> AsyncIterator[tuple[MetricsServer, Health, str]]:
    health = Health()
    metrics = Metrics()
    metrics.build_info.info({"version": "test"})
    server = MetricsServer(metrics, "127.0.0.1:0", health)
    await server.start()
    try:
        yield server, health, f"http://127.0.0.1:{server.bound_port}"
    finally:
        await server.close()


async def raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_metrics_in_the_text_format_by_default(
    served: tuple[MetricsServer, Health, str],
) -> None:
    _, _, url = served
    headers = {"Accept-Encoding": "identity"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{url}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert 'hafloatd_build_info{version="test"} 1.0' in text


async def test_openmetrics_when_asked_and_gzip_when_accepted(
    served: tuple[MetricsServer, Health, str],
) -> None:
    _, _, url = served
    headers = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{url}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(await resp.read()).decode()
    assert body.rstrip().endswith("# EOF")


async def test_healthz_follows_the_daemon(served: tuple[MetricsServer, Health, str]) -> None:
    _, health, url = served
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok\n")
        health.ok = False
        async with session.get(f"{url}/healthz") as resp:
            assert (resp.status, await resp.text()) == (503, "unhealthy\n")


async def test_keep_alive_serves_several_requests_on_one_connection(
    served: tuple[MetricsServer, Health, str],
) -> None:
    _, _, url = served
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    answer = await raw(url, request + request + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.endswith(b"Connection: close\r\n\r\nok\n")


async def test_head_has_the_headers_and_no_body(served: tuple[MetricsServer, Health, str]) -> None:
    _, _, url = served
    answer = await raw(url, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.0\r\n\r\n", b"404 Not Found"),
        (b"POST /metrics HTTP/1.0\r\n\r\n", b"405 Method Not Allowed"),
        (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics SPDY/3\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nno-colon-here\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 3_000 + b"\r\n", b"400 Bad Request"),
    ],
)
async def test_bad_requests_get_a_clear_status(
    served: tuple[MetricsServer, Health, str], request_bytes: bytes, status: bytes
) -> None:
    _, _, url = served
    answer = await raw(url, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status)
    if status == b"400 Bad Request":
        assert b"Connection: close" in answer


async def test_close_does_not_wait_for_an_idle_keep_alive_client(
    served: tuple[MetricsServer, Health, str],
) -> None:
    server, _, url = served
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            await reader.readuntil(b"ok\n")
            await server.close()  # the client is idle inside the 75 s keep-alive
            assert await reader.read() == b""  # and its connection was closed
    finally:
        writer.close()
