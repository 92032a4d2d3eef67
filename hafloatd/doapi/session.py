"""The one aiohttp session hafloatd keeps to the DigitalOcean API for the daemon's life.

Owns opening it (once, on ``start`` or the first request; the TLS context, which reads the
trust store, is built off the loop), its connector (bounded, keep-alive longer than the
keep-warm interval so the warm connection is the one the next POST reuses), the headers set
once (``Authorization``, ``User-Agent``, ``Accept``), the trace counting the connections
opened, and closing it. Redirects and retries are the transport's business, not the session's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from types import SimpleNamespace

import aiohttp

from hafloatd import __version__
from hafloatd.config import ApiConfig
from hafloatd.errors import ApiError
from hafloatd.logs import describe
from hafloatd.token import ApiToken

log = logging.getLogger("hafloatd.doapi")


class ApiSession:
    """Opens the session once and hands it out; refuses after ``close`` (daemon shutdown)."""

    def __init__(self, config: ApiConfig, token: ApiToken) -> None:
        self._config = config
        self._token = token
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()
        self.connections_opened = 0

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
            # Outlive the keep-warm interval so the warm connection is the one reused.
            keepalive_timeout=max(30.0, self._config.keepalive_interval * 2 + 5),
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
        self.connections_opened += 1
        log.debug("event=api_connection_opened total=%d", self.connections_opened)


def _user_agent(configured: str) -> str:
    """The configured product token, with hafloatd's version unless it carries its own."""
    return configured if "/" in configured else f"{configured}/{__version__}"
