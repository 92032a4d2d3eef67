"""Who held one reserved IP, and since when: the timeline tests and the metadata service read.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the clock ``Exchange.received_monotonic`` and
the daemon's own timestamps use on Linux), so a test can line them up with what a client saw.
The first entry is the holder when the simulator started; each later entry is one change. The
oldest entries are dropped past ``limit``; asking about a time before the oldest one kept is
then an error rather than a guess.
"""

from __future__ import annotations

import bisect

HISTORY_LIMIT = 100_000


class HolderHistory:
    """``(monotonic time, holder)`` entries of one IP, oldest first; ``None`` is unassigned."""

    def __init__(self, started_at: float, holder: int | None, *, limit: int = HISTORY_LIMIT):
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        self._times: list[float] = [started_at]
        self._holders: list[int | None] = [holder]
        self._limit = limit
        self.truncated = False

    def record(self, at: float, holder: int | None) -> None:
        """A change of holder at ``at`` (not earlier than the last entry); a no-op if unchanged."""
        if at < self._times[-1]:
            raise ValueError(f"holder history goes forward: {at} < {self._times[-1]}")
        if holder == self._holders[-1]:
            return
        self._times.append(at)
        self._holders.append(holder)
        if len(self._times) > self._limit:
            del self._times[0], self._holders[0]
            self.truncated = True

    def holder_at(self, at: float, *, strict: bool = True) -> int | None:
        """The holder at monotonic time ``at``: the latest entry not after it.

        Before the first entry: the holder at start (it was there before the simulator began),
        unless old entries were dropped: then LookupError, or the oldest kept if not ``strict``.
        """
        index = bisect.bisect_right(self._times, at)
        if index == 0:
            if self.truncated and strict:
                raise LookupError(
                    f"holder history before {self._times[0]} was dropped (limit {self._limit})"
                )
            return self._holders[0]
        return self._holders[index - 1]

    def entries(self) -> list[tuple[float, int | None]]:
        return list(zip(self._times, self._holders, strict=True))
