"""The "reserved IP" a client connects to: one TCP proxy port per simulated reserved IP.

Each new connection is forwarded to the backend (``host:port``) of the droplet holding the IP
at connect time. With no holder, or a holder without a backend (or a backend that refuses), the
connection is closed at once. When the IP moves, connections pinned to the previous holder are
reset, as they are on DigitalOcean (the new droplet knows nothing of them): a failover drill
sees long-lived connections break, not silently survive.

Every connection task is owned: ``stop()`` closes the listener and cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hafloatd.lab.sim.scenario import parse_backend
from hafloatd.lab.sim.state import SimState

log = logging.getLogger("hafloatd.lab.sim.proxy")

CONNECT_TIMEOUT_S = 5.0
CHUNK = 65536


@dataclass
class ProxyStats:
    """Counts since start: ``forwarded`` is per droplet id."""

    accepted: int = 0
    forwarded: Counter[int] = field(default_factory=Counter)
    refused: int = 0
    reset_on_move: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "forwarded": {str(k): v for k, v in self.forwarded.items()},
            "refused": self.refused,
            "reset_on_move": self.reset_on_move,
        }


@dataclass(eq=False)
class _Link:
    droplet_id: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class ReservedIpProxy:
    """Listens on ``host:port`` (ephemeral when 0) for one reserved IP."""

    def __init__(self, ip: str, state: SimState, *, host: str, port: int = 0) -> None:
        self.ip = ip
        self._state = state
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._links: set[_Link] = set()
        self.stats = ProxyStats()
        state.subscribe(self._on_move)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None and not self._port:
            raise RuntimeError(f"the proxy for {self.ip} is not started")
        return self._host, self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("event=proxy_listening ip=%s address=%s:%s", self.ip, self._host, self._port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def _on_move(self, ip: str, old: int | None, new: int | None) -> None:
        if ip != self.ip:
            return
        for link in list(self._links):
            if link.droplet_id != new:
                self.stats.reset_on_move += 1
                link.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        holder = self._state.holder(self.ip)
        backend = self._state.backend(holder) if holder is not None else None
        if holder is None or backend is None:
            self.stats.refused += 1
            writer.transport.abort()
            return
        host, port = parse_backend(backend)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            self.stats.refused += 1
            log.info("event=proxy_backend_failed ip=%s backend=%s error=%s", self.ip, backend, exc)
            writer.transport.abort()
            return
        if self._state.holder(self.ip) != holder:
            # The IP moved while we connected: this connection belongs to nobody now.
            self.stats.reset_on_move += 1
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.stats.forwarded[holder] += 1
        link = _Link(holder, writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._links.discard(link)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close; a reset on either side ends both directions."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof() and not sink.transport.is_closing():
            sink.write_eof()
    except (ConnectionError, OSError):
        sink.transport.abort()
