"""A model-based test of the truth (issue 6): never lie to Pacemaker, whatever happens around.

Two in-process daemons (droplets 1001 and 1002) and the real simulator share one event loop,
run in a background thread; a hypothesis ``RuleBasedStateMachine`` drives the daemons only
through their control sockets (start, stop, monitor: the stable interface) and, between those,
injects what the simulator can do to them: metadata lag and outages, API 5xx/429 bursts, the
next action delayed, errored or stuck, out-of-band moves, daemon restarts, time passing (with
Pacemaker's recurring monitor on both nodes).

Each answer is checked the moment it is received, against the simulator's record of who held
the IP (``holder_history``) and which actions were pending:

- a start that answers 0: the IP pointed at that droplet, with no action pending on it, at
  some moment after the request was sent (confirmed after the start's POST, never by an older
  view). Not "at the instant of receipt": in a race (two nodes started, as after a partition
  without fencing) the other node's POST can land between the confirmation and the reply;
  only fencing rules that out, and the loser's monitor then reports it;
- a monitor (or probe) that answers 0: the IP points at that droplet, or pointed at it less
  than the holder freshness bound ago (``freshness_bound_s``);
- one start makes at most one assign for its droplet (accepted POSTs during the request);
- a stop with ``on_stop: release`` answers 0;
- every answer arrives within the request's deadline plus ``REPLY_SLACK_S``.

A reply travels from the daemon to the test through the same loop, so the check also accepts
the state ``TRANSIT_S`` before receipt: a change inside that window may have happened after the
daemon answered. Examples: ``HAFLOATD_MODEL_EXAMPLES`` (default 60; CI runs 500). Seed:
``HAFLOATD_MODEL_SEED`` (printed at the start of every run; on failure hypothesis prints the
falsifying steps and a ``@reproduce_failure`` blob). The rule sequence repeats with the seed;
its interleaving with the simulator's timers is real time and may differ.

What it finds, checked by reverting each fix (150 examples each): a metadata "here" taken as
confirmation without the edge or the lag rule (defect 1: found, and it found the lag-echo case
the edge alone let through); a start that ignores ``locked`` (defect 2: found); a start that
answers "already here" from its cached view (defect 15: found). Run against cdc95e1 itself it
also finds defect 14 (an API answer outvoting newer metadata for up to 30 s); reverting only
the rule here keeps the answer inside ``max(API window, metadata window)``, the bound checked,
so ``test_truth_regressions.py`` and ``test_holder.py`` pin that rule; defect 3 (an operation
owned by its caller) makes the daemon fail a monitor afterwards, not lie, so
``test_truth_regressions.py`` and ``test_operations.py`` pin it; defects 4 to 13 are about the
lifecycle, configuration and the agent, outside this model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import pytest
import yaml
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from prometheus_client import CollectorRegistry

from hafloatd.config import Config, parse_config
from hafloatd.control.client import ControlConnection
from hafloatd.controller import freshness
from hafloatd.daemon import Daemon
from hafloatd.errors import ControlError, HafloatdError
from hafloatd.lab.nodes import node_config
from hafloatd.lab.sim import Exchange, Fault, SimApiError, Simulator
from hafloatd.metrics import Metrics
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, default_scenario

T = TypeVar("T")

IP = IP_NYC
NODES = (1001, 1002)
OnStop = Literal["release", "unassign"]
# tiny: the daemon cancels the operation's caller at the deadline (what a Pacemaker timeout
# looks like to it); short: enough when nothing goes wrong; normal: enough for one retry.
DeadlineKind = Literal["tiny", "short", "normal"]
DEADLINE_MS: dict[DeadlineKind, int] = {"tiny": 150, "short": 600, "normal": 1500}
ACTION_DELAY_S = 1.0  # how much later a delayed action completes
MONITOR_DEADLINE_MS = 2000
MONITOR_INTERVAL_S = 0.5  # the recurring monitor while time passes
# How much later than its deadline an answer may arrive (the agent waits about this long).
REPLY_SLACK_S = 2.0
# The reply is read in the daemon's own loop a few iterations after it was written.
TRANSIT_S = 0.05
# Whole-operation bounds for the test's own waits on the loop thread (never reached normally).
STEP_TIMEOUT_S = 60.0
EXAMPLES = int(os.environ.get("HAFLOATD_MODEL_EXAMPLES", "60"))
STEPS = int(os.environ.get("HAFLOATD_MODEL_STEPS", "10"))

# Short intervals so that time passes quickly: a holder check every 0.5 s, a metadata poll
# every 0.1 s, actions done 0.05 s after the POST.
API_SETTINGS: dict[str, Any] = {
    "request_timeout": "500ms",
    "connect_timeout": "250ms",
    "action_poll_interval": "50ms",
    "holder_check_interval": "500ms",
    "keepalive_interval": "30s",
}
METADATA_SETTINGS: dict[str, Any] = {"timeout": "500ms", "poll_interval": "100ms"}
STARTUP_ATTEMPTS = 3


def freshness_bound_s(config: Config) -> float:
    """How long after the IP moved away a monitor may still answer 0: the daemon's own bound
    (docs/operations.md §7, ``freshness_bound_s`` in ``hafloatd status``)."""
    return freshness(config.api, config.metadata).bound_s


# ----------------------------------------------------------------------------- the world


@dataclass
class Node:
    """One droplet's daemon: its directory, its config for this example, the running daemon."""

    droplet_id: int
    workdir: Path
    config: Config | None = None
    daemon: Daemon | None = None
    # (monotonic time, what): start_sent, start_ok, stop_sent, stop_answered; for the ghost check
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def user_agent(self) -> str:
        """Sent with every API request of this node's daemon: how the simulator's record of an
        exchange says which daemon sent it."""
        return f"truth-model-{self.droplet_id}/1"

    def last_event(self, before: float, kinds: tuple[str, ...]) -> str | None:
        found = [kind for at, kind in self.events if at < before and kind in kinds]
        return found[-1] if found else None

    @property
    def socket_path(self) -> str:
        assert self.config is not None
        return self.config.control.socket_path

    @property
    def on_stop(self) -> OnStop:
        assert self.config is not None
        return self.config.ips[0].on_stop


