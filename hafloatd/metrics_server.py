"""The metrics HTTP server: ``/metrics`` (Prometheus exposition) and ``/healthz``.

A small HTTP/1.1 server on asyncio streams, not aiohttp's server stack: the daemon is an HTTP
*client* everywhere else, and ``aiohttp.web`` (plus the mimetypes table it loads) costs about
1.5 MB of resident memory for two read-only endpoints. What it speaks: ``GET`` and ``HEAD``
of ``/metrics`` (content negotiated by ``prometheus_client``: the text format, or OpenMetrics
when the scraper asks for it; gzip when accepted) and ``/healthz``; keep-alive for HTTP/1.1
(Prometheus reuses its connection between scrapes) with an idle timeout; anything else gets a
4xx and, if malformed, the connection closed. Every read has a timeout and a size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client.exposition import choose_encoder

from hafloatd.config import split_host_port
from hafloatd.metrics import Metrics

HEAD_LIMIT = 16 * 1024  # request line + headers; a scraper sends a few hundred bytes
HEAD_TIMEOUT = 10.0  # to receive one request's head once it started
IDLE_TIMEOUT = 75.0  # keep-alive between requests (longer than a 60 s scrape interval)
WRITE_TIMEOUT = 10.0  # to hand one response to a slow reader
CLOSE_GRACE = 1.0  # on shutdown, for connections to finish


class _BadRequest(Exception):
    pass


class MetricsServer:
    """Serves ``host:port``; ``healthy()`` decides what ``/healthz`` answers."""

    def __init__(self, metrics: Metrics, listen: str, healthy: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.host, self.port = split_host_port(listen)
        self._healthy = healthy
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.bound_port: int | None = None

    async def start(self) -> None:
        try:
            server = await asyncio.start_server(
                self._on_connect, self.host, self.port, limit=HEAD_LIMIT
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics.listen {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self._server = server
        # The port actually bound: differs from self.port when listen asked for port 0.
        sockets = server.sockets
        self.bound_port = int(sockets[0].getsockname()[1]) if sockets else self.port

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=CLOSE_GRACE)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):
                await server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the scraper went away or stalled: nothing to answer
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    first = await reader.readline()
                if not first:
                    return  # closed between requests
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await _read_head(reader, first)
            except (ValueError, _BadRequest, UnicodeDecodeError):
                # ValueError: a line over HEAD_LIMIT (asyncio's LimitOverrunError).
                await self._send(writer, HTTPStatus.BAD_REQUEST, b"bad request\n", keep=False)
                return
            method, target, version, headers = head
            keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
            if "content-length" in headers or "transfer-encoding" in headers:
                keep = False  # a body on GET: don't try to find where it ends
            status, body, extra = self._route(method, target, headers)
            await self._send(writer, status, body, keep=keep, head=method == "HEAD", extra=extra)
            if not keep:
                return

    def _route(
        self, method: str, target: str, headers: dict[str, str]
    ) -> tuple[HTTPStatus, bytes, list[tuple[str, str]]]:
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return HTTPStatus.NOT_FOUND, b"not found: try /metrics or /healthz\n", []
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, b"GET or HEAD only\n", [("Allow", "GET, HEAD")]
        if path == "/healthz":
            if self._healthy():
                return HTTPStatus.OK, b"ok\n", []
            return HTTPStatus.SERVICE_UNAVAILABLE, b"unhealthy\n", []
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self.metrics.registry)
        extra = [("Content-Type", content_type)]
        if _accepts_gzip(headers.get("accept-encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            extra.append(("Content-Encoding", "gzip"))
        return HTTPStatus.OK, body, extra

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        body: bytes,
        *,
        keep: bool,
        head: bool = False,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
        fields = extra or [("Content-Type", "text/plain; charset=utf-8")]
        lines += [f"{name}: {value}" for name, value in fields]
        connection = "keep-alive" if keep else "close"
        lines += [f"Content-Length: {len(body)}", f"Connection: {connection}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()


async def _read_head(
    reader: asyncio.StreamReader, first: bytes
) -> tuple[str, str, str, dict[str, str]]:
    """Request line + header fields (names lower-cased); raises ``_BadRequest``."""
    parts = first.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(first[:80])
    method, target, version = parts
    headers: dict[str, str] = {}
    size = len(first)
    while True:
        line = await reader.readline()
        size += len(line)
        if not line or size > HEAD_LIMIT:
            raise _BadRequest("head incomplete or too large")
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return method, target, version, headers
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(text[:80])
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value


def _accepts_gzip(accept_encoding: str) -> bool:
    for coding in accept_encoding.split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
