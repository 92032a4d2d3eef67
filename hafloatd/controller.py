"""One controller per reserved IP: role, start/stop/monitor, holder truth, failover timeline.

The role (``started``/``stopped``) is what Pacemaker last asked for; it is persisted under the
state dir so a daemon restart does not change what monitor answers. Who holds the IP is known
from two sources (DESIGN §4): the droplet metadata service (cheap, polled often) and the API
(authoritative, on start, after actions and at a slow cadence). A disagreement between them
triggers an authoritative re-check; an empty, failed or stale answer is *unknown*, never *held*.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hafloatd.config import ApiConfig, IpConfig, MetadataConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.errors import (
    OCF_ERR_GENERIC,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    ApiError,
    DeadlineExceeded,
    HafloatdError,
)
from hafloatd.metadata import DropletIdentity, MetadataClient
from hafloatd.metrics import FAILOVER_PHASES, Metrics
from hafloatd.probe import HealthProbe, HealthState

log = logging.getLogger("hafloatd.controller")

# While an action runs, the local metadata service is asked this often whether the IP is here;
# it is on the droplet's own link, has no rate limit, and answers in well under a millisecond.
CONFIRM_POLL_S = 0.05
# A metadata answer contradicting the API triggers a re-check at most this often.
RECHECK_MIN_INTERVAL_S = 5.0
TIMELINE_KEEP = 10


class Role(enum.Enum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True)
class OpResult:
    """What an operation answers: an OCF code, a reason for humans, extra reply fields."""

    ocf: int
    reason: str = ""
    data: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.ocf == OCF_SUCCESS


@dataclass
class FailoverTimeline:
    """Wall-clock stamps (Unix seconds) of one start's phases; None where not reached."""

    received: float
    post_sent: float | None = None
    api_accepted: float | None = None
    action_completed: float | None = None
    holder_confirmed: float | None = None
    confirmed_by: str | None = None
    outcome: str = "in_progress"
    action_id: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        phases: dict[str, object] = {"received": self.received}
        for phase in FAILOVER_PHASES:
            phases[phase] = getattr(self, phase)
        phases.update(
            confirmed_by=self.confirmed_by,
            outcome=self.outcome,
            action_id=self.action_id,
            error=self.error,
        )
        return phases


@dataclass(frozen=True)
class HolderView:
    """One source's belief about the holder at a monotonic instant."""

    held_here: bool | None
    droplet_id: int | None
    at: float
    source: str


