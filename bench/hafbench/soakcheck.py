"""bench/soak's bookkeeping: what was sent and answered, the simulator's truth, the verdict and
the summary table. No I/O of its own beyond reading the simulator's record (in process).

The truth a reply is judged against is the simulator's: who held the IP when
(``holder_history``), which actions were pending (``actions``), which POSTs started an action
(``posts``). The rules are the project's: a start answering 0 means the IP pointed here and was
not locked at some instant between the request and the reply; a monitor answering 0 means the
IP pointed here at most the daemon's documented freshness bound (``freshness_bound_s`` in
``status``) before the reply; one start costs at most one accepted assign POST.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from report import _table

from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
RSS_GROWTH_LIMIT_KB = 5 * 1024
FD_TOLERANCE = 1
# The API client's pool (api.max_connections, 4 by default) and the metadata client's (4): the
# pooled connections are bounded by these, not by how long the daemon has run.
POOL_LIMIT = 8
TASK_TOLERANCE = 2
KEEP_EXAMPLES = 5  # failure messages kept per kind (the counts are complete)


# --- the simulator's truth ---------------------------------------------------------------


def held_within(sim: Simulator, droplet_id: int, mono: float, bound_s: float) -> bool:
    """``droplet_id`` held the IP at some time in ``[mono - bound_s, mono]``."""
    since = mono - bound_s
    if sim.holder_at(IP, since) == droplet_id:
        return True
    return any(h == droplet_id for t, h in sim.holder_history(IP) if since <= t <= mono)


def held_unlocked_during(sim: Simulator, droplet_id: int, since: float, until: float) -> bool:
    """At some instant of ``[since, until]`` (monotonic) ``droplet_id`` held the IP and no
    action on it was pending. The instants to try: both ends and every change between."""
    wall_to_mono = time.monotonic() - time.time()
    spans = []
    for action in sim.actions(IP):
        if action.origin == "seed":
            continue
        ended = math.inf if action.completed_at is None else action.completed_at + wall_to_mono
        if ended > since:
            spans.append((action.started_at + wall_to_mono, ended))
    instants = {since, until}
    instants.update(t for t, _ in sim.holder_history(IP) if since < t < until)
    instants.update(t for span in spans for t in span if since < t < until)
    return any(
        sim.holder_at(IP, t) == droplet_id and not any(a <= t < b for a, b in spans)
        for t in instants
    )


def assign_posts(sim: Simulator, droplet_id: int, since: float, until: float) -> tuple[int, int]:
    """Assign POSTs to ``droplet_id`` received in ``[since, until]``: all of them, and those
    that started an action."""
    posts = [
        post
        for post in sim.posts(IP, droplet_id=droplet_id)
        if since <= post.received_monotonic <= until
    ]
    return len(posts), sum(1 for post in posts if post.state_changed)


# --- tallies -----------------------------------------------------------------------------


@dataclass
class Problems:
    """Failures of one kind: every one counted, the first few kept verbatim."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < KEEP_EXAMPLES:
            self.examples.append(message)


@dataclass
class Monitors:
    sent: int = 0
    via_agent: int = 0
    answers: Counter[int] = field(default_factory=Counter)  # ocf code -> count
    unanswered: Problems = field(default_factory=Problems)
    unexpected: Problems = field(default_factory=Problems)  # an ocf code other than 0, 1, 7
    lies: Problems = field(default_factory=Problems)
    # Anything but 7 from a daemon whose stop answered 0 (no start since): Pacemaker would
    # see the resource active on two nodes.
    wrong_role: Problems = field(default_factory=Problems)
    # 0 judged by the metadata bound (no metadata fault on this droplet around it) / by the
    # full bound (the API's, during and after a metadata fault).
    judged_by_metadata_bound: int = 0
    judged_by_full_bound: int = 0
    # 0 while the simulator already shows the other droplet, but within the bound: allowed
    # (docs/operations.md §7), counted to show how close the answers are.
    stale_within_bound: int = 0


