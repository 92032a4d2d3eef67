"""What ``hafloatd lab`` prints and writes: per drill a timeline, then one summary table.

The timeline lists every recorded event in seconds after the fault, then draws the client's
requests, one character each (the node that answered, ``.`` for a failed request), with the
events marked under it. The table decomposes each failover into what each party spent
(docs/lab.md explains how to read both). ``to_json`` is the same as data.
"""

from __future__ import annotations

import math
from typing import Any

from hafloatd.lab.drills.phases import PHASE_LABELS, PHASES
from hafloatd.lab.drills.runner import DrillResult

STRIP_WIDTH = 100
MARK_LETTERS = {
    "fault": "F",
    "restart": "R",
    "detected": "D",
    "start": "S",
    "post": "P",
    "done": "A",
    "new": "N",
}


def timeline_text(result: DrillResult) -> str:
    lines = [f"{result.drill} #{result.round}: {result.fault} (DC before: {result.dc_before})"]
    for mark in result.breakdown.marks:
        lines.append(f"  {mark.at - result.fault_at:+8.3f} s  {mark.source:<9} {mark.label}")
    lines += _strip(result)
    if result.moved:
        down = f"{result.downtime_s:.2f} s" if result.downtime_s is not None else "unknown"
        lines.append(
            f"  {result.old} -> {result.new}: client downtime {down} "
            f"({result.failed_requests} failed requests)"
        )
    else:
        lines.append(f"  FloatIP stayed on {result.old}: {result.failed_requests} failed requests")
    counts = " ".join(f"{n}={v}" for n, v in sorted(result.fail_counts.items()))
    lines.append(
        f"  assign POSTs: {result.accepted_posts} (requests: {result.posts}); "
        f"fail-counts: {counts or 'none'}"
    )
    for problem in result.problems:
        lines.append(f"  PROBLEM: {problem}")
    return "\n".join(lines)


def _strip(result: DrillResult) -> list[str]:
    samples = result.samples
    if not samples:
        return []
    per_char = max(1, math.ceil(len(samples) / STRIP_WIDTH))
    chars = []
    for i in range(0, len(samples), per_char):
        who = {w for _at, w in samples[i : i + per_char]}
        if who == {None}:
            chars.append(".")
        elif len(who) == 1:
            chars.append(str(next(iter(who)))[-1])  # node1 -> "1"
        else:
            chars.append(":")
    marks = [" "] * len(chars)
    starts = [at for at, _who in samples]
    for mark in result.breakdown.marks or []:
        letter = MARK_LETTERS.get(mark.kind)
        if letter is None:
            continue
        index = sum(1 for at in starts if at < mark.at) // per_char
        if 0 <= index < len(marks) and marks[index] == " ":
            marks[index] = letter
    if not result.breakdown.marks:
        index = sum(1 for at in starts if at < result.fault_at) // per_char
        if index < len(marks):
            marks[index] = "F"
    step = f"{per_char * 50} ms" if per_char > 1 else "50 ms"
    return [
        f"  client  {''.join(chars)}   (1 char = {step}; digit = node that answered, . = failed)",
        f"          {''.join(marks).rstrip()}   (F fault, R restart, D detected, S start, "
        "P POST, A action done, N new node)",
    ]


def summary_table(results: list[DrillResult]) -> str:
    head = ["drill", "#", "downtime", *[_short(p) for p in PHASES], "POSTs", "fail-cnt", "result"]
    rows = [head]
    for r in results:
        phases = [_s(r.breakdown.phases.get(p)) for p in PHASES]
        counts = "/".join(str(v) for _n, v in sorted(r.fail_counts.items())) or "-"
        rows.append(
            [
                r.drill,
                str(r.round),
                _s(r.downtime_s) if r.moved else "0 (stayed)",
                *phases,
                str(r.accepted_posts),
                counts,
                "ok" if r.ok else "PROBLEM",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    legend = "; ".join(f"{_short(p)} = {PHASE_LABELS[p]}" for p in PHASES)
    return "\n".join(out) + f"\nseconds; {legend}; fail-cnt = node1/node2"


def _short(phase: str) -> str:
    return {
        "detection": "detect",
        "decision": "pacemkr",
        "hafloatd": "hafloatd",
        "action": "DO-act",
        "first_answer": "1st-ans",
    }[phase]


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def to_json(results: list[DrillResult], context: dict[str, Any]) -> dict[str, Any]:
    """The drills as data; times are seconds after each drill's fault."""
    drills = []
    for r in results:
        base = r.fault_at
        drills.append(
            {
                "drill": r.drill,
                "round": r.round,
                "fault": r.fault,
                "fault_at_unix": base,
                "from": r.old,
                "to": r.new,
                "moved": r.moved,
                "dc_before": r.dc_before,
                "ok": r.ok,
                "problems": r.problems,
                "downtime_s": r.downtime_s,
                "failed_requests": r.failed_requests,
                "phases_s": r.breakdown.phases,
                "total_s": r.breakdown.total_s,
                "assign_posts": r.accepted_posts,
                "api_posts": r.posts,
                "fail_counts": r.fail_counts,
                "active_on_two_nodes": r.active_on_two_nodes,
                "marks": [
                    {"t": round(m.at - base, 3), "label": m.label, "source": m.source}
                    for m in r.breakdown.marks
                ],
                "requests": [
                    {"t": round(at - base, 3), "answered_by": who} for at, who in r.samples
                ],
            }
        )
    return {**context, "drills": drills}