class RoleStore:
    """Roles persisted as one small JSON file per IP under the state dir (tmpfs in production)."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = Path(state_dir)

    def path(self, ip: str) -> Path:
        return self.state_dir / f"role-{ip}.json"

    def load(self, ip: str) -> Role:
        """Read at boot (before serving); a missing or unreadable file means stopped."""
        try:
            data = json.loads(self.path(ip).read_text(encoding="utf-8"))
            return Role(data["role"])
        except FileNotFoundError:
            return Role.STOPPED
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("event=role_file_unreadable ip=%s path=%s error=%r", ip, self.path(ip), exc)
            return Role.STOPPED

    async def save(self, ip: str, role: Role) -> None:
        await asyncio.to_thread(self._write, ip, role)

    def _write(self, ip: str, role: Role) -> None:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        target = self.path(ip)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        payload = json.dumps({"ip": ip, "role": role.value, "changed_at": time.time()})
        tmp.write_text(payload + "\n", encoding="utf-8")
        os.replace(tmp, target)


PacemakerFailureHook = Callable[[str, str, str], None]


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
        self.metadata = metadata
        self.metadata_config = metadata_config
        self.identity = identity
        self.roles = roles
        self.metrics = metrics
        self.probe = probe
        self.on_health_failure = on_health_failure
        self.role = roles.load(self.ip)
        self.api_view: HolderView | None = None
        self.metadata_view: HolderView | None = None
        self.timelines: deque[FailoverTimeline] = deque(maxlen=TIMELINE_KEEP)
        self.pacemaker_resource: str | None = None
        self.pacemaker_node: str | None = None
        self.last_error: str | None = None
        self._inflight: tuple[str, asyncio.Task[OpResult]] | None = None
        self._op_lock = asyncio.Lock()
        self._recheck_task: asyncio.Task[None] | None = None
        self._last_recheck = -RECHECK_MIN_INTERVAL_S
        self.metrics.role.labels(ip=self.ip).set(1 if self.role is Role.STARTED else 0)
        self.metrics.holder_is_self.labels(ip=self.ip).set(-1)

    # ----------------------------------------------------------------- operations

    async def start(
        self, deadline: Deadline, *, resource: str | None = None, node: str | None = None
    ) -> OpResult:
        """Idempotent start: success only once the IP is confirmed to point here."""
        if resource:
            self.pacemaker_resource = resource
        if node:
            self.pacemaker_node = node
        return await self._run_exclusive("start", deadline, lambda: self._start(deadline))

    async def stop(self, deadline: Deadline) -> OpResult:
        """Stop per ``on_stop``; never fails because the API is slow or down."""
        return await self._run_exclusive("stop", deadline, lambda: self._stop(deadline))

    def monitor(self, *, probe: bool = False) -> OpResult:
        """Answered from state, without any API call (DESIGN §3)."""
        if self.role is Role.STOPPED:
            return OpResult(OCF_NOT_RUNNING, "", self._monitor_data())
        view = self.holder_view()
        if view.held_here is None:
            return OpResult(
                OCF_ERR_GENERIC,
                "cannot confirm who holds the reserved IP: metadata and API answers are "
                f"missing or stale (last error: {self.last_error or 'none'})",
                self._monitor_data(),
            )
        if not view.held_here:
            where = f"droplet {view.droplet_id}" if view.droplet_id else "no droplet"
            return OpResult(
                OCF_ERR_GENERIC,
                f"reserved IP {self.ip} points to {where}, not this droplet "
                f"({self.identity.droplet_id}) (source: {view.source})",
                self._monitor_data(),
            )
        if self.probe is not None and self.probe.state is HealthState.DOWN:
            return OpResult(
                OCF_ERR_GENERIC,
                f"health check failing: {self.probe.last_error or 'unhealthy'}",
                self._monitor_data(),
            )
        return OpResult(OCF_SUCCESS, "", self._monitor_data())

    # ----------------------------------------------------------------- holder truth

    def holder_view(self) -> HolderView:
        """The best current belief: a fresh API answer, else a fresh metadata answer."""
        now = time.monotonic()
        api_fresh_s = max(3 * self.api_config.holder_check_interval, 30.0)
        meta_fresh_s = max(5 * self.metadata_config.poll_interval, 5.0)
        api = self.api_view if self.api_view and now - self.api_view.at <= api_fresh_s else None
        meta = (
            self.metadata_view
            if self.metadata_view and now - self.metadata_view.at <= meta_fresh_s
            else None
        )
        if api is not None and (meta is None or meta.at <= api.at or meta.held_here is None):
            return api
        if api is not None and meta is not None and meta.held_here == api.held_here:
            return meta
        if api is not None:
            # Metadata newer and disagreeing: the API decides; until it has, keep its answer.
            self.request_recheck()
            return api
        if meta is not None and meta.held_here is not None:
            return meta
        return HolderView(None, None, now, "unknown")

    def observe_metadata(self, holds: bool | None, *, asked_at: float | None = None) -> None:
        """Feed one metadata poll result (True: the metadata says this IP is here)."""
        asked_at = time.monotonic() if asked_at is None else asked_at
        if holds is None:
            return  # unknown never overrides; staleness takes care of long outages
        if self.metadata_view is not None and asked_at < self.metadata_view.at:
            return
        droplet_id = self.identity.droplet_id if holds else None
        self.metadata_view = HolderView(holds, droplet_id, asked_at, "metadata")
        if (
            self.api_view is not None
            and self.api_view.held_here != holds
            and asked_at > self.api_view.at
        ):
            self.request_recheck()
        self._export_holder()

    def observe_api(
        self, droplet_id: int | None, *, source: str = "api", asked_at: float | None = None
    ) -> None:
        """Feed an authoritative answer. ``asked_at`` is when the question was sent: an answer
        to a question older than what we already know (a slow GET racing an action's
        confirmation) is dropped rather than allowed to roll the truth back."""
        asked_at = time.monotonic() if asked_at is None else asked_at
        if self.api_view is not None and asked_at < self.api_view.at:
            return
        held = droplet_id == self.identity.droplet_id
        previous = self.api_view.held_here if self.api_view else None
        self.api_view = HolderView(held, droplet_id, asked_at, source)
        if previous is not None and previous != held:
            self.metrics.last_transition_timestamp_seconds.labels(ip=self.ip).set(time.time())
            log.info("event=holder_changed ip=%s holder=%s held_here=%s", self.ip, droplet_id, held)
        self._export_holder()

    async def refresh_from_api(self, deadline: Deadline) -> None:
        """Authoritative holder check (slow cadence, after actions, on disagreement)."""
        asked_at = time.monotonic()
        try:
            reserved = await self.api.get_reserved_ip(self.ip, deadline)
        except HafloatdError as exc:
            self.last_error = str(exc)
            log.warning("event=holder_check_failed ip=%s error=%s", self.ip, _one_line(exc))
            return
        if reserved.locked:
            # An action is moving the IP: its holder is in flux. Keep what we know; the end of
            # the action (or the next check) settles it.
            log.debug("event=holder_check_locked ip=%s holder=%s", self.ip, reserved.droplet_id)
            return
        self.observe_api(reserved.droplet_id, asked_at=asked_at)

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
        if new is not HealthState.DOWN or self.role is not Role.STARTED:
            return
        if self.on_health_failure and self.pacemaker_resource and self.pacemaker_node:
            reason = self.probe.last_error if self.probe and self.probe.last_error else "unhealthy"
            self.on_health_failure(self.pacemaker_resource, self.pacemaker_node, reason)

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, object]:
        view = self.holder_view()
        last = self.timelines[-1].as_dict() if self.timelines else None
        return {
            "ip": self.ip,
            "role": self.role.value,
            "on_stop": self.ip_config.on_stop,
            "droplet_id": self.identity.droplet_id,
            "held_here": view.held_here,
            "holder_droplet_id": view.droplet_id,
            "holder_source": view.source,
            "health": self.probe.state.value if self.probe else "not_configured",
            "last_failover": last,
            "last_error": self.last_error,
            "pacemaker_resource": self.pacemaker_resource,
            "in_flight": self._inflight[0] if self._inflight else None,
        }

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = []
        if self._recheck_task is not None:
            tasks.append(self._recheck_task)
        if self._inflight is not None:
            tasks.append(self._inflight[1])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ----------------------------------------------------------------- internals

    async def _run_exclusive(
        self, op: str, deadline: Deadline, body: Callable[[], Coroutine[object, object, OpResult]]
    ) -> OpResult:
        """Join an identical operation in flight; otherwise serialise after the current one.

        A stop arriving while a start runs (Pacemaker timed the start out) cancels the start.
        """
        inflight = self._inflight
        if inflight is not None and inflight[0] == op:
            return await self._await_task(inflight[1], deadline, op)
        if inflight is not None and op == "stop" and inflight[0] == "start":
            inflight[1].cancel()
        async with self._op_lock:
            inflight = self._inflight
            if inflight is not None and inflight[0] == op:
                return await self._await_task(inflight[1], deadline, op)
            task = asyncio.get_running_loop().create_task(body(), name=f"{op}-{self.ip}")
            self._inflight = (op, task)
            try:
                return await self._await_task(task, deadline, op)
            finally:
                if not task.done():
                    # The caller's deadline passed: let the operation finish or fail on its own
                    # deadline, still owned here, so a joined retry can pick it up.
                    task.add_done_callback(lambda _t: self._clear_inflight(task))
                else:
                    self._clear_inflight(task)

    def _clear_inflight(self, task: asyncio.Task[OpResult]) -> None:
        if self._inflight is not None and self._inflight[1] is task:
            self._inflight = None

    async def _await_task(
        self, task: asyncio.Task[OpResult], deadline: Deadline, op: str
    ) -> OpResult:
        try:
            return await deadline.run(asyncio.shield(task), f"{op} of {self.ip}")
        except DeadlineExceeded as exc:
            return OpResult(OCF_ERR_GENERIC, str(exc))
        except asyncio.CancelledError:
            if task.cancelled() and not _current_task_cancelling():
                return OpResult(OCF_ERR_GENERIC, f"{op} of {self.ip} was cancelled by a stop")
            raise

    async def _start(self, deadline: Deadline) -> OpResult:
        timeline = FailoverTimeline(received=time.time())
        received_mono = time.monotonic()
        self.timelines.append(timeline)
        try:
            result = await self._start_steps(deadline, timeline, received_mono)
        except asyncio.CancelledError:
            timeline.outcome = "cancelled"
            raise
        except HafloatdError as exc:
            timeline.outcome = "failed"
            timeline.error = _one_line(exc)
            self.last_error = timeline.error
            self.metrics.failovers_total.labels(ip=self.ip, outcome="failed").inc()
            log.error("event=start_failed ip=%s error=%s", self.ip, timeline.error)
            return OpResult(exc.ocf_code, timeline.error, {"timeline": timeline.as_dict()})
        return result

    async def _start_steps(
        self, deadline: Deadline, timeline: FailoverTimeline, received_mono: float
    ) -> OpResult:
        my_id = self.identity.droplet_id
        # A repeated start of a started resource whose IP is known to be here: success at once.
        already = self.role is Role.STARTED and self._confirmed_here_now()
        if not already and self._needs_lookup_before_assign():
            # Otherwise only the API may say "already here" (a cached view can be a few polls
            # behind a move away); a fresh "held elsewhere" goes straight to the POST, and a
            # stale one is harmless: the POST's 422 "already assigned" is checked by a GET.
            reserved = await self.api.get_reserved_ip(self.ip, deadline)
            self.observe_api(reserved.droplet_id)
            already = self._confirmed_here_now()
        if already:
            timeline.outcome = "already_held"
            await self._set_role(Role.STARTED)
            self.metrics.failovers_total.labels(ip=self.ip, outcome="already_held").inc()
            log.info("event=start ip=%s outcome=already_held api_calls=0", self.ip)
            return OpResult(OCF_SUCCESS, "", {"timeline": timeline.as_dict()})

        phase_mono: dict[str, float] = {}

        def on_event(phase: str) -> None:
            phase_mono[phase] = time.monotonic()
            setattr(timeline, phase, time.time())

        result = await self.api.assign(self.ip, my_id, deadline, on_event=on_event)
        if result.already_held or result.action is None:
            self.observe_api(my_id, source="api")
            timeline.outcome = "already_held"
            await self._set_role(Role.STARTED)
            self.metrics.failovers_total.labels(ip=self.ip, outcome="already_held").inc()
            log.info("event=start ip=%s outcome=already_held", self.ip)
            return OpResult(OCF_SUCCESS, "", {"timeline": timeline.as_dict()})

        timeline.action_id = result.action.id
        confirmed_by = await self._confirm_holder(result.action.id, deadline, timeline, phase_mono)
        timeline.holder_confirmed = time.time()
        phase_mono["holder_confirmed"] = time.monotonic()
        timeline.confirmed_by = confirmed_by
        timeline.outcome = "moved"
        self.observe_api(my_id, source=confirmed_by)
        self.last_error = None
        await self._set_role(Role.STARTED)
        self._observe_phases(received_mono, phase_mono)
        self.metrics.failovers_total.labels(ip=self.ip, outcome="moved").inc()
        log.info(
            "event=start ip=%s outcome=moved action_id=%s confirmed_by=%s total_ms=%.1f",
            self.ip,
            result.action.id,
            confirmed_by,
            (phase_mono["holder_confirmed"] - received_mono) * 1000,
        )
        return OpResult(OCF_SUCCESS, "", {"timeline": timeline.as_dict()})

    def _needs_lookup_before_assign(self) -> bool:
        """POST without a GET only on a fresh API answer "elsewhere" that metadata does not
        contradict: the usual failover, where the survivor's view was kept fresh."""
        api = self.api_view
        if api is None or time.monotonic() - api.at > 1.5 * self.api_config.holder_check_interval:
            return True
        meta = self.metadata_view
        return api.held_here is not False or (meta is not None and meta.held_here is True)

    def _confirmed_here_now(self) -> bool:
        """Already held here per a fresh API answer that fresh metadata does not contradict."""
        if self.api_view is None or not self.api_view.held_here:
            return False
        if time.monotonic() - self.api_view.at > 1.5 * self.api_config.holder_check_interval:
            return False
        meta = self.metadata_view
        return meta is None or meta.held_here is not False or meta.at <= self.api_view.at

    async def _confirm_holder(
        self,
        action_id: int,
        deadline: Deadline,
        timeline: FailoverTimeline,
        phase_mono: dict[str, float],
    ) -> str:
        """Race the action's completion against the local metadata; the first to confirm wins."""

        async def by_action() -> str:
            await self.api.wait_action(
                action_id, deadline, ip=self.ip, expected_droplet_id=self.identity.droplet_id
            )
            return "action"

        async def by_metadata() -> str:
            while True:
                if await self.metadata.holds(self.ip, Deadline.after(deadline.cap(1.0))):
                    return "metadata"
                await asyncio.sleep(deadline.cap(CONFIRM_POLL_S))

        action_task = asyncio.create_task(by_action(), name=f"wait-action-{self.ip}")
        metadata_task = asyncio.create_task(by_metadata(), name=f"wait-metadata-{self.ip}")
        pending: set[asyncio.Task[str]] = {action_task, metadata_task}
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=deadline.remaining(), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise DeadlineExceeded(
                        f"deadline exceeded waiting for action {action_id} on {self.ip}"
                    )
                for task in done:
                    if task.exception() is None:
                        winner = task.result()
                        timeline.action_completed = time.time()
                        phase_mono["action_completed"] = time.monotonic()
                        return winner
                    if task is action_task:
                        # The action failing is final; metadata alone must not overrule it.
                        raise task.exception()  # type: ignore[misc]
            raise DeadlineExceeded(f"could not confirm action {action_id} on {self.ip}")
        finally:
            for task in (action_task, metadata_task):
                task.cancel()
            await asyncio.gather(action_task, metadata_task, return_exceptions=True)

    def _observe_phases(self, received_mono: float, phase_mono: dict[str, float]) -> None:
        previous = received_mono
        for phase in FAILOVER_PHASES:
            at = phase_mono.get(phase)
            if at is None:
                continue
            self.metrics.failover_phase_seconds.labels(ip=self.ip, phase=phase).observe(
                max(0.0, at - previous)
            )
            previous = at
        confirmed = phase_mono.get("holder_confirmed")
        if confirmed is not None:
            total_s = confirmed - received_mono
            self.metrics.failover_total_seconds.labels(ip=self.ip).observe(total_s)

    async def _stop(self, deadline: Deadline) -> OpResult:
        await self._set_role(Role.STOPPED)
        if self.ip_config.on_stop != "unassign":
            log.info("event=stop ip=%s on_stop=release api_calls=0", self.ip)
            return OpResult(OCF_SUCCESS)
        try:
            reserved = await self.api.get_reserved_ip(self.ip, deadline)
            self.observe_api(reserved.droplet_id)
            if reserved.droplet_id != self.identity.droplet_id:
                log.info(
                    "event=stop ip=%s on_stop=unassign skipped=not_held holder=%s",
                    self.ip,
                    reserved.droplet_id,
                )
                return OpResult(OCF_SUCCESS)
            action = await self.api.unassign(self.ip, deadline)
            if action is not None:
                await self.api.wait_action(action.id, deadline, ip=self.ip)
            self.observe_api(None)
            log.info("event=stop ip=%s on_stop=unassign result=unassigned", self.ip)
            return OpResult(OCF_SUCCESS)
        except (ApiError, DeadlineExceeded) as exc:
            # A failed stop blocks the resource until cleanup; the next node's assign moves the
            # IP anyway, so report the problem without failing the stop.
            self.last_error = _one_line(exc)
            log.warning(
                "event=stop ip=%s on_stop=unassign result=failed error=%s", self.ip, self.last_error
            )
            return OpResult(OCF_SUCCESS, f"unassign failed (stop still succeeds): {exc}")

    async def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self.metrics.last_transition_timestamp_seconds.labels(ip=self.ip).set(time.time())
            log.info("event=role_changed ip=%s role=%s", self.ip, role.value)
        self.role = role
        self.metrics.role.labels(ip=self.ip).set(1 if role is Role.STARTED else 0)
        await self.roles.save(self.ip, role)

    def _export_holder(self) -> None:
        held = self.holder_view().held_here
        self.metrics.holder_is_self.labels(ip=self.ip).set(-1 if held is None else int(held))

    def _monitor_data(self) -> dict[str, object]:
        view = self.holder_view()
        return {
            "role": self.role.value,
            "held_here": view.held_here,
            "holder_source": view.source,
            "health": self.probe.state.value if self.probe else "not_configured",
        }


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
