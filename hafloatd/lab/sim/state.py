"""The simulator's live state: who holds each reserved IP, pending actions, droplet backends.

DigitalOcean's rules live here, independent of HTTP: an IP moves only when its action
completes (``action_delay`` after the POST); while an action is pending the IP is ``locked`` and
further POSTs on it get 422; a droplet involved in a pending action refuses new ones; one
reserved IPv4 per droplet; an IP only maps to droplets of its region. Refusals are
``SimApiError`` (``refusals``) carrying DigitalOcean's status, error id and message.

Each IP keeps its ``HolderHistory`` (monotonic times); the metadata service reads it
``metadata_lag_s`` behind. Timers are owned: ``close()`` cancels every scheduled completion.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hafloatd.lab.sim.actions import (
    FIRST_ACTION_ID,
    ActionOrigin,
    ActionOutcome,
    ResourceType,
    SimAction,
)
from hafloatd.lab.sim.faults import FaultInjector
from hafloatd.lab.sim.history import HolderHistory
from hafloatd.lab.sim.refusals import (
    MSG_DROPLET_HAS_IP,
    MSG_DROPLET_PENDING,
    MSG_IP_PENDING,
    MSG_NOT_ASSIGNED,
    MSG_OTHER_REGION,
    assign_target,
    not_found,
    unprocessable,
)
from hafloatd.lab.sim.scenario import SimDroplet, SimReservedIp, SimScenario, parse_backend

log = logging.getLogger("hafloatd.lab.sim.state")


@dataclass
class DropletRuntime:
    spec: SimDroplet
    backend: str | None


@dataclass
class IpRuntime:
    spec: SimReservedIp
    holder: int | None
    history: HolderHistory
    pending_action_id: int | None = None


HolderListener = Callable[[str, int | None, int | None], None]


class SimState:
    """Mutable state behind the API, metadata and proxy servers."""

    def __init__(
        self,
        scenario: SimScenario,
        faults: FaultInjector,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = scenario
        self._faults = faults
        self._clock = clock
        self._monotonic = monotonic
        self.created_at = clock()
        self.metadata_lag_s = scenario.metadata_lag_s
        self.droplets: dict[int, DropletRuntime] = {
            d.id: DropletRuntime(d, d.backend) for d in scenario.droplets
        }
        self.ips: dict[str, IpRuntime] = {}
        self.actions: dict[int, SimAction] = {}
        self._next_action_id = FIRST_ACTION_ID
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._listeners: list[HolderListener] = []
        self._idle = asyncio.Event()
        self._idle.set()
        for rip in scenario.reserved_ips:
            runtime = IpRuntime(rip, rip.droplet_id, HolderHistory(monotonic(), rip.droplet_id))
            self.ips[rip.ip] = runtime
            self._seed_history(runtime)

    # --- queries -------------------------------------------------------------------------

    def holder(self, ip: str) -> int | None:
        return self._ip(ip).holder

    def locked(self, ip: str) -> bool:
        return self._ip(ip).pending_action_id is not None

    def held_by(self, droplet_id: int) -> str | None:
        for ip, runtime in self.ips.items():
            if runtime.holder == droplet_id:
                return ip
        return None

    def droplet_busy(self, droplet_id: int) -> bool:
        return any(a.pending and a.involves(droplet_id) for a in self.actions.values())

    def backend(self, droplet_id: int) -> str | None:
        return self.droplets[droplet_id].backend

    def holder_history(self, ip: str) -> list[tuple[float, int | None]]:
        return self._ip(ip).history.entries()

    def holder_at(self, ip: str, at: float) -> int | None:
        return self._ip(ip).history.holder_at(at)

    def metadata_ip(self, droplet_id: int, lag_s: float | None = None) -> str | None:
        """The reserved IP the droplet's metadata shows: the holder as of the lag ago
        (``metadata_lag_s`` unless given)."""
        lag = self.metadata_lag_s if lag_s is None else lag_s
        as_of = self._monotonic() - lag
        for ip, runtime in self.ips.items():
            if runtime.history.holder_at(as_of, strict=False) == droplet_id:
                return ip
        return None

    def actions_for(self, ip: str) -> list[SimAction]:
        return [a for a in self.actions.values() if a.ip == ip]

    def pending_actions(self) -> list[SimAction]:
        return [a for a in self.actions.values() if a.pending]

    def snapshot(self) -> dict[str, Any]:
        return {
            "metadata_lag_s": self.metadata_lag_s,
            "reserved_ips": {
                ip: {
                    "region": r.spec.region,
                    "holder": r.holder,
                    "locked": r.pending_action_id is not None,
                    "pending_action_id": r.pending_action_id,
                }
                for ip, r in self.ips.items()
            },
            "droplets": {
                str(d_id): {
                    "name": d.spec.name,
                    "region": d.spec.region,
                    "backend": d.backend,
                    "holds": self.held_by(d_id),
                    "busy": self.droplet_busy(d_id),
                }
                for d_id, d in self.droplets.items()
            },
            "actions": [a.to_json() for a in sorted(self.actions.values(), key=lambda a: a.id)],
        }

    # --- commands ------------------------------------------------------------------------

    def submit(self, ip: str, body: Any, resource_type: ResourceType) -> SimAction:
        """Validate a POST .../{ip}/actions body as DigitalOcean does and start the action."""
        runtime = self.ips.get(ip)
        if runtime is None:
            raise not_found()
        return self._request(runtime, assign_target(body), resource_type, origin="api")

    def move_out_of_band(self, ip: str, droplet_id: int | None) -> SimAction:
        """Start an action as a person in the control panel would (None: unassign): DigitalOcean's
        rules and action faults apply, the IP is locked until it completes. KeyError for an IP
        outside the scenario; SimApiError when DigitalOcean would refuse."""
        return self._request(self._ip(ip), droplet_id, "reserved_ip", origin="out_of_band")

    def set_metadata_lag(self, lag_s: float) -> None:
        if isinstance(lag_s, bool) or not isinstance(lag_s, int | float):
            raise TypeError(f"metadata lag: expected seconds, got {lag_s!r}")
        if not math.isfinite(lag_s) or lag_s < 0:
            raise ValueError(f"metadata lag: must be finite seconds >= 0, got {lag_s!r}")
        self.metadata_lag_s = float(lag_s)
        log.info("event=metadata_lag_set lag_s=%s", self.metadata_lag_s)

    def force_holder(self, ip: str, droplet_id: int | None) -> None:
        """Move the IP at once, with no action and no lock (a test's setup); the realistic
        out-of-band move is ``move_out_of_band``."""
        runtime = self._ip(ip)
        if droplet_id is not None:
            droplet = self.droplets.get(droplet_id)
            if droplet is None:
                raise KeyError(f"droplet {droplet_id} is not in the scenario")
            if droplet.spec.region != runtime.spec.region:
                raise ValueError(
                    f"droplet {droplet_id} is in {droplet.spec.region}, "
                    f"{ip} is reserved to {runtime.spec.region}"
                )
            other = self.held_by(droplet_id)
            if other is not None and other != ip:
                raise ValueError(f"droplet {droplet_id} already holds {other}")
        self._set_holder(runtime, droplet_id, reason="forced")

    def set_backend(self, droplet_id: int, backend: str | None) -> None:
        if droplet_id not in self.droplets:
            raise KeyError(f"droplet {droplet_id} is not in the scenario")
        if backend is not None:
            parse_backend(backend, f"droplet {droplet_id}: backend")
        self.droplets[droplet_id].backend = backend
        log.info("event=backend_set droplet_id=%s backend=%s", droplet_id, backend)

    def finish_stuck(self, status: Literal["completed", "errored"] = "completed") -> int:
        """End every stuck action with ``status``; returns how many."""
        stuck = [a for a in self.actions.values() if a.pending and a.outcome == "stuck"]
        for action in stuck:
            action.outcome = status
            self._complete(action.id)
        return len(stuck)

    def subscribe(self, listener: HolderListener) -> None:
        """``listener(ip, old_holder, new_holder)`` after every move."""
        self._listeners.append(listener)

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no action is pending (stuck actions excepted); TimeoutError otherwise."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pending = [a.id for a in self.pending_actions() if a.outcome != "stuck"]
            raise TimeoutError(f"actions still pending after {timeout}s: {pending}") from None

    async def wait_holder(
        self,
        ip: str,
        droplet_id: int | None,
        timeout: float,
    ) -> None:
        """Wait until ``ip`` is held by ``droplet_id`` (None: unassigned)."""
        runtime = self._ip(ip)
        if runtime.holder == droplet_id:
            return
        changed = asyncio.Event()

        def listener(moved_ip: str, _old: int | None, new: int | None) -> None:
            if moved_ip == ip and new == droplet_id:
                changed.set()

        self._listeners.append(listener)
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{ip} still held by {runtime.holder} after {timeout}s, expected {droplet_id}"
            ) from None
        finally:
            self._listeners.remove(listener)

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # --- internals -----------------------------------------------------------------------

    def _ip(self, ip: str) -> IpRuntime:
        runtime = self.ips.get(ip)
        if runtime is None:
            raise KeyError(f"reserved IP {ip} is not in the scenario")
        return runtime

    def _new_action_id(self) -> int:
        action_id = self._next_action_id
        self._next_action_id += 1
        return action_id

    def _request(
        self,
        runtime: IpRuntime,
        target: int | None,
        resource_type: ResourceType,
        *,
        origin: ActionOrigin,
    ) -> SimAction:
        """DigitalOcean's checks, in its order, for an assign to ``target`` (None: unassign)."""
        if runtime.pending_action_id is not None:
            raise unprocessable(MSG_IP_PENDING)
        if target is not None:
            droplet = self.droplets.get(target)
            if droplet is None:
                raise not_found()
            if self.droplet_busy(target) or (
                runtime.holder is not None and self.droplet_busy(runtime.holder)
            ):
                raise unprocessable(MSG_DROPLET_PENDING)
            if droplet.spec.region != runtime.spec.region:
                raise unprocessable(MSG_OTHER_REGION)
            if runtime.holder == target or self.held_by(target) is not None:
                raise unprocessable(MSG_DROPLET_HAS_IP)
            return self._start(runtime, "assign_ip", target, resource_type, origin)
        if runtime.holder is None:
            raise unprocessable(MSG_NOT_ASSIGNED)
        if self.droplet_busy(runtime.holder):
            raise unprocessable(MSG_DROPLET_PENDING)
        return self._start(runtime, "unassign_ip", runtime.holder, resource_type, origin)

    def _seed_history(self, runtime: IpRuntime) -> None:
        # Like a real account: each IP was reserved (and maybe assigned) before we started.
        rip = runtime.spec
        started = self.created_at - 3600
        actions: list[tuple[str, int | None]] = [("reserve_ip", None)]
        if rip.droplet_id is not None:
            actions.append(("assign_ip", rip.droplet_id))
        for offset, (action_type, droplet_id) in enumerate(actions):
            action_id = self._new_action_id()
            self.actions[action_id] = SimAction(
                id=action_id,
                type=action_type,
                ip=rip.ip,
                region=rip.region,
                resource_type="reserved_ip",
                droplet_id=droplet_id,
                previous_holder=None,
                started_at=started + 60 * offset,
                status="completed",
                completed_at=started + 60 * offset + 3,
                origin="seed",
            )

    def _start(
        self,
        runtime: IpRuntime,
        action_type: str,
        droplet_id: int,
        resource_type: ResourceType,
        origin: ActionOrigin,
    ) -> SimAction:
        ip = runtime.spec.ip
        outcome: ActionOutcome = "completed"
        delay_s = self.scenario.action_delay
        if self._faults.take("action_stuck", ip=ip) is not None:
            outcome = "stuck"
        else:
            if self._faults.take("action_errored", ip=ip) is not None:
                outcome = "errored"
            delay_s += self._faults.total_delay("action_slow", ip=ip)
        action = SimAction(
            id=self._new_action_id(),
            type=action_type,
            ip=ip,
            region=runtime.spec.region,
            resource_type=resource_type,
            droplet_id=droplet_id,
            previous_holder=runtime.holder,
            started_at=self._clock(),
            outcome=outcome,
            origin=origin,
        )
        self.actions[action.id] = action
        runtime.pending_action_id = action.id
        log.info(
            "event=action_started action_id=%s type=%s ip=%s droplet_id=%s outcome=%s "
            "origin=%s delay_s=%s",
            action.id, action_type, ip, droplet_id, outcome, origin, delay_s,
        )  # fmt: skip
        if outcome != "stuck":
            self._idle.clear()
            loop = asyncio.get_running_loop()
            self._timers[action.id] = loop.call_later(delay_s, self._complete, action.id)
        return action

    def _complete(self, action_id: int) -> None:
        self._timers.pop(action_id, None)
        action = self.actions[action_id]
        if not action.pending:
            return
        runtime = self.ips[action.ip]
        action.completed_at = self._clock()
        runtime.pending_action_id = None
        if action.outcome == "errored":
            action.status = "errored"
        else:
            action.status = "completed"
            new_holder = action.droplet_id if action.type == "assign_ip" else None
            self._set_holder(runtime, new_holder, reason=f"action {action.id}")
        log.info(
            "event=action_finished action_id=%s status=%s ip=%s holder=%s",
            action.id, action.status, action.ip, runtime.holder,
        )  # fmt: skip
        if not any(a.pending and a.outcome != "stuck" for a in self.actions.values()):
            self._idle.set()

    def _set_holder(self, runtime: IpRuntime, droplet_id: int | None, *, reason: str) -> None:
        old = runtime.holder
        runtime.holder = droplet_id
        runtime.history.record(self._monotonic(), droplet_id)
        log.info(
            "event=holder_changed ip=%s old=%s new=%s reason=%s",
            runtime.spec.ip, old, droplet_id, reason,
        )  # fmt: skip
        if old != droplet_id:
            for listener in list(self._listeners):
                listener(runtime.spec.ip, old, droplet_id)
