"""The simulated DigitalOcean API server (aiohttp): lifecycle and the request pipeline.

The operations themselves are in ``routes`` (DigitalOcean's endpoints) and ``admin``
(``/_sim``). This module owns what happens around them: every request (except ``/_sim``) is
recorded as an ``Exchange``; answers carry ``ratelimit-*`` and ``x-request-id`` headers; bearer
auth (401; 403 for a read-only token on POST), per-token rate limits and injected faults.

Order in which a request is answered: injected latency → injected drop (before handling) →
injected 429 storm → injected error status → authentication (401) → rate limit (429) → scope
(403) → the operation → injected drop after the state change (POST only).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from hafloatd.lab.sim.admin import AdminRoutes, is_admin_path
from hafloatd.lab.sim.faults import FaultInjector
from hafloatd.lab.sim.inflight import InflightHandlers
from hafloatd.lab.sim.ratelimit import RateDecision, RateLimiter
from hafloatd.lab.sim.recording import Exchange, Recorder
from hafloatd.lab.sim.refusals import SimApiError, not_found
from hafloatd.lab.sim.responses import ERROR_IDS, error_response, message, status_response
from hafloatd.lab.sim.routes import DoRoutes, route_names
from hafloatd.lab.sim.scenario import SimScenario
from hafloatd.lab.sim.state import SimState

log = logging.getLogger("hafloatd.lab.sim.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HANDLER_UNWIND_TIMEOUT_S = 1.0


class ApiServer:
    """One aiohttp server on ``scenario.host:scenario.api_port`` (ephemeral when 0)."""

    def __init__(
        self,
        scenario: SimScenario,
        state: SimState,
        faults: FaultInjector,
        recorder: Recorder,
        *,
        snapshot: Callable[[], dict[str, Any]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._scenario = scenario
        self._state = state
        self._faults = faults
        self._recorder = recorder
        self._snapshot = snapshot
        self._ssl_context = ssl_context
        self._limiter = RateLimiter(
            scenario.rate_limit_per_minute,
            scenario.rate_limit_per_hour,
            minute_window_s=scenario.rate_limit_minute_window_s,
            hour_window_s=scenario.rate_limit_hour_window_s,
        )
        self._tokens = set(scenario.tokens) | set(scenario.read_only_tokens)
        self._read_only = set(scenario.read_only_tokens)
        self._runner: web.AppRunner | None = None
        self._handlers = InflightHandlers()
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the API server is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{_url_host(self._scenario.host)}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Requests received and not answered yet (one held by a latency fault counts until
        it is answered, even when its client went away)."""
        return len(self._handlers)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        DoRoutes(self._state, lambda: self.url).add_to(app.router)
        AdminRoutes(self._state, self._faults, self._recorder, self._snapshot).add_to(app.router)
        # Short shutdown: an in-flight request held by an injected latency must not hold
        # the test's teardown for aiohttp's default minute.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self._scenario.host,
            self._scenario.api_port,
            ssl_context=self._ssl_context,
            reuse_address=True,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("event=api_listening url=%s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        # Handlers whose client hung up (held by a latency fault) outlive the runner's cleanup.
        await self._handlers.cancel_all(timeout=HANDLER_UNWIND_TIMEOUT_S)

    # --- the request pipeline ------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        with self._handlers.track():
            if is_admin_path(request.path):
                return await handler(request)
            return await self._recorded(request, handler)

    async def _recorded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        received_at, received_monotonic = time.time(), time.monotonic()
        body = await request.read()
        _, endpoint = route_names(request)
        raw_ip = request.match_info.get("ip")
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        exchange = Exchange(
            seq=self._recorder.next_seq(),
            received_at=received_at,
            received_monotonic=received_monotonic,
            connection_id=self._recorder.connection_id(
                tuple(peer) if peer else None, id(transport)
            ),
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            request_headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            request_body=body,
            endpoint=endpoint,
            ip=raw_ip if raw_ip is not None and _is_ipv4(raw_ip) else None,
            contract_exempt=self._recorder.current_exemption(),
        )
        request_id = str(uuid.uuid4())
        try:
            response = await self._answer(request, handler, exchange, request_id)
        finally:
            exchange.duration_s = time.monotonic() - received_monotonic
            self._recorder.add(exchange)
        if exchange.dropped:
            log.info(
                "event=dropped seq=%s method=%s path=%s", exchange.seq, request.method, request.path
            )
        return response

    async def _answer(
        self,
        request: web.Request,
        handler: Handler,
        exchange: Exchange,
        request_id: str,
    ) -> web.StreamResponse:
        endpoint, ip = exchange.endpoint, exchange.ip
        delay = self._faults.total_delay("latency", endpoint=endpoint, ip=ip)
        if delay > 0:
            exchange.fault = "latency"
            await asyncio.sleep(delay)
        token = _bearer_token(request)
        known_token = token if token in self._tokens else None
        drop = self._faults.take("drop_connection", endpoint=endpoint, ip=ip, consume=False)
        if drop is not None and not (drop.after_state_change and endpoint == "post_action"):
            self._faults.hit(drop)
            return self._drop(request, exchange)
        storm = self._faults.take("rate_limit_storm", endpoint=endpoint, ip=ip)
        if storm is not None:
            exchange.fault = "rate_limit_storm"
            quota = self._limiter.peek(known_token)
            reset_at = max(quota.reset_at, math.ceil(time.time()) + storm.retry_after_s)
            storm_decision = RateDecision(
                False, quota.limit, 0, reset_at, storm.retry_after_s, "storm"
            )
            return self._error(exchange, 429, request_id, storm_decision)
        injected = self._faults.take("server_error", endpoint=endpoint, ip=ip)
        if injected is not None:
            exchange.fault = "server_error"
            quota = self._limiter.peek(known_token)
            return self._error(exchange, injected.status, request_id, quota, injected.message)
        if known_token is None:
            return self._error(exchange, 401, request_id, self._limiter.peek(None))
        decision = self._limiter.check(known_token)
        if not decision.allowed:
            return self._error(exchange, 429, request_id, decision)
        if request.method not in ("GET", "HEAD") and known_token in self._read_only:
            return self._error(exchange, 403, request_id, decision)
        try:
            if endpoint is None:
                raise _unrouted(request)
            response = await handler(request)
            if exchange.endpoint == "post_action" and response.status == 201:
                exchange.state_changed = True
        except SimApiError as exc:
            response = error_response(exc.status, exc.error_id, exc.message, request_id)
        except web.HTTPException as exc:
            response = status_response(exc.status if exc.status >= 400 else 500, request_id)
        if endpoint == "post_action":
            # Only a POST that reached the operation can be dropped "after the state change";
            # one refused earlier (401, 429...) leaves the fault armed for the next POST.
            drop = self._faults.take("drop_connection", endpoint=endpoint, ip=ip)
            if drop is not None:
                return self._drop(request, exchange)
        self._finish(exchange, response, request_id, decision)
        return response

    def _error(
        self,
        exchange: Exchange,
        status: int,
        request_id: str,
        decision: RateDecision,
        text: str | None = None,
    ) -> web.Response:
        if text is None:
            response = status_response(status, request_id)
        else:
            response = error_response(status, ERROR_IDS.get(status, "error"), text, request_id)
        self._finish(exchange, response, request_id, decision)
        return response

    def _finish(
        self,
        exchange: Exchange,
        response: web.StreamResponse,
        request_id: str,
        decision: RateDecision,
    ) -> None:
        for name, value in decision.headers().items():
            response.headers[name] = value
        response.headers["x-request-id"] = request_id
        exchange.status = response.status
        exchange.response_headers = CIMultiDictProxy(CIMultiDict(response.headers))
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            exchange.response_body = response.body

    def _drop(self, request: web.Request, exchange: Exchange) -> web.Response:
        exchange.dropped = True
        exchange.fault = "drop_connection"
        transport = request.transport
        if transport is not None:
            transport.abort()  # RST; nothing of the answer below reaches the client
        return web.Response(status=500)


# --- helpers -------------------------------------------------------------------------------


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _unrouted(request: web.Request) -> SimApiError:
    # aiohttp's router refused this one (unknown path or method); DigitalOcean answers JSON.
    refusal = getattr(request.match_info, "http_exception", None)
    if isinstance(refusal, web.HTTPMethodNotAllowed):
        return SimApiError(405, "method_not_allowed", message(405))
    return not_found()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
