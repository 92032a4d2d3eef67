"""The simulated DigitalOcean API server (aiohttp) and its ``/_sim`` admin endpoints.

Serves ``/v2/reserved_ips…`` and the older ``/v2/floating_ips…`` family, ``/v2/actions/{id}``
and ``/v2/droplets/{id}`` with DigitalOcean's shapes, bearer auth (401; 403 for a read-only
token on POST), per-token rate limits with ``ratelimit-*`` headers on every answer, an
``x-request-id`` header, and injected faults. Every request (except ``/_sim``) is recorded as
an ``Exchange``.

Order in which a request is answered: injected latency → injected drop (before handling) →
injected 429 storm → injected error status → authentication (401) → rate limit (429) → scope
(403) → the operation → injected drop after the state change (POST only).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from hafloatd.lab.sim_faults import FaultError, FaultInjector
from hafloatd.lab.sim_ratelimit import RateDecision, RateLimiter
from hafloatd.lab.sim_recording import Exchange, Recorder
from hafloatd.lab.sim_render import action_json, droplet_json, reserved_ip_json
from hafloatd.lab.sim_scenario import ScenarioError, SimScenario
from hafloatd.lab.sim_state import ResourceType, SimApiError, SimState, not_found

log = logging.getLogger("hafloatd.lab.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAMILIES: dict[str, ResourceType] = {"reserved_ips": "reserved_ip", "floating_ips": "floating_ip"}
ERROR_IDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
ERROR_MESSAGES = {
    401: "Unable to authenticate you",
    403: "You are not authorized to perform this operation",
    404: "The resource you were accessing could not be found.",
    405: "Method not allowed",
    429: "API rate limit exceeded.",
    500: "Unexpected server-side error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200
JSON_CONTENT_TYPE = "application/json"


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
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the API server is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{_url_host(self._scenario.host)}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
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

    # --- routing -------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        for family in FAMILIES:
            base = f"/v2/{family}"
            r.add_get(base, self._list_ips, name=f"{family}.list_reserved_ips")
            r.add_get(base + "/{ip}", self._get_ip, name=f"{family}.get_reserved_ip")
            r.add_get(
                base + "/{ip}/actions", self._list_ip_actions, name=f"{family}.list_ip_actions"
            )
            r.add_post(base + "/{ip}/actions", self._post_action, name=f"{family}.post_action")
            r.add_get(
                base + "/{ip}/actions/{action_id}",
                self._get_ip_action,
                name=f"{family}.get_ip_action",
            )
        r.add_get("/v2/actions/{action_id}", self._get_action, name="any.get_action")
        r.add_get("/v2/droplets/{droplet_id}", self._get_droplet, name="any.get_droplet")
        admin = "/_sim"
        r.add_get(admin + "/state", self._admin_state)
        r.add_get(admin + "/counters", self._admin_counters)
        r.add_get(admin + "/exchanges", self._admin_exchanges)
        r.add_get(admin + "/faults", self._admin_faults)
        r.add_post(admin + "/faults", self._admin_add_fault)
        r.add_delete(admin + "/faults", self._admin_clear_faults)
        r.add_delete(admin + "/faults/{fault_id}", self._admin_remove_fault)
        r.add_put(admin + "/droplets/{droplet_id}/backend", self._admin_set_backend)
        r.add_put(admin + "/reserved_ips/{ip}/holder", self._admin_force_holder)
        r.add_post(admin + "/actions/finish-stuck", self._admin_finish_stuck)
        r.add_post(admin + "/wait-idle", self._admin_wait_idle)

    # --- the request pipeline ------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/_sim" or request.path.startswith("/_sim/"):
            return await handler(request)
        received_at, received_monotonic = time.time(), time.monotonic()
        body = await request.read()
        _, endpoint = _route_names(request)
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
            return self._error(exchange, injected.status, request_id, quota)
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
            response = _error_response(exc.status, exc.error_id, exc.message, request_id)
        except web.HTTPException as exc:
            response = _status_response(exc.status if exc.status >= 400 else 500, request_id)
        if endpoint == "post_action":
            # Only a POST that reached the operation can be dropped "after the state change";
            # one refused earlier (401, 429...) leaves the fault armed for the next POST.
            drop = self._faults.take("drop_connection", endpoint=endpoint, ip=ip)
            if drop is not None:
                return self._drop(request, exchange)
        self._finish(exchange, response, request_id, decision)
        return response

    def _error(
        self, exchange: Exchange, status: int, request_id: str, decision: RateDecision
    ) -> web.Response:
        response = _status_response(status, request_id)
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

    # --- operations ----------------------------------------------------------------------

    async def _list_ips(self, request: web.Request) -> web.Response:
        family = _family(request)
        items = [reserved_ip_json(self._state, ip) for ip in sorted(self._state.ips, key=_ip_key)]
        page_items, links, total = _paginate(request, items, self.url)
        return _json(200, {family: page_items, "links": links, "meta": {"total": total}})

    async def _get_ip(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        return _json(200, {_singular(_family(request)): reserved_ip_json(self._state, ip)})

    async def _list_ip_actions(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        resource_type = FAMILIES[_family(request)]
        actions = sorted(self._state.actions_for(ip), key=lambda a: a.id, reverse=True)
        items = [action_json(a, resource_type=resource_type) for a in actions]
        page_items, links, total = _paginate(request, items, self.url)
        return _json(200, {"actions": page_items, "links": links, "meta": {"total": total}})

    async def _post_action(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            raise SimApiError(400, "bad_request", "The request body is not valid JSON.") from None
        resource_type = FAMILIES[_family(request)]
        action = self._state.submit(ip, body, resource_type)
        project_id = self._state.ips[ip].spec.project_id
        return _json(
            201, {"action": action_json(action, resource_type=resource_type, project_id=project_id)}
        )

    async def _get_ip_action(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        action = self._state.actions.get(_positive_int(request.match_info["action_id"]))
        if action is None or action.ip != ip:
            raise not_found()
        resource_type = FAMILIES[_family(request)]
        project_id = self._state.ips[ip].spec.project_id
        return _json(
            200, {"action": action_json(action, resource_type=resource_type, project_id=project_id)}
        )

    async def _get_action(self, request: web.Request) -> web.Response:
        action = self._state.actions.get(_positive_int(request.match_info["action_id"]))
        if action is None:
            raise not_found()
        return _json(200, {"action": action_json(action)})

    async def _get_droplet(self, request: web.Request) -> web.Response:
        droplet_id = _positive_int(request.match_info["droplet_id"])
        if droplet_id not in self._state.droplets:
            raise not_found()
        return _json(200, {"droplet": droplet_json(self._state, droplet_id)})

    def _known_ip(self, request: web.Request) -> str:
        ip = request.match_info["ip"]
        if ip not in self._state.ips:
            raise not_found()
        return ip

    # --- admin (/_sim): no auth, not recorded, not part of the contract -------------------

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot())

    async def _admin_counters(self, request: web.Request) -> web.Response:
        return web.json_response(self._recorder.counters.to_json())

    async def _admin_exchanges(self, request: web.Request) -> web.Response:
        since = _admin_int(request.query.get("since", "0"), "since")
        items = [e.to_json() for e in self._recorder.exchanges if e.seq > since]
        return web.json_response({"exchanges": items})

    async def _admin_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [f.to_json() for f in self._faults.active()]})

    async def _admin_add_fault(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        try:
            fault = self._faults.add_from_json(data)
        except (FaultError, TypeError) as exc:
            raise _admin_error(400, str(exc)) from None
        log.info("event=fault_added %s", " ".join(f"{k}={v}" for k, v in fault.to_json().items()))
        return web.json_response({"fault": fault.to_json()}, status=201)

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        count = len(self._faults.active())
        self._faults.clear()
        log.info("event=faults_cleared count=%s", count)
        return web.json_response({"removed": count})

    async def _admin_remove_fault(self, request: web.Request) -> web.Response:
        fault_id = _admin_int(request.match_info["fault_id"], "fault_id")
        if not self._faults.remove(fault_id):
            raise _admin_error(404, f"no active fault with id {fault_id}")
        return web.json_response({"removed": 1})

    async def _admin_set_backend(self, request: web.Request) -> web.Response:
        droplet_id = _admin_int(request.match_info["droplet_id"], "droplet_id")
        data = await _admin_body(request)
        backend = data.get("backend")
        if backend is not None and not isinstance(backend, str):
            raise _admin_error(400, "backend: expected host:port or null")
        try:
            self._state.set_backend(droplet_id, backend)
        except KeyError as exc:
            raise _admin_error(404, str(exc)) from None
        except ScenarioError as exc:
            raise _admin_error(400, str(exc)) from None
        return web.json_response({"droplet_id": droplet_id, "backend": backend})

    async def _admin_force_holder(self, request: web.Request) -> web.Response:
        ip = request.match_info["ip"]
        data = await _admin_body(request)
        droplet_id = data.get("droplet_id")
        if droplet_id is not None and (
            not isinstance(droplet_id, int) or isinstance(droplet_id, bool)
        ):
            raise _admin_error(400, "droplet_id: expected an integer or null")
        try:
            self._state.force_holder(ip, droplet_id)
        except KeyError as exc:
            raise _admin_error(404, str(exc)) from None
        except ValueError as exc:
            raise _admin_error(409, str(exc)) from None
        return web.json_response({"ip": ip, "holder": droplet_id})

    async def _admin_finish_stuck(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        status = data.get("status", "completed")
        if status not in ("completed", "errored"):
            raise _admin_error(400, "status: expected completed or errored")
        finished = self._state.finish_stuck(status)
        return web.json_response({"finished": finished})

    async def _admin_wait_idle(self, request: web.Request) -> web.Response:
        timeout_text = request.query.get("timeout", "10")
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise _admin_error(400, "timeout: expected seconds") from None
        try:
            await self._state.wait_idle(timeout)
        except TimeoutError as exc:
            raise _admin_error(408, str(exc)) from None
        return web.json_response({"idle": True})


# --- helpers -------------------------------------------------------------------------------


def _route_names(request: web.Request) -> tuple[str | None, str | None]:
    name = request.match_info.route.name
    if not name or "." not in name:
        return None, None
    family, endpoint = name.split(".", 1)
    return (family if family in FAMILIES else None), endpoint


def _family(request: web.Request) -> str:
    family, _ = _route_names(request)
    assert family is not None
    return family


def _singular(family: str) -> str:
    return family[:-1]  # reserved_ips -> reserved_ip


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


def _ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise not_found()
    return int(text)


def _message(status: int) -> str:
    return ERROR_MESSAGES.get(status, "The request could not be processed.")


def _unrouted(request: web.Request) -> SimApiError:
    # aiohttp's router refused this one (unknown path or method); DigitalOcean answers JSON.
    refusal = getattr(request.match_info, "http_exception", None)
    if isinstance(refusal, web.HTTPMethodNotAllowed):
        return SimApiError(405, "method_not_allowed", _message(405))
    return not_found()


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type=JSON_CONTENT_TYPE,
        charset="utf-8",
    )


def _error_response(status: int, error_id: str, message: str, request_id: str) -> web.Response:
    return _json(status, {"id": error_id, "message": message, "request_id": request_id})


def _status_response(status: int, request_id: str) -> web.Response:
    return _error_response(status, ERROR_IDS.get(status, "error"), _message(status), request_id)


def _paginate(
    request: web.Request, items: list[dict[str, Any]], base_url: str
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    page = _query_int(request, "page", 1)
    per_page = min(_query_int(request, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    start = (page - 1) * per_page
    chunk = items[start : start + per_page]
    url = f"{base_url}{request.path}"

    def link(number: int) -> str:
        return f"{url}?page={number}&per_page={per_page}"

    pages: dict[str, str] = {}
    if page > 1:
        pages["first"] = link(1)
        pages["prev"] = link(min(page - 1, last))
    if page < last:
        pages["next"] = link(page + 1)
        pages["last"] = link(last)
    return chunk, ({"pages": pages} if pages else {}), total


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) < 1:
        raise SimApiError(400, "bad_request", f"{name} must be a positive integer.")
    return int(text)


async def _admin_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise _admin_error(400, "body: expected a JSON object") from None
    if not isinstance(data, dict):
        raise _admin_error(400, "body: expected a JSON object")
    return data


def _admin_int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _admin_error(400, f"{name}: expected an integer") from None


def _admin_error(status: int, message: str) -> web.HTTPException:
    body = json.dumps({"error": message})
    return _ADMIN_ERRORS[status](text=body, content_type=JSON_CONTENT_TYPE)


_ADMIN_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
    408: web.HTTPRequestTimeout,
    409: web.HTTPConflict,
}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
