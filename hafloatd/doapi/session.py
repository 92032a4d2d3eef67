"""The one aiohttp session hafloatd keeps to the DigitalOcean API for the daemon's life.

Owns opening it (once, on ``start`` or the first request; the TLS context, which reads the
trust store, is built off the loop), its connector, the headers set once (``Authorization``,
``User-Agent``, ``Accept``), what is going on on it (requests in flight, when the last one
ended), the connections it opens, and closing it. Redirects and retries are the transport's
business, not the session's.

The connection the holder check used is the one the next POST reuses (one round trip, no
TCP or TLS handshake): the connector keeps an idle connection longer than the longest quiet
gap between requests at rest, and every socket has TCP keepalive on, so NAT and firewall
state along the path stays alive and a dead peer is noticed within ``KEEPIDLE_S +
KEEPINTVL_S * KEEPCNT`` instead of at the next request. Keepalive probes are not requests:
DigitalOcean's rate limit counts requests, not connections. A connection opened while no
other request is in flight, after the first, means the previous one was dropped at rest:
``event=api_connection_reopened``, and ``hafloatd_api_connections_opened_total`` grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Final

import aiohttp

from hafloatd import __version__
from hafloatd.config import ApiConfig
from hafloatd.errors import ApiError
from hafloatd.logs import describe
from hafloatd.metrics import Metrics
from hafloatd.token import ApiToken

log = logging.getLogger("hafloatd.doapi")

# TCP keepalive on every API socket: the first probe after a minute of silence (well inside
# the idle timeouts of NATs and stateful firewalls), then every 15 s; 4 unanswered probes
# (two minutes in all) and the kernel drops the connection, so the next request opens a
# fresh one at once instead of writing into a dead one.
KEEPIDLE_S: Final = 60
KEEPINTVL_S: Final = 15
KEEPCNT: Final = 4
# An idle pooled connection is kept at least this long (aiohttp's default is 15 s).
MIN_POOL_KEEPALIVE_S: Final = 30.0


def keepalive_socket(addr_info: aiohttp.AddrInfoType) -> socket.socket:
    """The connector's socket factory: a TCP socket with keepalive probes on (see above)."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
    except OSError:
        sock.close()
        raise
    return sock


def pool_keepalive_s(config: ApiConfig) -> float:
    """How long an idle connection stays pooled: past the longest quiet gap at rest (a holder
    check or a keep-warm every ``min(holder_check_interval, keepalive_interval)``), twice over."""
    quiet_gap = min(config.holder_check_interval, config.keepalive_interval)
    return max(MIN_POOL_KEEPALIVE_S, 2 * (quiet_gap + config.request_timeout))


class ApiSession:
    """Opens the session once and hands it out; refuses after ``close`` (daemon shutdown)."""

    def __init__(
        self, config: ApiConfig, token: ApiToken, *, metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._token = token
        self._metrics = metrics
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()
        self.connections_opened = 0
        self.in_flight = 0
        self._last_end = time.monotonic()  # when the latest request ended (or the session was made)

    @contextlib.contextmanager
    def request_in_flight(self) -> Iterator[None]:
        """Around one request: the session is busy until it ends."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._last_end = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request ended (since the session was made, before any);
        0 while one is in flight."""
        if self.in_flight:
            return 0.0
        return max(0.0, time.monotonic() - self._last_end)

    async def get(self) -> aiohttp.ClientSession:
        """The open session (opened now if needed); ApiError once closed."""
        if self._closed:
            raise ApiError("DigitalOcean API client is closed (daemon shutting down)")
        if self._session is not None:
            return self._session
        async with self._start_lock:
            if self._session is None:
                ssl_context: ssl.SSLContext | bool = True
                if self.base_url.startswith("https://"):
                    # Reading the trust store is file I/O: off the loop.
                    ssl_context = await asyncio.to_thread(self._make_ssl_context)
                else:
                    log.warning(
                        "event=api_insecure_transport base_url=%s note=token_sent_without_tls",
                        self.base_url,
                    )
                if self._closed:
                    raise ApiError("DigitalOcean API client is closed (daemon shutting down)")
                self._session = self._build_session(ssl_context)
                log.info(
                    "event=api_client_started base_url=%s path_family=%s max_connections=%d "
                    "ca_file=%s",
                    self.base_url,
                    self._config.path_family,
                    self._config.max_connections,
                    self._config.ca_file or "system",
                )
            return self._session

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _make_ssl_context(self) -> ssl.SSLContext:
        """Verifying context (certificates and host names); cafile None: the system store."""
        try:
            return ssl.create_default_context(cafile=self._config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(
                f"api.ca_file: cannot load {self._config.ca_file}: {describe(exc)}; point it at "
                "a PEM file of the CA that signs the API's certificate"
            ) from None

    def _build_session(self, ssl_context: ssl.SSLContext | bool) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._config.max_connections,
            ssl=ssl_context,
            # Outlive the quiet gap at rest so the warm connection is the one reused.
            keepalive_timeout=pool_keepalive_s(self._config),
            socket_factory=keepalive_socket,
        )
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._on_connection_created)
        return aiohttp.ClientSession(
            connector=connector,
            headers={
                "Authorization": f"Bearer {self._token.reveal()}",
                "User-Agent": _user_agent(self._config.user_agent),
                "Accept": "application/json",
            },
            trace_configs=[trace],
            raise_for_status=False,
        )

    async def _on_connection_created(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceConnectionCreateEndParams,
    ) -> None:
        reopened = self.connections_opened > 0 and self.in_flight <= 1
        self.connections_opened += 1
        if self._metrics is not None:
            self._metrics.api_connections_opened_total.inc()
        if reopened:
            # Nothing else was going on: the connection this request would have reused is gone
            # (closed by the server or a middlebox while idle). This request paid the handshake.
            log.info(
                "event=api_connection_reopened connections_opened=%d quiet_s=%.1f",
                self.connections_opened,
                time.monotonic() - self._last_end,
            )
        else:
            log.debug("event=api_connection_opened connections_opened=%d", self.connections_opened)


def _user_agent(configured: str) -> str:
    """The configured product token, with hafloatd's version unless it carries its own."""
    return configured if "/" in configured else f"{configured}/{__version__}"
