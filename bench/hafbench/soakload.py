"""bench/soak's load: monitors, failovers, API and metadata faults, out-of-band moves, health
flapping and the daemons' samples, all at once, each loop finishing what it began when told to
stop. ``Load`` is the half of ``soak.Runner`` that runs while the clock does; what every
answer is judged against is in ``soakcheck``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import soakcheck
from common import fd_count, fds_to_ports, rss_kb
from soakcheck import IP, FaultWindow, NodeRecord, Sample, Soak

from hafloatd.control.client import request
from hafloatd.errors import ControlError
from hafloatd.lab.nodes import DaemonNode, StandInWeb
from hafloatd.lab.sim import SimApiError, Simulator
from hafloatd.lab.sim.faults import Fault

MONITOR_TIMEOUT_S = 5.0
STOP_TIMEOUT_MS = 20000
RETRY_BUDGET_S = 90.0  # a failover still not completed after this long has failed
SAMPLE_EVERY_S = 5.0
OUT_OF_BAND_SHARE = 0.1  # of the fault slots: a person moves the IP instead


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until the load is told to stop, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), max(0.0, seconds))


class Load:
    """The load on the daemons; ``soak.Runner`` sets them up and settles them."""

    args: argparse.Namespace
    sim: Simulator
    rng: random.Random
    began: float
    soak: Soak
    webs: list[StandInWeb]
    daemons: list[DaemonNode]
    records: list[NodeRecord]
    holder: int  # index of the node the resource is started on
    # (offset into the measured phase, "api-outage" | "out-of-band-move"): the events every
    # run has at least once per 200 s, so each one makes starts fail and monitors go stale
    scheduled: list[tuple[float, str]]
    pool_ports: set[int]  # the simulator's API and metadata ports
    # Held by a failover from its stop to its start's end, and by an out-of-band move for
    # its whole window: a move never lands in the middle of a failover.
    ip_owner: asyncio.Lock

    async def load(self, seconds: float, *, measured: bool) -> None:
        """Every load at once for ``seconds``; each loop finishes what it began, then stops."""
        stopping = asyncio.Event()
        if measured:
            count = max(1, int(seconds // 200))
            span = seconds / count
            self.scheduled = sorted(
                [((k + 0.3) * span, "api-outage") for k in range(count)]
                + [((k + 0.75) * span, "out-of-band-move") for k in range(count)]
            )
        loops = [
            self.failover_loop(stopping),
            self.fault_loop(stopping, seconds if measured else 0.0),
            self.sample_loop(stopping),
            *(self.monitor_loop(i, stopping) for i in range(len(self.daemons))),
            *(self.health_loop(web, stopping) for web in self.webs),
        ]
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(tasks, timeout=seconds, return_when="FIRST_EXCEPTION")
            for task in done:
                task.result()  # a loop that crashed is a bug of the soak: raise it
            stopping.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def monitor_loop(self, index: int, stopping: asyncio.Event) -> None:
        period = 1.0 / self.args.rate
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        due = loop.time()
        sent = 0
        while not stopping.is_set():
            sent += 1
            every = self.args.agent_every
            via_agent = every > 0 and sent % every == 0
            task = asyncio.create_task(self.one_monitor(index, via_agent))
            running.add(task)
            task.add_done_callback(running.discard)
            due = max(due + period, loop.time())
            await pause(stopping, due - loop.time())
        await asyncio.gather(*running)

    async def one_monitor(self, index: int, via_agent: bool) -> None:
        node, record = self.daemons[index], self.records[index]
        mon = record.monitors
        mon.sent += 1
        code: int | None = None
        stopped_when_sent = record.stopped_by_stop
        try:
            if via_agent:
                mon.via_agent += 1
                result = await node.agent(
                    "monitor", interval_ms=10000, timeout_ms=20000, wall_timeout=30
                )
                code = result.rc
            else:
                payload = {
                    "op": "monitor", "ip": IP, "deadline_ms": 4000, "probe": False,
                    "resource": "FloatIP", "node": node.name,
                }  # fmt: skip
                reply = await request(node.socket_path, payload, MONITOR_TIMEOUT_S)
                code = int(reply["ocf"])
        except (ControlError, TimeoutError, OSError) as exc:
            mon.unanswered.add(f"{type(exc).__name__}: {exc}")
            return
        received = time.monotonic()
        mon.answers[code] += 1
        how = " (agent)" if via_agent else ""
        if code not in (0, 1, 7):
            mon.unexpected.add(f"ocf {code}{how}")
        if stopped_when_sent and record.stopped_by_stop and code != 7:
            mon.wrong_role.add(
                f"monitor{how} on {node.name} answered {code} at +{received - self.began:.2f}s "
                "after its stop answered 0"
            )
        if code != 0:
            return
        # §7: with the metadata service working the bound is the metadata's; during and after
        # a metadata fault on this droplet, the API's (the full bound status reports).
        bound = record.metadata_bound_s
        faults = self.soak.faults
        if faults.metadata_fault_during(record.droplet_id, received - 2 * bound, received):
            bound = record.bound_s
            mon.judged_by_full_bound += 1
        else:
            mon.judged_by_metadata_bound += 1
        if not soakcheck.held_within(self.sim, record.droplet_id, received, bound):
            mon.lies.add(
                f"monitor{how} on {node.name} answered 0 at +{received - self.began:.2f}s, "
                f"bound {bound:g}s; holders {self.history_near(received)}"
            )
        elif self.sim.holder_at(IP, received) != record.droplet_id:
            mon.stale_within_bound += 1

    def history_near(self, mono: float, span: float = 30.0) -> str:
        return ", ".join(
            f"{t - self.began:+.2f}s->{h}"
            for t, h in self.sim.holder_history(IP)
            if mono - span <= t <= mono + 1
        )

    async def failover_loop(self, stopping: asyncio.Event) -> None:
        while True:
            await pause(stopping, self.args.failover_every)
            if stopping.is_set():
                return
            async with self.ip_owner:
                await self.failover(self.holder, 1 - self.holder)
            self.holder = 1 - self.holder

    async def failover(self, src: int, dst: int) -> None:
        """Stop on ``src``, start on ``dst``; a start that fails is stopped and started again
        (Pacemaker's recovery) until it succeeds or the retry budget is spent."""
        fo = self.soak.failovers
        fo.attempted += 1
        await self.stop(src)
        target, record = self.daemons[dst], self.records[dst]
        began = time.monotonic()
        excused = 0
        while True:
            record.stopped_by_stop = False
            sent = time.monotonic()
            result = await target.agent(
                "start",
                timeout_ms=int(self.args.start_timeout * 1000),
                wall_timeout=self.args.start_timeout + 15,
            )
            received = time.monotonic()
            fo.starts += 1
            posted, assigns = soakcheck.assign_posts(self.sim, record.droplet_id, sent, received)
            fo.assigns_sent += posted
            fo.assigns += assigns
            fo.max_assigns_per_start = max(fo.max_assigns_per_start, assigns)
            if assigns > 1:
                fo.extra_assigns.add(f"start on {target.name}: {assigns} accepted assign POSTs")
            if result.rc == 0:
                if not soakcheck.held_unlocked_during(self.sim, record.droplet_id, sent, received):
                    fo.start_lies.add(
                        f"start on {target.name} answered 0 at +{received - self.began:.2f}s; "
                        f"holders {self.history_near(received)}"
                    )
                fo.completed += 1
                fo.start_seconds.append(received - sent)
                if excused:
                    fo.after_retry += 1
                else:
                    fo.first_try += 1
                return
            fault = self.soak.faults.api_fault_during(sent, received)
            reason = f"start on {target.name}: rc {result.rc} {result.exit_reason.strip()}"
            if fault is not None:
                excused += 1
                fo.start_failures_excused += 1
                fo.excused_reasons[fault] += 1
            else:
                fo.start_failures_unexcused.add(reason)
            if time.monotonic() - began > RETRY_BUDGET_S:
                fo.failed.add(f"{reason} (gave up after {time.monotonic() - began:.0f}s)")
                await self.stop(dst)
                return
            await self.stop(dst)

    async def stop(self, index: int) -> None:
        """The agent's stop, as Pacemaker runs it; it must answer 0."""
        node, record = self.daemons[index], self.records[index]
        stop = await node.agent("stop", timeout_ms=STOP_TIMEOUT_MS)
        if stop.rc == 0:
            record.stopped_by_stop = True
        else:
            self.soak.failovers.stop_failures.add(
                f"stop on {node.name}: rc {stop.rc} {stop.exit_reason}"
            )

    def fault_menu(self, droplet: int | None) -> list[tuple[str, bool, Callable[[], Fault]]]:
        faults, rng = self.sim.faults, self.rng
        return [
            ("5xx", True, lambda: faults.server_errors(None, status=rng.choice([500, 502, 503]))),
            ("429", True, lambda: faults.rate_limit_storm(None, retry_after_s=1)),
            ("latency", True, lambda: faults.latency(round(rng.uniform(0.2, 1.5), 2))),
            # Past the daemon's request_timeout (2 s): the POST lands after its client gave up.
            ("post-timeout", True, lambda: faults.latency(2.5, endpoint="post_action")),
            ("metadata-down", False, lambda: faults.metadata_down(droplet)),
            ("metadata-500", False, lambda: faults.metadata_error(droplet_id=droplet)),
        ]

    async def move_out_of_band(self, stopping: asyncio.Event) -> None:
        """A person moves the IP away from the started node in the control panel; no failover
        for a few seconds, so its monitor has to stop answering 0 within the bound."""
        async with self.ip_owner:
            there = self.sim.holder(IP)
            target = 1002 if there == 1001 else 1001
            try:
                self.sim.move_out_of_band(IP, target)
            except SimApiError:
                return  # an action is pending: DigitalOcean would refuse the person too
            window = FaultWindow("out-of-band-move", False, time.monotonic())
            self.soak.faults.windows.append(window)
            await pause(stopping, self.rng.uniform(5.0, 8.0))
            window.off = time.monotonic()

    async def fault_loop(self, stopping: asyncio.Event, measured_s: float) -> None:
        """One fault at a time: off 2-5 s, on 1-4 s; the scheduled ones at their times."""
        began = time.monotonic()
        scheduled = list(self.scheduled) if measured_s else []
        windows = self.soak.faults.windows
        try:
            while not stopping.is_set():
                await pause(stopping, self.rng.uniform(2.0, 5.0))
                if stopping.is_set():
                    return
                droplet = self.rng.choice([1001, 1002, None])
                due = scheduled and time.monotonic() - began >= scheduled[0][0]
                event = scheduled.pop(0)[1] if due else ""
                if event == "api-outage":  # longer than a start's timeout
                    kind, api, seconds = event, True, self.args.start_timeout + 3
                    fault = self.sim.faults.server_errors(None, status=503)
                elif event or self.rng.random() < OUT_OF_BAND_SHARE:
                    await self.move_out_of_band(stopping)
                    continue
                else:
                    kind, api, install = self.rng.choice(self.fault_menu(droplet))
                    seconds = self.rng.uniform(1.0, 4.0)
                    fault = install()
                metadata = kind.startswith("metadata")
                window = FaultWindow(
                    kind, api, time.monotonic(), metadata=metadata, droplet_id=droplet
                )
                windows.append(window)
                await pause(stopping, seconds)
                self.sim.faults.remove(fault)
                window.off = time.monotonic()
        finally:
            self.sim.faults.clear()
            for window in windows:
                window.off = min(window.off, time.monotonic())

    async def health_loop(self, web: StandInWeb, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                await pause(stopping, self.rng.uniform(2.0, 6.0))
                if stopping.is_set():
                    return
                web.status = 503
                self.soak.faults.health_flaps += 1
                await pause(stopping, self.rng.uniform(1.0, 3.0))
                web.status = 200
        finally:
            web.status = 200

    # --- samples -------------------------------------------------------------------------

    async def sample(self, index: int) -> Sample:
        node = self.daemons[index]
        assert node.pid is not None
        # /proc first: the status connection below is still open in the daemon for a moment
        # after its reply (it closes on our EOF); counted after, it would be one fd too many.
        at = round(time.monotonic() - self.began, 1)
        rss, fds, pooled = (
            rss_kb(node.pid),
            fd_count(node.pid),
            fds_to_ports(node.pid, self.pool_ports),
        )
        status = await request(node.socket_path, {"op": "status"}, MONITOR_TIMEOUT_S)
        return Sample(at, rss, fds, int(status["tasks"]), pooled)

    async def sample_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for index, record in enumerate(self.records):
                record.series.append(await self.sample(index))
            await pause(stopping, SAMPLE_EVERY_S)
