"""The simulator's own control endpoints under ``/_sim`` on the API port.

Not DigitalOcean's API: no authentication, never recorded, never contract-checked, no rate
limit, no injected faults. They let a test or a person drive the simulator from outside the
process (``hafloatd simulator`` then ``curl``): state, exchanges, faults, backends, out-of-band
moves, stuck actions, waiting for idle. Errors are ``{"error": message}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hafloatd.lab.sim.faults import FaultError, FaultInjector
from hafloatd.lab.sim.recording import Recorder
from hafloatd.lab.sim.responses import JSON_CONTENT_TYPE
from hafloatd.lab.sim.scenario import ScenarioError
from hafloatd.lab.sim.state import SimState

log = logging.getLogger("hafloatd.lab.sim.admin")

PREFIX = "/_sim"


def is_admin_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class AdminRoutes:
    """The ``/_sim`` handlers over the simulator's state, faults and recorder."""

    def __init__(
        self,
        state: SimState,
        faults: FaultInjector,
        recorder: Recorder,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self._state = state
        self._faults = faults
        self._recorder = recorder
        self._snapshot = snapshot

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get(PREFIX + "/state", self.state)
        router.add_get(PREFIX + "/counters", self.counters)
        router.add_get(PREFIX + "/exchanges", self.exchanges)
        router.add_get(PREFIX + "/faults", self.faults)
        router.add_post(PREFIX + "/faults", self.add_fault)
        router.add_delete(PREFIX + "/faults", self.clear_faults)
        router.add_delete(PREFIX + "/faults/{fault_id}", self.remove_fault)
        router.add_put(PREFIX + "/droplets/{droplet_id}/backend", self.set_backend)
        router.add_put(PREFIX + "/reserved_ips/{ip}/holder", self.force_holder)
        router.add_post(PREFIX + "/actions/finish-stuck", self.finish_stuck)
        router.add_post(PREFIX + "/wait-idle", self.wait_idle)

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot())

    async def counters(self, request: web.Request) -> web.Response:
        return web.json_response(self._recorder.counters.to_json())

    async def exchanges(self, request: web.Request) -> web.Response:
        since = _int(request.query.get("since", "0"), "since")
        items = [e.to_json() for e in self._recorder.exchanges if e.seq > since]
        return web.json_response({"exchanges": items})

    async def faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [f.to_json() for f in self._faults.active()]})

    async def add_fault(self, request: web.Request) -> web.Response:
        data = await _body(request)
        try:
            fault = self._faults.add_from_json(data)
        except (FaultError, TypeError) as exc:
            raise _error(400, str(exc)) from None
        log.info("event=fault_added %s", " ".join(f"{k}={v}" for k, v in fault.to_json().items()))
        return web.json_response({"fault": fault.to_json()}, status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        count = len(self._faults.active())
        self._faults.clear()
        log.info("event=faults_cleared count=%s", count)
        return web.json_response({"removed": count})

    async def remove_fault(self, request: web.Request) -> web.Response:
        fault_id = _int(request.match_info["fault_id"], "fault_id")
        if not self._faults.remove(fault_id):
            raise _error(404, f"no active fault with id {fault_id}")
        return web.json_response({"removed": 1})

    async def set_backend(self, request: web.Request) -> web.Response:
        droplet_id = _int(request.match_info["droplet_id"], "droplet_id")
        data = await _body(request)
        backend = data.get("backend")
        if backend is not None and not isinstance(backend, str):
            raise _error(400, "backend: expected host:port or null")
        try:
            self._state.set_backend(droplet_id, backend)
        except KeyError as exc:
            raise _error(404, str(exc)) from None
        except ScenarioError as exc:
            raise _error(400, str(exc)) from None
        return web.json_response({"droplet_id": droplet_id, "backend": backend})

    async def force_holder(self, request: web.Request) -> web.Response:
        ip = request.match_info["ip"]
        data = await _body(request)
        droplet_id = data.get("droplet_id")
        if droplet_id is not None and (
            not isinstance(droplet_id, int) or isinstance(droplet_id, bool)
        ):
            raise _error(400, "droplet_id: expected an integer or null")
        try:
            self._state.force_holder(ip, droplet_id)
        except KeyError as exc:
            raise _error(404, str(exc)) from None
        except ValueError as exc:
            raise _error(409, str(exc)) from None
        return web.json_response({"ip": ip, "holder": droplet_id})

    async def finish_stuck(self, request: web.Request) -> web.Response:
        data = await _body(request)
        status = data.get("status", "completed")
        if status not in ("completed", "errored"):
            raise _error(400, "status: expected completed or errored")
        finished = self._state.finish_stuck(status)
        return web.json_response({"finished": finished})

    async def wait_idle(self, request: web.Request) -> web.Response:
        timeout_text = request.query.get("timeout", "10")
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise _error(400, "timeout: expected seconds") from None
        try:
            await self._state.wait_idle(timeout)
        except TimeoutError as exc:
            raise _error(408, str(exc)) from None
        return web.json_response({"idle": True})


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise _error(400, "body: expected a JSON object") from None
    if not isinstance(data, dict):
        raise _error(400, "body: expected a JSON object")
    return data


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _error(400, f"{name}: expected an integer") from None


def _error(status: int, message: str) -> web.HTTPException:
    body = json.dumps({"error": message})
    return _ERRORS[status](text=body, content_type=JSON_CONTENT_TYPE)


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
    408: web.HTTPRequestTimeout,
    409: web.HTTPConflict,
}