@dataclass
class Failovers:
    attempted: int = 0
    completed: int = 0
    first_try: int = 0
    after_retry: int = 0  # completed after one or more starts failed under an API fault
    failed: Problems = field(default_factory=Problems)  # never completed: a failure
    starts: int = 0
    start_failures_excused: int = 0  # failed while an injected API fault was on
    excused_reasons: Counter[str] = field(default_factory=Counter)
    start_failures_unexcused: Problems = field(default_factory=Problems)
    stop_failures: Problems = field(default_factory=Problems)
    start_lies: Problems = field(default_factory=Problems)
    extra_assigns: Problems = field(default_factory=Problems)
    assigns: int = 0  # accepted: each started an action
    assigns_sent: int = 0  # every assign POST the simulator received
    max_assigns_per_start: int = 0
    start_seconds: list[float] = field(default_factory=list)  # successful starts


@dataclass
class FaultWindow:
    kind: str
    api: bool  # an API fault (a metadata fault excuses no start failure)
    on: float
    off: float = math.inf
    metadata: bool = False  # a metadata fault, on ``droplet_id`` (None: every droplet)
    droplet_id: int | None = None


@dataclass
class Faults:
    windows: list[FaultWindow] = field(default_factory=list)
    health_flaps: int = 0

    def api_fault_during(self, since: float, until: float) -> str | None:
        for window in self.windows:
            if window.api and window.on <= until and window.off >= since:
                return window.kind
        return None

    def metadata_fault_during(self, droplet_id: int, since: float, until: float) -> bool:
        return any(
            window.metadata
            and window.droplet_id in (None, droplet_id)
            and window.on <= until
            and window.off >= since
            for window in self.windows
        )

    def toggled(self) -> Counter[str]:
        return Counter(window.kind for window in self.windows)


@dataclass
class Sample:
    at: float  # seconds since the soak began
    rss_kb: int
    fds: int
    tasks: int
    pooled: int  # of the fds: HTTP connections pooled to the simulator (API, metadata)

    @property
    def own_fds(self) -> int:
        """The fds but the pooled connections: nothing else may grow."""
        return self.fds - self.pooled


@dataclass
class NodeRecord:
    name: str
    droplet_id: int
    pid: int = 0
    bound_s: float = 0.0  # freshness_bound_s from status: the documented bound
    metadata_bound_s: float = 0.0  # the bound while the metadata service works (§7)
    stopped_by_stop: bool = False  # its last stop answered 0 and no start was sent since
    monitors: Monitors = field(default_factory=Monitors)
    series: list[Sample] = field(default_factory=list)
    baseline: Sample | None = None  # settled, after the warm-up
    final: Sample | None = None  # settled, after the load
    tracebacks: int = 0
    # The daemon's own loggers fold a traceback into one line: ``exc="Type: msg at file:N"``
    # (an exception logged with its frame), ``event=control_handler_error`` (a request answered
    # "internal error"), ``level=critical`` (a task crashed). Each is a bug.
    bug_lines: Problems = field(default_factory=Problems)
    warnings: int = 0
    errors: int = 0
    exited: int | None = None  # the daemon's exit status if it died during the soak


@dataclass
class Soak:
    seed: int
    duration_s: float
    warmup_s: float
    rate: float
    agent_every: int
    failover_every_s: float
    start_timeout_s: float
    nodes: list[NodeRecord] = field(default_factory=list)
    failovers: Failovers = field(default_factory=Failovers)
    faults: Faults = field(default_factory=Faults)
    api_requests: int = 0
    real_429: int = 0
    wall_s: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


# --- verdict -----------------------------------------------------------------------------


