"""``hafloatd lab --svg PATH``: the drills' timelines as one SVG, written by hand.

One row per drill, all on the same scale (seconds after the fault): each client request is
a tick coloured by the node that answered it (red when it failed), each recorded event a
dashed line with its letter (F fault, R daemon restarted, D detected, S start, P POST,
A action done, N new node answering) and, under the row, a note of what it was.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from hafloatd.lab.drills.report import MARK_LETTERS
from hafloatd.lab.drills.runner import WINDOW_S, DrillResult

NODE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
FAILED_COLOUR = "#d62728"
LEFT, RIGHT, TOP, ROW = 230, 20, 60, 96
WIDTH = 1100


def render_svg(results: list[DrillResult], title: str) -> str:
    span = max(
        (max((at for at, _w in r.samples), default=r.fault_at) - r.fault_at for r in results),
        default=1.0,
    )
    span = max(span, 1.0)
    scale = (WIDTH - LEFT - RIGHT) / (span + WINDOW_S)
    nodes = sorted({w for r in results for _at, w in r.samples if w is not None})
    colour = {name: NODE_COLOURS[i % len(NODE_COLOURS)] for i, name in enumerate(nodes)}
    notes = [_notes(r) for r in results]
    tops = []
    y = TOP
    for lines in notes:
        tops.append(y)
        y += ROW + 14 * max(0, len(lines) - 1)
    height = y + 40

    def x(seconds: float) -> float:
        return LEFT + (seconds + WINDOW_S) * scale

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    legend_x = 10
    for name in nodes:
        out.append(f'<rect x="{legend_x}" y="32" width="10" height="10" fill="{colour[name]}"/>')
        out.append(f'<text x="{legend_x + 14}" y="41">answered by {escape(name)}</text>')
        legend_x += 140
    out.append(f'<rect x="{legend_x}" y="32" width="10" height="10" fill="{FAILED_COLOUR}"/>')
    out.append(f'<text x="{legend_x + 14}" y="41">request failed</text>')
    for row, result in enumerate(results):
        top = tops[row]
        base = result.fault_at
        down = (
            f"{result.downtime_s:.2f} s down"
            if result.moved and result.downtime_s
            else ("stayed" if not result.moved else "")
        )
        out.append(
            f'<text x="10" y="{top + 22}" font-weight="bold">'
            f"{escape(result.drill)} #{result.round}</text>"
        )
        out.append(
            f'<text x="10" y="{top + 37}">{escape(result.old)} -&gt; '
            f"{escape(result.new or result.old)}, {escape(down)}</text>"
        )
        out.append(
            f'<text x="10" y="{top + 52}">{result.accepted_posts} POST, '
            f"{'ok' if result.ok else 'PROBLEM'}</text>"
        )
        for at, who in result.samples:
            fill = colour.get(who, FAILED_COLOUR) if who else FAILED_COLOUR
            out.append(
                f'<rect x="{x(at - base):.1f}" y="{top + 14}" width="2" height="26" fill="{fill}"/>'
            )
        last_x, lift = -100.0, 0
        for mark in result.breakdown.marks:
            letter = MARK_LETTERS.get(mark.kind)
            if letter is None:
                continue
            mx = x(mark.at - base)
            lift = lift + 9 if mx - last_x < 9 else 0  # stack letters of close events
            last_x = mx
            out.append(
                f'<line x1="{mx:.1f}" y1="{top + 8}" x2="{mx:.1f}" y2="{top + 46}" '
                'stroke="black" stroke-dasharray="3,2"/>'
            )
            out.append(
                f'<text x="{mx + 2:.1f}" y="{top + 9 - lift}" font-weight="bold">{letter}</text>'
            )
        for i, line in enumerate(notes[row]):
            out.append(
                f'<text x="{LEFT}" y="{top + 60 + 14 * i}" fill="#444" font-size="10">'
                f"{escape(line)}</text>"
            )
    axis_y = y + 5
    axis_y = TOP + ROW * len(results) + 5
    out.append(
        f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" stroke="#888"/>'
    )
    second = -int(WINDOW_S)
    while second <= span:
        sx = x(second)
        out.append(
            f'<line x1="{sx:.1f}" y1="{axis_y}" x2="{sx:.1f}" y2="{axis_y + 5}" stroke="#888"/>'
        )
        out.append(f'<text x="{sx - 4:.1f}" y="{axis_y + 17}" fill="#444">{second}s</text>')
        second += 1 if span <= 20 else 5
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _notes(result: DrillResult, per_line: int = 3) -> list[str]:
    """What each lettered mark was, a few per line."""
    parts = [
        f"{MARK_LETTERS[m.kind]} {m.at - result.fault_at:+.2f}s {m.label}"
        for m in result.breakdown.marks
        if m.kind in MARK_LETTERS
    ]
    return ["   ".join(parts[i : i + per_line]) for i in range(0, len(parts), per_line)]
