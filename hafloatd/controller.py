"""One controller per reserved IP: what Pacemaker asks of it, answered truthfully.

The parts, each in its own module: the role Pacemaker gave the IP (``roles``), who holds it
(``holder``: the API's and the metadata's answers fused by one rule), moving it (``moves``:
one POST, confirmed by one rule) and the operation owner that runs starts and stops
(``operations``). This class wires them to the control protocol:

* ``start`` succeeds only once the IP is confirmed here by an answer obtained after the request
  arrived; it POSTs at most one assign;
* ``stop`` never fails for a local reason (an API or disk problem is logged and reported in
  ``status``);
* ``monitor`` answers from state, without I/O: the role, then the holder view, then health.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hafloatd.config import ApiConfig, IpConfig, MetadataConfig
from hafloatd.control.protocol import ControlReply
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.errors import (
    OCF_ERR_GENERIC,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    DeadlineExceeded,
    HafloatdError,
)
from hafloatd.holder import Freshness, HolderTruth, HolderView
from hafloatd.logs import one_line
from hafloatd.metadata import DropletIdentity, MetadataClient
from hafloatd.metrics import FAILOVER_PHASES, Metrics
from hafloatd.moves import Confirmation, FailoverTimeline, Mover
from hafloatd.operations import OperationOwner
from hafloatd.probe import HealthProbe, HealthState
from hafloatd.roles import Role, RoleRecord, RoleStore
from hafloatd.stop_records import StopRecord, stops_the_role

log = logging.getLogger("hafloatd.controller")

# A metadata answer contradicting the API triggers a re-check at most this often.
RECHECK_MIN_INTERVAL_S = 5.0
TIMELINE_KEEP = 10
# Longest a stop waits for its role to reach the disk before answering anyway.
STOP_PERSIST_WAIT_S = 2.0

OpResult = ControlReply  # what every operation answers: the control reply itself
# (resource, node, reason): tells Pacemaker a started resource failed (crm_resource --fail).
PacemakerFailureHook = Callable[[str, str, str], None]


def freshness(api: ApiConfig, metadata: MetadataConfig) -> Freshness:
    """How long each source's answer counts (docs/operations.md, "How fresh ...")."""
    return Freshness(
        api_s=2 * api.holder_check_interval + 2 * api.request_timeout,
        metadata_s=3 * metadata.poll_interval + metadata.timeout,
        metadata_lag_s=metadata.max_lag,
    )


