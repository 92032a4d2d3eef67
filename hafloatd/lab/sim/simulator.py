"""The DigitalOcean simulator: API server, per-droplet metadata services, per-IP TCP proxies.

Embedding (tests, the lab, benchmarks)::

    from hafloatd.lab.sim import Simulator, SimScenario, SimDroplet, SimReservedIp

    scenario = SimScenario(
        droplets=(SimDroplet(id=1001, name="node1", region="nyc3"),
                  SimDroplet(id=1002, name="node2", region="nyc3")),
        reserved_ips=(SimReservedIp(ip="203.0.113.10", region="nyc3"),),
        action_delay=0.2,
    )
    async with Simulator(scenario) as sim:
        sim.api_url                 # http://127.0.0.1:PORT (https with tls=True)
        sim.metadata_url(1001)      # http://127.0.0.1:PORT/metadata/v1
        sim.proxy_address("203.0.113.10")
        sim.faults.server_errors(3, endpoint="post_action")
        await sim.wait_idle(5)

Everything the simulator starts (listeners, connection tasks, request handlers still held by
an injected delay after their client hung up, action timers, the TLS temporary directory) is
owned and released by ``stop()``. Nothing here imports from the
daemon's side of hafloatd.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

from hafloatd.lab.sim.actions import SimAction
from hafloatd.lab.sim.api import ApiServer
from hafloatd.lab.sim.faults import FaultInjector
from hafloatd.lab.sim.metadata import MetadataServer, metadata_document
from hafloatd.lab.sim.proxy import ProxyStats, ReservedIpProxy
from hafloatd.lab.sim.recording import Exchange, Recorder, SimCounters
from hafloatd.lab.sim.refusals import SimApiError, assign_target
from hafloatd.lab.sim.scenario import SimScenario
from hafloatd.lab.sim.state import SimState
from hafloatd.lab.sim.tls import TlsMaterial, make_tls_material

log = logging.getLogger("hafloatd.lab.sim.simulator")


class Simulator:
    """One simulated DigitalOcean account. ``start()``/``stop()`` or ``async with``."""

    def __init__(self, scenario: SimScenario) -> None:
        if not isinstance(scenario, SimScenario):
            raise TypeError("Simulator(scenario): expected a SimScenario")
        self.scenario = scenario
        self.faults = FaultInjector()
        self.faults.subscribe(self._log_faults)
        self._recorder = Recorder()
        self._state: SimState | None = None
        self._api: ApiServer | None = None
        self._metadata: dict[int, MetadataServer] = {}
        self._proxies: dict[str, ReservedIpProxy] = {}
        self._tls: TlsMaterial | None = None
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("this Simulator is already started")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "event=simulator_started api=%s droplets=%s reserved_ips=%s",
            self.api_url, len(self._metadata), len(self._proxies),
        )  # fmt: skip

    async def _start(self) -> None:
        scenario = self.scenario
        state = SimState(scenario, self.faults)
        self._state = state
        if scenario.tls:
            self._tls = await make_tls_material(scenario.host)
        self._api = ApiServer(
            scenario,
            state,
            self.faults,
            self._recorder,
            snapshot=self.state_snapshot,
            ssl_context=self._tls.server_context if self._tls else None,
        )
        await self._api.start()
        for droplet in scenario.droplets:
            server = MetadataServer(droplet, state, self.faults, host=scenario.host)
            self._metadata[droplet.id] = server
            await server.start()
        for rip in scenario.reserved_ips:
            proxy = ReservedIpProxy(rip.ip, state, host=scenario.host, port=rip.proxy_port)
            self._proxies[rip.ip] = proxy
            await proxy.start()

    async def stop(self) -> None:
        """Stop every listener and task; idempotent."""
        if self._state is not None:
            self._state.close()
        for proxy in self._proxies.values():
            await proxy.stop()
        for server in self._metadata.values():
            await server.stop()
        if self._api is not None:
            await self._api.stop()
        if self._tls is not None:
            await asyncio.to_thread(self._tls.cleanup)
        if self._started:
            log.info("event=simulator_stopped")

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- where things are ----------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """``http(s)://HOST:PORT`` — no trailing slash, no ``/v2``."""
        return self._require_api().url

    @property
    def ca_file(self) -> str | None:
        """Path of the test CA's PEM when ``tls`` is on, else None."""
        return str(self._tls.ca_file) if self._tls is not None else None

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client SSL context trusting the simulator's CA (None without TLS)."""
        return self._tls.client_context() if self._tls is not None else None

    def metadata_url(self, droplet_id: int) -> str:
        """``http://HOST:PORT/metadata/v1`` of the droplet's metadata service."""
        return self._metadata_server(droplet_id).url

    def proxy_address(self, ip: str) -> tuple[str, int]:
        """``(host, port)`` standing in for the reserved IP."""
        proxy = self._proxies.get(ip)
        if proxy is None:
            raise KeyError(f"reserved IP {ip} is not in the scenario")
        return proxy.address

    def listeners(self) -> list[tuple[str, str]]:
        """``(what, where)`` for every listener, in the order the CLI prints them."""
        lines = [("api", self.api_url)]
        if self.ca_file:
            lines.append(("ca", self.ca_file))
        for droplet_id, server in self._metadata.items():
            lines.append((f"metadata {droplet_id} {server.droplet.name}", server.url))
        for ip, proxy in self._proxies.items():
            host, port = proxy.address
            lines.append((f"proxy {ip}", f"{host}:{port}"))
        return lines

    # --- state ---------------------------------------------------------------------------

    def holder(self, ip: str) -> int | None:
        """The droplet currently holding ``ip`` (the API's truth), or None."""
        return self._require_state().holder(ip)

    def locked(self, ip: str) -> bool:
        """True while an action on ``ip`` is pending."""
        return self._require_state().locked(ip)

    def set_backend(self, droplet_id: int, backend: str | None) -> None:
        """Where the proxy sends traffic while ``droplet_id`` holds an IP (``host:port``)."""
        self._require_state().set_backend(droplet_id, backend)

    def holder_history(self, ip: str) -> list[tuple[float, int | None]]:
        """``(time.monotonic(), holder)`` of ``ip``, oldest first: the holder at start, then one
        entry per change (None: unassigned). Same clock as ``Exchange.received_monotonic``."""
        return self._require_state().holder_history(ip)

    def holder_at(self, ip: str, t: float) -> int | None:
        """Who held ``ip`` at monotonic time ``t`` (before start: the holder at start).
        LookupError for a time before the oldest change kept (the last 100,000 are)."""
        return self._require_state().holder_at(ip, t)

    def force_holder(self, ip: str, droplet_id: int | None) -> None:
        """Move ``ip`` at once, with no action and no lock (state surgery for a test's setup).
        ``move_out_of_band`` is the realistic move."""
        self._require_state().force_holder(ip, droplet_id)

    def move_out_of_band(self, ip: str, droplet_id: int | None) -> SimAction:
        """Move ``ip`` as a person in the control panel would (None: unassign), without HTTP:
        a normal action (``origin="out_of_band"``) under DigitalOcean's rules and the action
        faults, ``ip`` locked until it completes ``action_delay`` later. Raises SimApiError
        (``status``, ``error_id``, ``message``) where DigitalOcean would refuse."""
        return self._require_state().move_out_of_band(ip, droplet_id)

    def actions(self, ip: str | None = None) -> list[SimAction]:
        """Every action (oldest first), or those of ``ip``."""
        state = self._require_state()
        found = state.actions_for(ip) if ip is not None else list(state.actions.values())
        return sorted(found, key=lambda a: a.id)

    def finish_stuck_actions(self, status: Literal["completed", "errored"] = "completed") -> int:
        """End actions held ``in-progress`` by an ``action_stuck`` fault; returns how many."""
        return self._require_state().finish_stuck(status)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every pending action finished (stuck ones excepted); TimeoutError."""
        await self._require_state().wait_idle(timeout)

    async def wait_holder(
        self,
        ip: str,
        droplet_id: int | None,
        timeout: float = 5.0,
    ) -> None:
        """Wait until ``ip`` is held by ``droplet_id`` (None: unassigned); TimeoutError."""
        await self._require_state().wait_holder(ip, droplet_id, timeout)

    @property
    def metadata_lag_s(self) -> float:
        """How far behind the API's truth the metadata services answer, in seconds."""
        return self._require_state().metadata_lag_s

    def set_metadata_lag(self, lag_s: float) -> None:
        """Change the metadata lag now, for every droplet: each answer from then on shows the
        holder as of ``lag_s`` ago (raising it can show an older holder again, as a stale
        metadata cache would). ValueError below 0 or not finite."""
        self._require_state().set_metadata_lag(lag_s)

    def metadata_view(self, droplet_id: int) -> dict[str, Any]:
        """What the droplet's ``/metadata/v1.json`` answers now."""
        self._metadata_server(droplet_id)
        return metadata_document(self._require_state(), droplet_id)

    async def stop_metadata(self, droplet_id: int) -> None:
        """Stop the droplet's metadata service: connections are refused until started."""
        await self._metadata_server(droplet_id).stop()

    async def start_metadata(self, droplet_id: int) -> None:
        """Start it again on the same port."""
        await self._metadata_server(droplet_id).start()

    def proxy_stats(self, ip: str) -> ProxyStats:
        proxy = self._proxies.get(ip)
        if proxy is None:
            raise KeyError(f"reserved IP {ip} is not in the scenario")
        return proxy.stats

    def state_snapshot(self) -> dict[str, Any]:
        """What ``GET /_sim/state`` answers (no tokens in it)."""
        snapshot = self._require_state().snapshot()
        snapshot["faults"] = [f.to_json() for f in self.faults.active()]
        snapshot["counters"] = self._recorder.counters.to_json()
        snapshot["proxies"] = {ip: p.stats.to_json() for ip, p in self._proxies.items()}
        snapshot["metadata"] = {
            str(d_id): {"url": s.url if s.port else None, "running": s.running}
            for d_id, s in self._metadata.items()
        }
        return snapshot

    # --- recording -----------------------------------------------------------------------

    @property
    def exchanges(self) -> list[Exchange]:
        """Exchanges on the API server since start (or ``clear_exchanges``), oldest first."""
        return self._recorder.exchanges

    @property
    def all_exchanges(self) -> list[Exchange]:
        """Every exchange since start, ``clear_exchanges`` notwithstanding (contract checks)."""
        return self._recorder.history

    @property
    def counters(self) -> SimCounters:
        return self._recorder.counters

    @property
    def requests_in_flight(self) -> int:
        """API requests received and not answered yet: a POST held by a ``latency`` fault
        counts until it is answered (and takes effect), even after its client went away."""
        return self._require_api().in_flight

    def clear_exchanges(self) -> None:
        self._recorder.clear()

    def requests(
        self, endpoint: str | None = None, *, method: str | None = None, ip: str | None = None
    ) -> list[Exchange]:
        """Recorded exchanges filtered by endpoint name, method and IP."""
        return [
            e
            for e in self._recorder.exchanges
            if (endpoint is None or e.endpoint == endpoint)
            and (method is None or e.method == method.upper())
            and (ip is None or e.ip == ip)
        ]

    def posts(self, ip: str | None = None, *, droplet_id: int | None = None) -> list[Exchange]:
        """POSTs of actions (on either path family), optionally for one IP and/or only the
        assigns to ``droplet_id`` (read as the simulator reads the body: ``"1002"`` counts),
        whatever their answer (``status``, ``state_changed`` say)."""
        found = self.requests("post_action", method="POST", ip=ip)
        if droplet_id is None:
            return found
        return [e for e in found if _assign_target(e) == droplet_id]

    @contextmanager
    def expect_invalid_requests(self, reason: str) -> Iterator[None]:
        """Exempt the requests sent inside the block from the request half of the contract
        check (their responses are still checked). Use it only for deliberately bad requests."""
        with self._recorder.expect_invalid_requests(reason):
            yield

    # --- internals -----------------------------------------------------------------------

    def _log_faults(self) -> None:
        active = ",".join(f"{f.kind}#{f.id}" for f in self.faults.active()) or "none"
        log.info("event=faults_changed active=%s", active)

    def _require_state(self) -> SimState:
        if self._state is None:
            raise RuntimeError("the Simulator is not started")
        return self._state

    def _require_api(self) -> ApiServer:
        if self._api is None or self._api.port is None:
            raise RuntimeError("the Simulator is not started")
        return self._api

    def _metadata_server(self, droplet_id: int) -> MetadataServer:
        server = self._metadata.get(droplet_id)
        if server is None:
            raise KeyError(f"droplet {droplet_id} is not in the scenario")
        return server


def _assign_target(exchange: Exchange) -> int | None:
    try:
        return assign_target(exchange.request_json())
    except (ValueError, SimApiError):  # not JSON, or a body the simulator refused
        return None