def verdict(soak: Soak) -> list[str]:
    """Why the soak failed, one line each; empty when it passed."""
    why: list[str] = []

    def problems(what: str, found: Problems) -> None:
        if found.count:
            why.append(f"{what}: {found.count}; e.g. " + " | ".join(found.examples))

    fo = soak.failovers
    if fo.completed != fo.attempted:
        why.append(f"failovers completed {fo.completed} of {fo.attempted}")
    problems("failovers never completed", fo.failed)
    problems("starts failed with no API fault injected", fo.start_failures_unexcused)
    problems("stops that did not answer 0", fo.stop_failures)
    problems("starts answering 0 without the IP here and unlocked", fo.start_lies)
    problems("starts costing more than one assign POST", fo.extra_assigns)
    if soak.real_429:
        why.append(f"{soak.real_429} real (not injected) 429s: the soak outran the rate limit")
    for node in soak.nodes:
        mon = node.monitors
        problems(f"{node.name}: monitors answering 0 beyond the freshness bound", mon.lies)
        problems(f"{node.name}: monitors after a stop not answering 7", mon.wrong_role)
        problems(f"{node.name}: monitors without an answer", mon.unanswered)
        problems(f"{node.name}: monitors with an unexpected code", mon.unexpected)
        if node.exited is not None:
            why.append(f"{node.name}: the daemon exited {node.exited} during the soak")
        if node.tracebacks:
            why.append(f"{node.name}: {node.tracebacks} 'Traceback' in the daemon's log")
        problems(f"{node.name}: exceptions logged as bugs", node.bug_lines)
        if node.baseline is None or node.final is None:
            why.append(f"{node.name}: no settled sample at the start or the end")
            continue
        start, end = node.baseline, node.final
        if end.rss_kb - start.rss_kb > RSS_GROWTH_LIMIT_KB:
            why.append(
                f"{node.name}: RSS grew {(end.rss_kb - start.rss_kb) / 1024:.1f} MB "
                f"({start.rss_kb} -> {end.rss_kb} kB; limit 5 MB)"
            )
        if end.own_fds - start.own_fds > FD_TOLERANCE:
            why.append(
                f"{node.name}: fds other than pooled HTTP connections grew {start.own_fds} -> "
                f"{end.own_fds} (tolerance {FD_TOLERANCE})"
            )
        peak_pooled = max((s.pooled for s in [*node.series, start, end]), default=0)
        if peak_pooled > POOL_LIMIT:
            why.append(
                f"{node.name}: {peak_pooled} pooled HTTP connections, more than the pools' "
                f"{POOL_LIMIT}"
            )
        if end.tasks - start.tasks > TASK_TOLERANCE:
            why.append(
                f"{node.name}: asyncio tasks grew {start.tasks} -> {end.tasks} "
                f"(tolerance {TASK_TOLERANCE})"
            )
    return why


# --- the summary -------------------------------------------------------------------------


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def is_bug_line(line: str) -> bool:
    return (
        " exc=" in line
        or "event=control_handler_error" in line
        or line.startswith("level=critical")
    )