class IpController:
    """Everything hafloatd does for one reserved IP."""

    def __init__(
        self,
        ip_config: IpConfig,
        *,
        api: DoApiClient,
        api_config: ApiConfig,
        metadata: MetadataClient,
        metadata_config: MetadataConfig,
        identity: DropletIdentity,
        roles: RoleStore,
        metrics: Metrics,
        probe: HealthProbe | None = None,
        on_health_failure: PacemakerFailureHook | None = None,
    ) -> None:
        self.ip = ip_config.address
        self.ip_config = ip_config
        self.api = api
        self.api_config = api_config
        self.identity = identity
        self.roles = roles
        self.metrics = metrics
        self.probe = probe
        self.on_health_failure = on_health_failure
        self.truth = HolderTruth(identity.droplet_id, freshness(api_config, metadata_config))
        self.mover = Mover(
            self.ip,
            identity.droplet_id,
            api=api,
            metadata=metadata,
            metadata_max_lag_s=metadata_config.max_lag,
            observe_api=self._observe,
        )
        self.operations = OperationOwner(self.ip)
        self.record = roles.load(self.ip)
        # A stop's unassign POST that was on its way when the previous process died may still
        # land. It was sent before this process started, so its client had given up by now +
        # request_timeout at the latest: the bound an unknown-fate POST gets everywhere here.
        self._old_unassign_until = (
            time.monotonic() + api_config.request_timeout if self.record.unassign_pending else 0.0
        )
        self.timelines: deque[FailoverTimeline] = deque(maxlen=TIMELINE_KEEP)
        self.last_error: str | None = None
        self._recheck_task: asyncio.Task[None] | None = None
        self._last_recheck = -RECHECK_MIN_INTERVAL_S
        self.metrics.role.labels(ip=self.ip).set(1 if self.role is Role.STARTED else 0)
        self.metrics.holder_is_self.labels(ip=self.ip).set(-1)

    @property
    def role(self) -> Role:
        return self.record.role

    @property
    def pacemaker_resource(self) -> str | None:
        return self.record.resource

    @property
    def pacemaker_node(self) -> str | None:
        return self.record.node

    # ----------------------------------------------------------------- operations

    async def start(self, deadline: Deadline) -> ControlReply:
        """Idempotent start: success only once the IP is confirmed to point here. (The
        Pacemaker names come through ``remember_names``, from every request.)"""
        received = time.monotonic()
        return await self.operations.run("start", deadline, lambda: self._start(deadline, received))

    async def stop(self, deadline: Deadline) -> ControlReply:
        """Stop per ``on_stop``; never fails because the API, the disk or anything local does."""
        self._set_role(Role.STOPPED)  # monitor says "not running" from now on
        reply = await self.operations.run("stop", deadline, lambda: self._stop(deadline))
        if not reply.ok:  # only a queue or deadline problem gets here: still a stop
            return ControlReply(OCF_SUCCESS, f"stopped; {reply.reason}")
        return reply

    def monitor(self, *, probe: bool = False) -> ControlReply:
        """Answered from state, without any I/O (DESIGN §3)."""
        if self.role is Role.STOPPED:
            return ControlReply(OCF_NOT_RUNNING, "", self._monitor_data())
        view = self.holder_view()
        if view.held_here is None:
            return ControlReply(
                OCF_ERR_GENERIC,
                f"cannot confirm who holds reserved IP {self.ip}: {view.why} "
                f"(last error: {self.last_error or 'none'})",
                self._monitor_data(view),
            )
        if not view.held_here:
            return ControlReply(
                OCF_ERR_GENERIC,
                f"reserved IP {self.ip} points to {view.describe_holder()}, not this droplet "
                f"({self.identity.droplet_id}) (source: {view.source})",
                self._monitor_data(view),
            )
        if self.probe is not None and self.probe.state is HealthState.DOWN:
            return ControlReply(
                OCF_ERR_GENERIC,
                f"health check failing: {self.probe.last_error or 'unhealthy'}",
                self._monitor_data(view),
            )
        return ControlReply(OCF_SUCCESS, "", self._monitor_data(view))

    def remember_names(self, resource: str | None, node: str | None) -> None:
        """Keep the Pacemaker resource and node names any request carries (persisted with the
        role, so failure notification survives a restart)."""
        resource = resource or self.record.resource
        node = node or self.record.node
        if (resource, node) != (self.record.resource, self.record.node):
            self.record = dataclasses.replace(self.record, resource=resource, node=node)
            self.roles.schedule(self.ip, self.record)

    def apply_stop_record(self, record: StopRecord) -> bool:
        """A stop the agent answered while this daemon was down (stop_records); True if it
        is newer than the role and so stops it."""
        if not stops_the_role(record, self.record.changed_at or None):
            return False
        self.remember_names(record.resource, record.node)
        self._set_role(Role.STOPPED)
        self.metrics.stop_records_applied_total.labels(ip=self.ip).inc()
        return True

    # ----------------------------------------------------------------- holder truth

    def holder_view(self) -> HolderView:
        now = time.monotonic()
        if self.truth.wants_api_answer(now):
            self.request_recheck()
        return self.truth.view(now)

    def observe_metadata(self, holds: bool | None, *, asked_at: float | None = None) -> None:
        """Feed one metadata poll result (True: the metadata says this IP is here)."""
        asked_at = time.monotonic() if asked_at is None else asked_at
        if self.truth.observe_metadata(holds, asked_at=asked_at):
            if self.truth.wants_api_answer(asked_at):
                self.request_recheck()
            self._export_holder()

    async def refresh_from_api(self, deadline: Deadline) -> None:
        """Authoritative holder check (slow cadence, on disagreement); never raises."""
        asked_at = time.monotonic()
        try:
            reserved = await self.api.get_reserved_ip(self.ip, deadline)
        except HafloatdError as exc:
            self.last_error = one_line(exc)
            log.warning("event=holder_check_failed ip=%s error=%s", self.ip, self.last_error)
            return
        self._observe(reserved.droplet_id, reserved.locked, asked_at, "api")

    def request_recheck(self) -> None:
        """Schedule one authoritative re-check, debounced; never blocks the caller."""
        now = time.monotonic()
        if self._recheck_task is not None and not self._recheck_task.done():
            return
        if now - self._last_recheck < RECHECK_MIN_INTERVAL_S:
            return
        self._last_recheck = now
        timeout = self.api_config.request_timeout * 2
        self._recheck_task = asyncio.get_running_loop().create_task(
            self.refresh_from_api(Deadline.after(timeout)), name=f"recheck-{self.ip}"
        )

    # ----------------------------------------------------------------- health

    def on_health_change(self, old: HealthState, new: HealthState) -> None:
        """A health fall on a started node tells Pacemaker at once (notify_failures)."""
        if new is not HealthState.DOWN or self.role is not Role.STARTED:
            return
        if self.on_health_failure and self.pacemaker_resource and self.pacemaker_node:
            reason = self.probe.last_error if self.probe and self.probe.last_error else "unhealthy"
            self.on_health_failure(self.pacemaker_resource, self.pacemaker_node, reason)

    def notification_state(self) -> str:
        if self.on_health_failure is None:
            return "off (pacemaker.notify_failures is false)"
        if not (self.pacemaker_resource and self.pacemaker_node):
            return "not armed: no Pacemaker resource/node name received yet"
        return f"armed ({self.pacemaker_resource} on {self.pacemaker_node})"

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, object]:
        view = self.holder_view()
        last = self.timelines[-1].as_dict() if self.timelines else None
        persist_error = self.roles.persist_error(self.ip)
        return {
            "ip": self.ip,
            "role": self.role.value,
            "role_persisted": persist_error is None,
            "role_persist_error": persist_error,
            "on_stop": self.ip_config.on_stop,
            "droplet_id": self.identity.droplet_id,
            "held_here": view.held_here,
            "holder_droplet_id": view.droplet_id,
            "holder_source": view.source,
            "holder_why": view.why or None,
            "holder_locked": bool(self.truth.api and self.truth.api.locked),
            "freshness_bound_s": self.truth.freshness.bound_s,
            "health": self.probe.state.value if self.probe else "not_configured",
            "last_failover": last,
            "last_error": self.last_error,
            "pacemaker_resource": self.pacemaker_resource,
            "pacemaker_node": self.pacemaker_node,
            "failure_notification": self.notification_state(),
            "in_flight": self.operations.in_flight,
        }

    async def close(self) -> None:
        await self.operations.close()
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recheck_task

    # ----------------------------------------------------------------- start

    async def _start(self, deadline: Deadline, received: float) -> ControlReply:
        timeline = FailoverTimeline(received=time.time())
        self.timelines.append(timeline)
        try:
            return await self._start_steps(deadline, timeline, received)
        except asyncio.CancelledError:
            timeline.outcome = "cancelled"
            raise
        except HafloatdError as exc:
            timeline.outcome = "failed"
            timeline.error = one_line(exc)
            self.last_error = timeline.error
            self.metrics.failovers_total.labels(ip=self.ip, outcome="failed").inc()
            log.error("event=start_failed ip=%s error=%s", self.ip, timeline.error)
            return ControlReply(exc.ocf_code, timeline.error, {"timeline": timeline.as_dict()})

    async def _start_steps(
        self, deadline: Deadline, timeline: FailoverTimeline, received: float
    ) -> ControlReply:
        await self._outwait_old_unassign(deadline)
        if not self._known_elsewhere(received):
            # Only an answer obtained after this request may say "already here"; a locked IP
            # is waited out (in flux is neither here nor elsewhere).
            current = await self.mover.lookup(deadline)
            if current.droplet_id == self.identity.droplet_id:
                timeline.outcome = "already_held"
                await self._persist_started(deadline)
                self.metrics.failovers_total.labels(ip=self.ip, outcome="already_held").inc()
                log.info("event=start ip=%s outcome=already_held confirmed_by=api", self.ip)
                return ControlReply(OCF_SUCCESS, "", {"timeline": timeline.as_dict()})
        confirmation = await self.mover.assign_here(deadline, timeline)
        timeline.holder_confirmed = time.time()
        confirmation.phase_monotonic["holder_confirmed"] = time.monotonic()
        timeline.confirmed_by = confirmation.by
        timeline.outcome = "moved" if confirmation.action_id is not None else "already_held"
        self.last_error = None
        self._export_holder()
        await self._persist_started(deadline)
        self._observe_phases(received, confirmation)
        self.metrics.failovers_total.labels(ip=self.ip, outcome=timeline.outcome).inc()
        log.info(
            "event=start ip=%s outcome=%s action_id=%s confirmed_by=%s total_ms=%.1f",
            self.ip,
            timeline.outcome,
            confirmation.action_id,
            confirmation.by,
            (confirmation.phase_monotonic["holder_confirmed"] - received) * 1000,
        )
        return ControlReply(OCF_SUCCESS, "", {"timeline": timeline.as_dict()})

    def _known_elsewhere(self, now: float) -> bool:
        """POST without looking first only on a fresh, unlocked API answer naming another
        holder that the metadata does not contradict: the usual failover, where the
        survivor's view is kept fresh by the holder check. A stale "elsewhere" is harmless:
        the POST's 422 "already assigned" is checked by a GET."""
        api = self.truth.api
        if api is None or api.locked or api.droplet_id == self.identity.droplet_id:
            return False
        if now - api.at > 1.5 * self.api_config.holder_check_interval:
            return False
        return self.truth.view(now).held_here is False

    async def _outwait_old_unassign(self, deadline: Deadline) -> None:
        """After a restart that interrupted a stop's unassign, wait until its POST can no longer
        land: answered "already here" (or confirmed) before that, a start could be undone by
        it after the reply."""
        wait = self._old_unassign_until - time.monotonic()
        if wait <= 0:
            return
        log.info(
            "event=start_waits ip=%s reason=unassign_before_restart wait_ms=%.0f",
            self.ip,
            wait * 1000,
        )
        if wait > deadline.remaining():
            raise DeadlineExceeded(
                f"the unassign of {self.ip} sent before hafloatd restarted may still land for "
                f"{wait:.1f}s (api.request_timeout); start again after that"
            )
        await asyncio.sleep(wait)

    async def _persist_started(self, deadline: Deadline) -> None:
        self._set_role(Role.STARTED)
        await self.roles.wait_written(self.ip, deadline.remaining())

    def _observe_phases(self, received: float, confirmation: Confirmation) -> None:
        previous = received
        for phase in FAILOVER_PHASES:
            at = confirmation.phase_monotonic.get(phase)
            if at is None:
                continue
            self.metrics.failover_phase_seconds.labels(ip=self.ip, phase=phase).observe(
                max(0.0, at - previous)
            )
            previous = at
        confirmed = confirmation.phase_monotonic.get("holder_confirmed")
        if confirmed is not None:
            self.metrics.failover_total_seconds.labels(ip=self.ip).observe(confirmed - received)

    # ----------------------------------------------------------------- stop

    async def _stop(self, deadline: Deadline) -> ControlReply:
        unassign = self.ip_config.on_stop == "unassign"
        self._set_role(Role.STOPPED, unassign_pending=unassign)
        await self.roles.wait_written(self.ip, deadline.cap(STOP_PERSIST_WAIT_S))
        if not unassign:
            log.info("event=stop ip=%s on_stop=release api_calls=0", self.ip)
            return ControlReply(OCF_SUCCESS)
        try:
            return await self._unassign(deadline)
        finally:  # its fate is known now: a restart need not wait for it
            self.record = dataclasses.replace(self.record, unassign_pending=False)
            self.roles.schedule(self.ip, self.record)

    async def _unassign(self, deadline: Deadline) -> ControlReply:
        try:
            holder = await self.mover.unassign_if_here(deadline)
        except HafloatdError as exc:
            # A failed stop blocks the resource until cleanup (or fences the node); the next
            # node's assign moves the IP anyway: report the problem, do not fail the stop.
            self.last_error = one_line(exc)
            log.warning(
                "event=stop ip=%s on_stop=unassign result=failed error=%s", self.ip, self.last_error
            )
            return ControlReply(OCF_SUCCESS, f"unassign failed (stop still succeeds): {exc}")
        self._export_holder()
        if holder != self.identity.droplet_id:
            log.info(
                "event=stop ip=%s on_stop=unassign skipped=not_held holder=%s", self.ip, holder
            )
        else:
            log.info("event=stop ip=%s on_stop=unassign result=unassigned", self.ip)
        return ControlReply(OCF_SUCCESS)

    # ----------------------------------------------------------------- internals

    def _observe(self, droplet_id: int | None, locked: bool, asked_at: float, source: str) -> None:
        previous = self.truth.api
        if not self.truth.observe_api(droplet_id, locked=locked, asked_at=asked_at, source=source):
            return
        if locked:
            log.debug("event=holder_check_locked ip=%s holder=%s", self.ip, droplet_id)
        elif previous is None or previous.droplet_id != droplet_id:
            self.metrics.last_transition_timestamp_seconds.labels(ip=self.ip).set(time.time())
            log.info(
                "event=holder_changed ip=%s holder=%s held_here=%s",
                self.ip,
                droplet_id,
                droplet_id == self.identity.droplet_id,
            )
        self._export_holder()

    def _set_role(self, role: Role, *, unassign_pending: bool = False) -> None:
        if role is not self.record.role:
            self.metrics.last_transition_timestamp_seconds.labels(ip=self.ip).set(time.time())
            log.info("event=role_changed ip=%s role=%s", self.ip, role.value)
        self.record = RoleRecord(
            role, time.time(), self.record.resource, self.record.node, unassign_pending
        )
        self.metrics.role.labels(ip=self.ip).set(1 if role is Role.STARTED else 0)
        self.roles.schedule(self.ip, self.record)

    def _export_holder(self) -> None:
        held = self.truth.view(time.monotonic()).held_here
        self.metrics.holder_is_self.labels(ip=self.ip).set(-1 if held is None else int(held))

    def _monitor_data(self, view: HolderView | None = None) -> dict[str, Any]:
        view = view or self.truth.view(time.monotonic())
        return {
            "role": self.role.value,
            "held_here": view.held_here,
            "holder_source": view.source,
            "health": self.probe.state.value if self.probe else "not_configured",
        }