@dataclass
class Answer:
    """One control reply (None: none arrived in time) and what it broke."""

    node: int
    op: str
    reply: dict[str, Any] | None
    error: str | None
    waited_s: float
    violations: list[str] = field(default_factory=list)

    @property
    def ocf(self) -> int | None:
        return None if self.reply is None else int(self.reply["ocf"])


class World:
    """The event loop thread, the simulator and the two nodes; shared by every example."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="truth-model-loop", daemon=True
        )
        self.thread.start()
        self._sim: Simulator | None = None
        self.nodes = {d: Node(d, base / f"node-{d}") for d in NODES}
        self.example_began = time.monotonic()
        self.examples = 0
        self.example_seconds = 0.0
        self.exchanges_checked = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT_S) -> T:
        """Run ``coro`` in the loop thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` in the loop thread: the simulator's state is only touched there."""

        async def inside() -> T:
            return fn()

        return self.run(inside())

    def close(self) -> None:
        try:
            self.run(self.end())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    # --- examples -------------------------------------------------------------------------

    @property
    def sim(self) -> Simulator:
        assert self._sim is not None, "no example is running"
        return self._sim

    async def begin(self, on_stop: OnStop, holder: int | None) -> None:
        """A fresh example: a new simulator with ``holder`` holding the IP, fresh daemons.

        A new simulator (a few ms) rather than a reset one: its holder history, which the
        metadata service reads ``lag`` behind, then holds nothing of an earlier example.
        """
        await self.end()
        scenario = default_scenario(rate_limit_per_minute=10**9, rate_limit_per_hour=10**9)
        reserved = [
            dataclasses.replace(r, droplet_id=holder) if r.ip == IP else r
            for r in scenario.reserved_ips
        ]
        self._sim = Simulator(dataclasses.replace(scenario, reserved_ips=tuple(reserved)))
        await self._sim.start()
        self.exchanges_checked = 0
        self.example_began = time.monotonic()
        for node in self.nodes.values():
            node.events.clear()
            await asyncio.to_thread(self._prepare, node, on_stop)
        for node in self.nodes.values():
            await self.start_daemon(node)

    async def end(self) -> None:
        """Stop the daemons, then the simulator (idempotent)."""
        await self.stop_daemons()
        sim, self._sim = self._sim, None
        if sim is not None:
            await sim.stop()
            self.examples += 1
            self.example_seconds += time.monotonic() - self.example_began

    def _prepare(self, node: Node, on_stop: OnStop) -> None:
        shutil.rmtree(node.workdir, ignore_errors=True)
        node.workdir.mkdir(parents=True)
        raw = node_config(
            self.sim,
            node.droplet_id,
            node.workdir,
            ips=[{"address": IP, "on_stop": on_stop}],
            extra={
                "api": {**API_SETTINGS, "user_agent": node.user_agent},
                "metadata": METADATA_SETTINGS,
                "metrics": {"listen": None},
            },
        )
        (node.workdir / "hafloatd.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        node.config = parse_config(raw, source=f"truth model node {node.droplet_id}")

    async def start_daemon(self, node: Node) -> None:
        """Start it as systemd would: a startup that fails (on a loaded CI machine the metadata
        service can answer past its timeout before the identity is cached) is tried again."""
        assert node.config is not None
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            daemon = Daemon(
                node.config,
                str(node.workdir / "hafloatd.yaml"),
                environ={"HAFLOATD_DO_TOKEN": DEFAULT_TOKEN},
                metrics=Metrics(CollectorRegistry()),
            )
            try:
                await daemon.startup()
            except HafloatdError:
                await daemon.shutdown()  # closes what the failed startup had opened
                if attempt == STARTUP_ATTEMPTS:
                    raise
                continue
            node.daemon = daemon
            return

    async def stop_daemon(self, node: Node) -> None:
        daemon, node.daemon = node.daemon, None
        if daemon is not None:
            await daemon.shutdown()

    async def stop_daemons(self) -> None:
        for node in self.nodes.values():
            await self.stop_daemon(node)

    # --- asking a daemon ----------------------------------------------------------------------

    async def ask(
        self,
        node: Node,
        op: str,
        deadline_ms: int,
        *,
        client_timeout_s: float | None = None,
        probe: bool = False,
    ) -> Answer:
        """Send one request and check the reply the moment it arrives (before any await)."""
        payload: dict[str, object] = {"op": op, "ip": IP, "deadline_ms": deadline_ms}
        if probe:
            payload["probe"] = True
        patient = client_timeout_s is None
        timeout_s = deadline_ms / 1000 + REPLY_SLACK_S if patient else client_timeout_s
        assigns_before = len(self.accepted_posts(node, "assign"))
        sent = time.monotonic()
        if op in ("start", "stop"):
            node.events.append((sent, f"{op}_sent"))
        conn = ControlConnection(node.socket_path)
        reply: dict[str, Any] | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(timeout_s):
                await conn.connect()
                reply = await conn.request(payload)
        except TimeoutError:
            error = f"no reply within {timeout_s:g}s"
        except ControlError as exc:
            error = str(exc)
        received_mono, received_wall = time.monotonic(), time.time()
        answer = Answer(node.droplet_id, op, reply, error, received_mono - sent)
        if reply is not None:
            self._check(node, answer, sent, received_mono, received_wall)
            if op == "start":
                assigns = len(self.accepted_posts(node, "assign")) - assigns_before
                if assigns > 1:
                    answer.violations.append(
                        f"start on {node.droplet_id}: {assigns} accepted assign POSTs for one "
                        f"start; reply {answer.reply}"
                    )
                if answer.ocf == 0:
                    node.events.append((received_mono, "start_ok"))
            if op == "stop":
                node.events.append((received_mono, "stop_answered"))
        elif patient:
            answer.violations.append(
                f"{op} on {node.droplet_id} with deadline_ms={deadline_ms}: {error}"
            )
        await conn.close()
        return answer

    def _check(self, node: Node, answer: Answer, sent: float, mono: float, wall: float) -> None:
        assert answer.reply is not None and node.config is not None
        me = node.droplet_id
        wall_to_mono = mono - wall
        where = self.describe(mono, wall_to_mono)
        if (
            answer.op == "start"
            and answer.ocf == 0
            and not self.held_unlocked_during(me, sent, mono, wall_to_mono)
        ):
            answer.violations.append(
                f"start on {me} answered 0 but the IP is not held by {me} and unlocked: "
                f"{where}; reply {answer.reply}"
            )
        if answer.op == "monitor" and answer.ocf == 0:
            bound = freshness_bound_s(node.config)
            if not self.held_within(me, mono, bound):
                answer.violations.append(
                    f"monitor on {me} answered 0 but {me} has not held the IP for more than "
                    f"the freshness bound ({bound:g}s): {where}; reply {answer.reply}"
                )
        if answer.op == "stop" and node.on_stop == "release" and answer.ocf != 0:
            answer.violations.append(
                f"stop (on_stop: release) on {me} answered {answer.ocf}: {answer.reply}"
            )

    # --- the simulator's truth ------------------------------------------------------------

    def pending_spans(self, wall_to_mono: float, since: float) -> list[tuple[float, float]]:
        """``(began, ended)`` of each action on the IP (monotonic; ``inf``: still pending)
        that was pending at some time after ``since``."""
        spans = []
        for action in self.sim.actions(IP):
            if action.origin == "seed":
                continue
            ended = math.inf if action.completed_at is None else action.completed_at + wall_to_mono
            if ended > since:
                spans.append((action.started_at + wall_to_mono, ended))
        return spans

    def held_unlocked_during(
        self, droplet_id: int, since: float, until: float, wall_to_mono: float
    ) -> bool:
        """At some instant of ``[since, until]`` (monotonic) ``droplet_id`` held the IP and no
        action was pending on it. The instants to try: both ends and every change between."""
        spans = self.pending_spans(wall_to_mono, since)
        instants = {since, until}
        instants.update(t for t, _ in self.sim.holder_history(IP) if since < t < until)
        instants.update(t for span in spans for t in span if since < t < until)
        return any(
            self.sim.holder_at(IP, t) == droplet_id
            and not any(began <= t < ended for began, ended in spans)
            for t in instants
        )

    def held_within(self, droplet_id: int, mono: float, bound_s: float) -> bool:
        """``droplet_id`` held the IP at some time in ``[mono - bound_s, mono]``."""
        since = mono - bound_s
        if self.sim.holder_at(IP, since) == droplet_id:
            return True
        return any(h == droplet_id for t, h in self.sim.holder_history(IP) if since <= t <= mono)

    def accepted_posts(self, node: Node, kind: str) -> list[Exchange]:
        """``node``'s daemon's POSTs of ``kind`` (assign, unassign) that started an action (a
        429 or a 5xx did not), oldest first."""
        return [
            e
            for e in self.sim.posts(IP)
            if e.state_changed
            and e.request_headers.get("User-Agent", "") == node.user_agent
            and _action_type(e) == kind
        ]

    def ghost_actions(self) -> list[str]:
        """Actions a daemon started for an operation Pacemaker had already moved past: an
        assign after the node's stop was answered (and before its next start was asked), an
        unassign after its start answered 0 (and before its next stop was asked). Each POST
        is judged once, by when the simulator received it."""
        found = []
        exchanges = self.sim.exchanges
        fresh, self.exchanges_checked = exchanges[self.exchanges_checked :], len(exchanges)
        for node in self.nodes.values():
            for post in fresh:
                if not post.state_changed or post.ip != IP or post.endpoint != "post_action":
                    continue
                if post.request_headers.get("User-Agent", "") != node.user_agent:
                    continue
                at, kind = post.received_monotonic, _action_type(post)
                if kind == "assign" and node.last_event(at, ("stop_answered", "start_sent")) == (
                    "stop_answered"
                ):
                    found.append(
                        f"{node.droplet_id} sent an assign after its stop was answered: "
                        f"{self.describe(at, time.monotonic() - time.time())}"
                    )
                if kind == "unassign" and node.last_event(at, ("start_ok", "stop_sent")) == (
                    "start_ok"
                ):
                    found.append(
                        f"{node.droplet_id} sent an unassign after its start answered 0: "
                        f"{self.describe(at, time.monotonic() - time.time())}"
                    )
        return found

    def describe(self, mono: float, wall_to_mono: float) -> str:
        """The IP's history and actions in this example, relative to ``mono``."""
        since = self.example_began
        changes = [f"{t - mono:+.3f}s->{h}" for t, h in self.sim.holder_history(IP) if t >= since]
        actions = [
            f"{a.type}({a.droplet_id}, {a.origin}, {a.outcome}) "
            f"{a.started_at + wall_to_mono - mono:+.3f}s.."
            + (
                "pending"
                if a.completed_at is None
                else f"{a.completed_at + wall_to_mono - mono:+.3f}s"
            )
            for a in self.sim.actions(IP)
            if a.origin != "seed" and a.started_at + wall_to_mono >= since
        ]
        return (
            f"holder now {self.sim.holder(IP)} locked={self.sim.locked(IP)}; "
            f"holder changes {changes}; actions {actions}"
        )


def _action_type(post: Exchange) -> str | None:
    body = post.request_json()
    return body.get("type") if isinstance(body, dict) else None


# ----------------------------------------------------------------------------- the model

nodes = st.sampled_from(NODES)
Step = TypeVar("Step", bound=Callable[..., None])


def traced(rule_body: Step) -> Step:
    """Number the step and note it in the model's trail before it runs."""

    @functools.wraps(rule_body)
    def run(self: TruthModel, **arguments: Any) -> None:
        self.enter(rule_body.__name__, arguments)
        rule_body(self, **arguments)
        self.record(self.world.call(self.world.ghost_actions))

    return cast(Step, run)


deadlines: st.SearchStrategy[DeadlineKind] = st.sampled_from(["tiny", "short", "normal"])


class TruthModel(RuleBasedStateMachine):
    """Random interleavings of operations and faults; every answer checked on arrival.

    A violation is recorded when the answer arrives and the example fails at its teardown:
    every example then makes the same draws whatever the timing did, so hypothesis can
    replay and shrink a failure instead of tripping over a run that failed one step later.
    """

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.step = 0
        self.stuck_armed = False  # a stuck action was asked for: ending it is a useful step
        self.metadata_outage: Fault | None = None
        self.trail: list[str] = []  # the steps run, with their times: for the failure message
        self.violations: list[str] = []

    def node(self, droplet_id: int) -> Node:
        return self.world.nodes[droplet_id]

    def ask(self, node: int, op: str, deadline_ms: int, **options: Any) -> None:
        self.verdict(self.world.run(self.world.ask(self.node(node), op, deadline_ms, **options)))

    def verdict(self, *answers: Answer) -> None:
        for answer in answers:
            self.record(answer.violations)

    def record(self, violations: list[str]) -> None:
        self.violations.extend(f"step {self.step}: {v}" for v in violations)

    def enter(self, name: str, arguments: dict[str, Any]) -> None:
        self.step += 1
        elapsed = time.monotonic() - self.world.example_began
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(arguments.items()))
        self.trail.append(f"  {self.step}. t={elapsed:.2f}s {name}({shown})")

    @initialize(
        on_stop=st.sampled_from(["release", "unassign"]),
        holder=st.sampled_from([None, *NODES]),
    )
    def begin(self, on_stop: OnStop, holder: int | None) -> None:
        self.world.run(self.world.begin(on_stop, holder))

    def teardown(self) -> None:
        world = self.world
        world.run(world.stop_daemons())
        self.step += 1  # what the daemons did after the last step, until they stopped
        self.record(world.call(world.ghost_actions))
        world.run(world.end())
        assert not self.violations, "\n".join([*self.violations, "steps:", *self.trail])

    # --- Pacemaker's operations ----------------------------------------------------------

    @rule(node=nodes, deadline=deadlines)
    @traced
    def start(self, node: int, deadline: DeadlineKind) -> None:
        self.ask(node, "start", DEADLINE_MS[deadline])

    @rule(deadline=deadlines)
    @traced
    def race(self, deadline: DeadlineKind) -> None:
        """Both nodes start at once (as after a partition)."""

        async def both() -> list[Answer]:
            return list(
                await asyncio.gather(
                    *(self.world.ask(self.node(n), "start", DEADLINE_MS[deadline]) for n in NODES)
                )
            )

        self.verdict(*self.world.run(both()))

    @rule(node=nodes, deadline=deadlines)
    @traced
    def stop(self, node: int, deadline: DeadlineKind) -> None:
        self.ask(node, "stop", DEADLINE_MS[deadline])

    @rule(
        node=nodes,
        op=st.sampled_from(["start", "stop"]),
        away_s=st.sampled_from([0.02, 0.1, 0.3]),
    )
    @traced
    def caller_goes_away(self, node: int, op: str, away_s: float) -> None:
        """The caller hangs up (its own timeout) while the daemon works on."""
        self.ask(node, op, DEADLINE_MS["normal"], client_timeout_s=away_s)

    @rule(node=nodes, probe=st.booleans())
    @traced
    def monitor(self, node: int, probe: bool) -> None:
        self.ask(node, "monitor", MONITOR_DEADLINE_MS, probe=probe)

    @rule(node=nodes)
    @traced
    def restart(self, node: int) -> None:
        """Shutdown and startup with the same state dir (systemctl restart)."""

        async def again() -> None:
            await self.world.stop_daemon(self.node(node))
            await self.world.start_daemon(self.node(node))

        self.world.run(again())

    # --- the world around ------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.1, 0.5, 3.0]))
    @traced
    def time_passes(self, seconds: float) -> None:
        """Time passes under Pacemaker's recurring monitors, on both nodes."""

        async def recurring_monitors() -> list[Answer]:
            answers: list[Answer] = []
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0:
                await asyncio.sleep(min(MONITOR_INTERVAL_S, left))
                for node in self.world.nodes.values():
                    answers.append(await self.world.ask(node, "monitor", MONITOR_DEADLINE_MS))
            return answers

        self.verdict(*self.world.run(recurring_monitors()))

    @rule(lag_s=st.sampled_from([0.0, 0.3, 1.0, 1.5]))
    @traced
    def metadata_lag(self, lag_s: float) -> None:
        self.world.call(lambda: self.world.sim.set_metadata_lag(lag_s))

    @rule(kind=st.sampled_from(["delayed", "errored", "stuck"]))
    @traced
    def next_action(self, kind: str) -> None:
        """The next action created on the IP (by a daemon or out of band) misbehaves."""
        faults = self.world.sim.faults
        if kind == "delayed":
            self.world.call(lambda: faults.slow_actions(ACTION_DELAY_S, count=1, ip=IP))
        elif kind == "errored":
            self.world.call(lambda: faults.errored_actions(1, ip=IP))
        else:
            self.world.call(lambda: faults.stuck_actions(1, ip=IP))
            self.stuck_armed = True

    @precondition(lambda self: self.stuck_armed)
    @rule(status=st.sampled_from(["completed", "errored"]))
    @traced
    def stuck_action_ends(self, status: Literal["completed", "errored"]) -> None:
        self.world.call(lambda: self.world.sim.finish_stuck_actions(status))
        self.stuck_armed = False

    @rule(kind=st.sampled_from(["5xx", "429"]), count=st.sampled_from([3, 200]))
    @traced
    def api_burst(self, kind: str, count: int) -> None:
        """The next ``count`` API requests (any daemon's, any endpoint) fail."""
        faults = self.world.sim.faults
        if kind == "5xx":
            self.world.call(lambda: faults.server_errors(count, status=503))
        else:
            self.world.call(lambda: faults.rate_limit_storm(count, retry_after_s=1))

    @precondition(lambda self: self.metadata_outage is None)
    @rule(droplet=st.sampled_from([None, *NODES]))
    @traced
    def metadata_outage_begins(self, droplet: int | None) -> None:
        """One droplet's metadata service (None: both) resets every connection."""
        faults = self.world.sim.faults
        self.metadata_outage = self.world.call(lambda: faults.metadata_down(droplet))

    @precondition(lambda self: self.metadata_outage is not None)
    @rule()
    @traced
    def metadata_outage_ends(self) -> None:
        outage, self.metadata_outage = self.metadata_outage, None
        assert outage is not None
        self.world.call(lambda: self.world.sim.faults.remove(outage))

    @rule(to=st.sampled_from([None, *NODES]))
    @traced
    def out_of_band_move(self, to: int | None) -> None:
        """Someone moves the IP in the control panel (refused as DigitalOcean would: ignored)."""

        def move() -> None:
            with contextlib.suppress(SimApiError):
                self.world.sim.move_out_of_band(IP, to)

        self.world.call(move)


# ----------------------------------------------------------------------------- the test

PROFILE = "truth-model"
settings.register_profile(
    PROFILE,
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,  # an example takes real time
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # A short base: control sockets live under it (sun_path is 108 bytes).
    made = World(tmp_path_factory.mktemp("truth"))
    try:
        yield made
    finally:
        made.close()


def test_the_daemons_never_lie_about_the_holder(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # Warnings (retries, refused POSTs) are the faults doing their job; a failure's message
    # carries the simulator's history instead.
    caplog.set_level(logging.ERROR, logger="hafloatd")
    chosen = os.environ.get("HAFLOATD_MODEL_SEED")
    run_seed = int(chosen) if chosen else random.SystemRandom().randrange(2**32)
    print(
        f"truth model: seed={run_seed} examples={EXAMPLES} steps={STEPS} "
        f"(repeat with HAFLOATD_MODEL_SEED={run_seed})"
    )
    profile = settings.get_profile(PROFILE)

    def machine() -> TruthModel:
        return TruthModel(world)

    try:
        run_state_machine_as_test(seed(run_seed)(machine), settings=profile)
    finally:
        mean = world.example_seconds / max(1, world.examples)
        print(f"truth model: {world.examples} examples run, {mean:.2f}s per example")
