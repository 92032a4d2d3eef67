"""One simulated Droplet metadata service per droplet (plain HTTP, no auth, like 169.254.169.254).

Answers reflect the simulator's live state, ``metadata_lag_s`` behind it (changeable at run
time with ``Simulator.set_metadata_lag``):
``/metadata/v1/id``, ``hostname``, ``region``, ``interfaces/...``, ``reserved_ip/ipv4/active``
(``true``/``false``), ``reserved_ip/ipv4/ip_address`` (only while active; 404 otherwise, as the
``ipv4/`` index then lists only ``active``), the ``floating_ip/ipv4/...`` twins, and
``/metadata/v1.json`` with everything. Directory paths answer an index (one entry per line,
sub-directories with a trailing ``/``); unknown paths 404.

Faults (``metadata_down``/``slow``/``empty``/``error``/``garbage``) come from the shared
FaultInjector.
``stop()``/``start()`` on a running simulator model a service that refuses connections.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from aiohttp import web

from hafloatd.lab.sim.faults import GARBAGE_BODY, FaultInjector
from hafloatd.lab.sim.inflight import InflightHandlers
from hafloatd.lab.sim.scenario import SimDroplet
from hafloatd.lab.sim.state import SimState

log = logging.getLogger("hafloatd.lab.sim.metadata")

# DigitalOcean's resolvers as droplets see them; text only, never contacted.
NAMESERVERS = ("67.207.67.2", "67.207.67.3")
TEXT_NOT_FOUND = "404 page not found"
MetadataTree = dict[str, "MetadataTree | str"]


class MetadataServer:
    """The metadata service of one droplet, on its own port."""

    def __init__(
        self,
        droplet: SimDroplet,
        state: SimState,
        faults: FaultInjector,
        *,
        host: str,
    ) -> None:
        self.droplet = droplet
        self._state = state
        self._faults = faults
        self._host = host
        self._runner: web.AppRunner | None = None
        self._handlers = InflightHandlers()
        self.port: int | None = droplet.metadata_port or None

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metadata/v1`` (no trailing slash)."""
        if self.port is None:
            raise RuntimeError(f"metadata service of droplet {self.droplet.id} never started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metadata/v1"

    async def start(self) -> None:
        """Listen (again on the same port after a ``stop``)."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self.port or 0, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("event=metadata_listening droplet_id=%s url=%s", self.droplet.id, self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("event=metadata_stopped droplet_id=%s", self.droplet.id)
        # A handler held by metadata_slow whose client hung up outlives the runner's cleanup.
        await self._handlers.cancel_all(timeout=1.0)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._handlers.track():
            return await self._answer(request)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        droplet_id = self.droplet.id
        if self._faults.take("metadata_down", droplet_id=droplet_id) is not None:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        delay = self._faults.total_delay("metadata_slow", droplet_id=droplet_id)
        if delay > 0:
            await asyncio.sleep(delay)
        if self._faults.take("metadata_empty", droplet_id=droplet_id) is not None:
            return web.Response(text="", content_type="text/plain")
        error = self._faults.take("metadata_error", droplet_id=droplet_id)
        if error is not None:
            return web.Response(status=error.status, text="error", content_type="text/plain")
        if self._faults.take("metadata_garbage", droplet_id=droplet_id) is not None:
            return web.Response(body=GARBAGE_BODY, content_type="text/html")
        document = metadata_document(self._state, droplet_id)
        if request.path == "/metadata/v1.json":
            return web.json_response(document)
        return _resolve(request.path, metadata_tree(document))


def metadata_document(state: SimState, droplet_id: int) -> dict[str, Any]:
    """What ``/metadata/v1.json`` answers for the droplet right now (``metadata_lag_s`` behind)."""
    spec = state.droplets[droplet_id].spec
    ip = state.metadata_ip(droplet_id)
    reserved: dict[str, Any] = (
        {"ipv4": {"active": True, "ip_address": ip}} if ip else {"ipv4": {"active": False}}
    )
    return {
        "droplet_id": spec.id,
        "hostname": spec.name,
        "vendor_data": "",
        "public_keys": [],
        "auth_key": "",
        "region": spec.region,
        "interfaces": {
            "private": [
                {
                    "ipv4": {
                        "ip_address": spec.private_ipv4,
                        "netmask": "255.255.240.0",
                        "gateway": "0.0.0.0",
                    },
                    "mac": _mac(spec.id, 2),
                    "type": "private",
                }
            ],
            "public": [
                {
                    "ipv4": {
                        "ip_address": spec.public_ipv4,
                        "netmask": "255.255.240.0",
                        "gateway": _gateway(spec.public_ipv4),
                    },
                    "anchor_ipv4": {
                        "ip_address": spec.anchor_ipv4,
                        "netmask": "255.255.0.0",
                        "gateway": _gateway(spec.anchor_ipv4),
                    },
                    "mac": _mac(spec.id, 1),
                    "type": "public",
                }
            ],
        },
        "floating_ip": reserved,
        "reserved_ip": copy.deepcopy(reserved),
        "dns": {"nameservers": list(NAMESERVERS)},
        "tags": list(spec.tags),
        "features": {"dhcp_enabled": False},
    }


def metadata_tree(document: dict[str, Any]) -> MetadataTree:
    """The plain-text tree under ``/metadata/v1/`` built from the JSON document."""

    def ipv4_dir(block: dict[str, Any]) -> MetadataTree:
        return {
            "address": block["ip_address"],
            "netmask": block["netmask"],
            "gateway": block["gateway"],
        }

    def interface(entry: dict[str, Any]) -> MetadataTree:
        node: MetadataTree = {"mac": entry["mac"], "type": entry["type"]}
        node["ipv4"] = ipv4_dir(entry["ipv4"])
        if "anchor_ipv4" in entry:
            node["anchor_ipv4"] = ipv4_dir(entry["anchor_ipv4"])
        return node

    def reserved(block: dict[str, Any]) -> MetadataTree:
        ipv4: MetadataTree = {"active": "true" if block["ipv4"]["active"] else "false"}
        if block["ipv4"]["active"]:
            ipv4["ip_address"] = block["ipv4"]["ip_address"]
        return {"ipv4": ipv4}

    interfaces = document["interfaces"]
    return {
        "id": str(document["droplet_id"]),
        "hostname": document["hostname"],
        "vendor-data": document["vendor_data"],
        "public-keys": "\n".join(document["public_keys"]),
        "region": document["region"],
        "interfaces": {
            "public": {str(i): interface(e) for i, e in enumerate(interfaces["public"])},
            "private": {str(i): interface(e) for i, e in enumerate(interfaces["private"])},
        },
        "dns": {"nameservers": "\n".join(document["dns"]["nameservers"])},
        "floating_ip": reserved(document["floating_ip"]),
        "reserved_ip": reserved(document["reserved_ip"]),
        "tags": "\n".join(document["tags"]),
        "features": {"dhcp_enabled": "true" if document["features"]["dhcp_enabled"] else "false"},
    }


def _resolve(path: str, tree: MetadataTree) -> web.Response:
    prefix = "/metadata/v1"
    if path != prefix and not path.startswith(prefix + "/"):
        return _not_found()
    parts = [p for p in path[len(prefix) :].split("/") if p]
    node: MetadataTree | str = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _not_found()
        node = node[part]
    if isinstance(node, dict):
        # Directory: an index. Served with or without the trailing slash (see docs).
        lines = [f"{name}/" if isinstance(child, dict) else name for name, child in node.items()]
        return web.Response(text="\n".join(lines), content_type="text/plain")
    if path.endswith("/"):
        return _not_found()
    return web.Response(text=node, content_type="text/plain")


def _not_found() -> web.Response:
    return web.Response(status=404, text=TEXT_NOT_FOUND, content_type="text/plain")


def _mac(droplet_id: int, nic: int) -> str:
    octets = [0xDA, nic, (droplet_id >> 24) & 0xFF, (droplet_id >> 16) & 0xFF]
    octets += [(droplet_id >> 8) & 0xFF, droplet_id & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)


def _gateway(address: str) -> str:
    head, _, _ = address.rpartition(".")
    return f"{head}.1"
