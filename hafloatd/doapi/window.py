"""A count of events in the last hour, to the minute: the API requests the budget is about.

``SlidingCount`` keeps one counter per minute in a ring of 60, each tagged with the minute it
counts, so memory and time stay constant however many requests go out. ``count(now)`` adds
the counters of ``now``'s minute and the 59 before it: the oldest minute drops out whole, so
the answer covers between 59 and 60 minutes. Pure: the caller passes the (monotonic) time,
which never goes backwards.
"""

from __future__ import annotations

import math

__all__ = ["SlidingCount"]


class SlidingCount:
    """Events in the last ``span_s`` seconds, in ``buckets`` steps (an hour by the minute)."""

    def __init__(self, span_s: float = 3600.0, buckets: int = 60) -> None:
        if not span_s > 0 or buckets < 1:
            raise ValueError(f"span_s must be > 0 and buckets >= 1, got {span_s}, {buckets}")
        self._width = span_s / buckets
        self._counts = [0] * buckets
        # The absolute step (floor(time / width)) each slot counts; -inf-like for none yet.
        self._steps = [-math.inf] * buckets

    def add(self, now: float, events: int = 1) -> None:
        step = math.floor(now / self._width)
        slot = step % len(self._counts)
        if self._steps[slot] != step:  # the slot held a step a whole span ago: reuse it
            self._steps[slot] = step
            self._counts[slot] = 0
        self._counts[slot] += events

    def count(self, now: float) -> int:
        current = math.floor(now / self._width)
        oldest = current - len(self._counts) + 1
        return sum(
            count
            for step, count in zip(self._steps, self._counts, strict=True)
            if oldest <= step <= current
        )
