"""DigitalOcean's operations on the simulated API: reserved IPs, their actions, droplets.

Serves ``/v2/reserved_ips…`` and the older ``/v2/floating_ips…`` family, ``/v2/actions/{id}``
and ``/v2/droplets/{id}`` with DigitalOcean's shapes and pagination. Each route is named
``family.endpoint`` (``reserved_ips.post_action``, ``any.get_action``): the API server's
pipeline reads the endpoint name for recording and fault matching. Refusals are raised as
``SimApiError``; authentication, rate limits and faults happen before a handler runs.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hafloatd.lab.sim.actions import ResourceType
from hafloatd.lab.sim.refusals import SimApiError, not_found
from hafloatd.lab.sim.render import action_json, droplet_json, reserved_ip_json
from hafloatd.lab.sim.responses import json_response
from hafloatd.lab.sim.state import SimState

FAMILIES: dict[str, ResourceType] = {"reserved_ips": "reserved_ip", "floating_ips": "floating_ip"}
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200


class DoRoutes:
    """The handlers of DigitalOcean's endpoints over one ``SimState``."""

    def __init__(self, state: SimState, base_url: Callable[[], str]) -> None:
        self._state = state
        self._base_url = base_url  # pagination links are absolute, as DigitalOcean's are

    def add_to(self, router: web.UrlDispatcher) -> None:
        for family in FAMILIES:
            base = f"/v2/{family}"
            router.add_get(base, self.list_ips, name=f"{family}.list_reserved_ips")
            router.add_get(base + "/{ip}", self.get_ip, name=f"{family}.get_reserved_ip")
            router.add_get(
                base + "/{ip}/actions", self.list_ip_actions, name=f"{family}.list_ip_actions"
            )
            router.add_post(base + "/{ip}/actions", self.post_action, name=f"{family}.post_action")
            router.add_get(
                base + "/{ip}/actions/{action_id}",
                self.get_ip_action,
                name=f"{family}.get_ip_action",
            )
        router.add_get("/v2/actions/{action_id}", self.get_action, name="any.get_action")
        router.add_get("/v2/droplets/{droplet_id}", self.get_droplet, name="any.get_droplet")

    # --- reserved IPs --------------------------------------------------------------------

    async def list_ips(self, request: web.Request) -> web.Response:
        family = _family(request)
        items = [reserved_ip_json(self._state, ip) for ip in sorted(self._state.ips, key=_ip_key)]
        page_items, links, total = _paginate(request, items, self._base_url())
        return json_response(200, {family: page_items, "links": links, "meta": {"total": total}})

    async def get_ip(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        return json_response(200, {_singular(_family(request)): reserved_ip_json(self._state, ip)})

    # --- actions -------------------------------------------------------------------------

    async def list_ip_actions(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        resource_type = FAMILIES[_family(request)]
        actions = sorted(self._state.actions_for(ip), key=lambda a: a.id, reverse=True)
        items = [action_json(a, resource_type=resource_type) for a in actions]
        page_items, links, total = _paginate(request, items, self._base_url())
        return json_response(200, {"actions": page_items, "links": links, "meta": {"total": total}})

    async def post_action(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            raise SimApiError(400, "bad_request", "The request body is not valid JSON.") from None
        resource_type = FAMILIES[_family(request)]
        action = self._state.submit(ip, body, resource_type)
        project_id = self._state.ips[ip].spec.project_id
        return json_response(
            201, {"action": action_json(action, resource_type=resource_type, project_id=project_id)}
        )

    async def get_ip_action(self, request: web.Request) -> web.Response:
        ip = self._known_ip(request)
        action = self._state.actions.get(_positive_int(request.match_info["action_id"]))
        if action is None or action.ip != ip:
            raise not_found()
        resource_type = FAMILIES[_family(request)]
        project_id = self._state.ips[ip].spec.project_id
        return json_response(
            200, {"action": action_json(action, resource_type=resource_type, project_id=project_id)}
        )

    async def get_action(self, request: web.Request) -> web.Response:
        action = self._state.actions.get(_positive_int(request.match_info["action_id"]))
        if action is None:
            raise not_found()
        return json_response(200, {"action": action_json(action)})

    # --- droplets ------------------------------------------------------------------------

    async def get_droplet(self, request: web.Request) -> web.Response:
        droplet_id = _positive_int(request.match_info["droplet_id"])
        if droplet_id not in self._state.droplets:
            raise not_found()
        return json_response(200, {"droplet": droplet_json(self._state, droplet_id)})

    def _known_ip(self, request: web.Request) -> str:
        ip = request.match_info["ip"]
        if ip not in self._state.ips:
            raise not_found()
        return ip


def route_names(request: web.Request) -> tuple[str | None, str | None]:
    """``(family, endpoint)`` of the matched route; ``(None, None)`` for an unrouted path."""
    name = request.match_info.route.name
    if not name or "." not in name:
        return None, None
    family, endpoint = name.split(".", 1)
    return (family if family in FAMILIES else None), endpoint


def _family(request: web.Request) -> str:
    family, _ = route_names(request)
    assert family is not None
    return family


def _singular(family: str) -> str:
    return family[:-1]  # reserved_ips -> reserved_ip


def _ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise not_found()
    return int(text)


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
