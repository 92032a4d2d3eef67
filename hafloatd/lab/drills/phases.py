"""Where a drill's downtime went: each party's share, from the records each party keeps.

Sources, all on one machine's clock: the lab's own fault time; Corosync's log (membership
change, ms stamps); Pacemaker's log (its view of the failure, the executor starting the
agent); hafloatd's stderr, stamped on arrival (health transitions, ``crm_resource --fail``);
the simulator's record (the assign POST's arrival, the action's completion); the client's
samples (last answer from the old droplet, first from the new one).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# "Dec 02 03:53:21.158 ..." (Corosync with timestamp: hires, and Pacemaker's detail log)
_STAMP = re.compile(r"^([A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d\.\d{3})")

PHASES = ("detection", "decision", "hafloatd", "action", "first_answer")
PHASE_LABELS = {
    "detection": "failure detection",
    "decision": "Pacemaker's decision",
    "hafloatd": "hafloatd (start exec -> POST)",
    "action": "DigitalOcean's action",
    "first_answer": "first good answer (new node)",
}


@dataclass
class Mark:
    """One event on a drill's timeline."""

    at: float  # unix time
    label: str
    source: str  # lab, corosync, pacemaker, hafloatd, api, client
    kind: str = ""  # fault, detected, start, post, done, new (the phase boundaries)


@dataclass
class Breakdown:
    """The phases of one failover, seconds; None where a record is missing."""

    phases: dict[str, float | None] = field(default_factory=dict)
    total_s: float | None = None  # fault -> first good answer from the new node
    marks: list[Mark] = field(default_factory=list)


def log_stamp(line: str, year: int | None = None) -> float | None:
    """Unix time of a Corosync/Pacemaker log line (local time, no year in the line)."""
    found = _STAMP.match(line)
    if found is None:
        return None
    when = datetime.strptime(
        f"{year or time.localtime().tm_year} {found.group(1)}", "%Y %b %d %H:%M:%S.%f"
    )
    return when.timestamp()


def first_line(path: Path, pattern: str, since: float, until: float | None = None) -> Mark | None:
    """The first line of ``path`` matching ``pattern`` stamped at or after ``since``
    (synchronous: call it through ``asyncio.to_thread``)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    regex = re.compile(pattern)
    for line in text.splitlines():
        at = log_stamp(line)
        # Log stamps have ms resolution: allow the line that shares the fault's millisecond.
        if at is None or at < since - 0.001 or (until is not None and at > until):
            continue
        if regex.search(line):
            return Mark(at, line, "")
    return None


def breakdown(
    fault_at: float,
    *,
    learned: Mark | None,
    start_exec: Mark | None,
    post_at: float | None,
    action_done_at: float | None,
    first_new_at: float | None,
    extra: Iterable[Mark] = (),
) -> Breakdown:
    """Phases between consecutive known points; a missing point leaves its phase None."""
    points = [
        fault_at,
        learned.at if learned else None,
        start_exec.at if start_exec else None,
        post_at,
        action_done_at,
        first_new_at,
    ]
    phases: dict[str, float | None] = {}
    for name, begin, end in zip(PHASES, points, points[1:], strict=False):
        phases[name] = round(end - begin, 3) if begin is not None and end is not None else None
    marks = [Mark(fault_at, "fault", "lab", "fault"), *extra]
    if learned and learned.at > fault_at:  # a move ordered by command is known at once
        marks.append(Mark(learned.at, learned.label, learned.source, "detected"))
    if start_exec:
        marks.append(Mark(start_exec.at, "start exec'd", "pacemaker", "start"))
    if post_at is not None:
        marks.append(Mark(post_at, "assign POST arrives", "api", "post"))
    if action_done_at is not None:
        marks.append(Mark(action_done_at, "action completed (IP moved)", "api", "done"))
    if first_new_at is not None:
        marks.append(Mark(first_new_at, "first answer from the new node", "client", "new"))
    total = round(first_new_at - fault_at, 3) if first_new_at is not None else None
    return Breakdown(phases, total, sorted(marks, key=lambda m: m.at))