def render(soak: Soak, why: list[str], info: dict[str, Any]) -> str:
    fo = soak.failovers
    monitors_sent = sum(n.monitors.sent for n in soak.nodes)
    via_agent = sum(n.monitors.via_agent for n in soak.nodes)
    answers: Counter[int] = Counter()
    for node in soak.nodes:
        answers.update(node.monitors.answers)
    toggled = soak.faults.toggled()
    starts = sorted(fo.start_seconds)
    load = " / ".join(f"{x:.2f}" for x in soak.load)
    rows = [
        ["duration", f"{soak.duration_s:g} s of load ({soak.warmup_s:g} s warm-up), "
         f"{soak.wall_s:.1f} s wall; seed {soak.seed}"],
        ["machine", f"{info.get('cpus')} CPUs, load average at the end {load}"],
        ["monitors sent", f"{monitors_sent} ({soak.rate:g}/s per daemon; {via_agent} through "
         f"ocf/hafloat); answers " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))],
        ["monitor lies (0 beyond the freshness bound)",
         f"{sum(n.monitors.lies.count for n in soak.nodes)} (of {answers[0]} answers 0: "
         f"{sum(n.monitors.judged_by_metadata_bound for n in soak.nodes)} judged by the metadata "
         f"bound {soak.nodes[0].metadata_bound_s:g} s, "
         f"{sum(n.monitors.judged_by_full_bound for n in soak.nodes)} by the full bound "
         f"{soak.nodes[0].bound_s:g} s after a metadata fault); 0 within the bound while the "
         f"other droplet held it: {sum(n.monitors.stale_within_bound for n in soak.nodes)}"],
        ["monitors after a stop not answering 7",
         str(sum(n.monitors.wrong_role.count for n in soak.nodes))],
        ["failovers", f"{fo.completed} of {fo.attempted} completed ({fo.first_try} at the first "
         f"start, {fo.after_retry} after a start failed under an injected API fault); "
         f"{fo.starts} starts; assign POSTs {fo.assigns_sent} sent, {fo.assigns} accepted, at "
         f"most {fo.max_assigns_per_start} accepted per start"],
        ["start failures under an injected API fault (retried)",
         f"{fo.start_failures_excused}"
         + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(fo.excused_reasons.items())) + ")"
            if fo.excused_reasons else "")],
        ["start failures without a fault", str(fo.start_failures_unexcused.count)],
        ["successful start, s (median / max)",
         f"{starts[len(starts) // 2]:.2f} / {starts[-1]:.2f}" if starts else "-"],
        ["faults toggled", f"{sum(toggled.values())} ("
         + ", ".join(f"{k}: {v}" for k, v in sorted(toggled.items())) + f"); health flaps "
         f"{soak.faults.health_flaps}"],
        ["API requests (simulator)", f"{soak.api_requests}; real 429s {soak.real_429}"],
    ]  # fmt: skip
    for node in soak.nodes:
        b, f = node.baseline, node.final
        peak = max(node.series, key=lambda s: s.rss_kb) if node.series else None
        rows.append(
            [
                f"{node.name} RSS MB (start / end / peak)",
                f"{_mb(b.rss_kb if b else None)} / {_mb(f.rss_kb if f else None)} / "
                f"{_mb(peak.rss_kb if peak else None)}",
            ]
        )
        rows.append(
            [
                f"{node.name} fds (start / end / max; of them pooled HTTP connections)",
                f"{b.fds if b else '-'} / {f.fds if f else '-'} / "
                f"{max((s.fds for s in node.series), default='-')} "
                f"({b.pooled if b else '-'} / {f.pooled if f else '-'} / "
                f"{max((s.pooled for s in node.series), default='-')})",
            ]
        )
        rows.append(
            [
                f"{node.name} asyncio tasks (start / end / max)",
                f"{b.tasks if b else '-'} / {f.tasks if f else '-'} / "
                f"{max((s.tasks for s in node.series), default='-')}",
            ]
        )
        rows.append([
            f"{node.name} log",
            f"{node.tracebacks} Traceback, {node.bug_lines.count} bug (exc=, internal error, "
            f"critical), {node.errors} ERROR, {node.warnings} WARNING lines",
        ])  # fmt: skip
    lines = [
        "# bench/soak",
        "",
        f"{info.get('date', '')}, commit {info.get('commit', '?')}, {info.get('cpu', '')}",
        "",
        *_table(["what", "figure"], rows, "ll"),
        "",
        "Start and end are settled samples (load paused, faults off, health up): start after "
        f"the warm-up, end after the load. Limits: RSS growth <= 5 MB; fds other than pooled "
        f"HTTP connections +{FD_TOLERANCE}, pooled connections <= {POOL_LIMIT} (the API "
        f"client's and the metadata client's pools); tasks +{TASK_TOLERANCE}.",
        "",
        "**PASS**" if not why else "**FAIL**",
    ]
    lines += [f"- {line}" for line in why]
    return "\n".join(lines) + "\n"
