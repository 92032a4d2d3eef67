"""Per-token rate limits as DigitalOcean applies them: a rolling hour and a rolling minute.

Every answered request carries ``ratelimit-limit`` (the hourly limit), ``ratelimit-remaining``
(what is left of the hour) and ``ratelimit-reset`` (Unix time at which the oldest counted request
leaves the hour window). A request over the per-minute burst gets 429 with ``retry-after``
(seconds until the oldest request of the minute expires); a request over the hourly quota gets
429 without ``retry-after`` (the client must use ``ratelimit-reset``). Rejected requests are not
counted (a choice: DigitalOcean does not document it).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds
    retry_after_s: int | None = None  # set on a per-minute 429
    reason: str | None = None  # "minute" | "hour" when refused

    def headers(self) -> dict[str, str]:
        values = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(self.reset_at),
        }
        if self.retry_after_s is not None:
            values["retry-after"] = str(self.retry_after_s)
        return values


class RateLimiter:
    """Sliding windows per token key. ``clock`` returns Unix time (injectable for tests)."""

    def __init__(
        self,
        per_minute: int,
        per_hour: int,
        *,
        minute_window_s: float = 60.0,
        hour_window_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.minute_window_s = minute_window_s
        self.hour_window_s = hour_window_s
        self._clock = clock
        self._hour: dict[str, deque[float]] = {}
        self._minute: dict[str, deque[float]] = {}

    def check(self, key: str) -> RateDecision:
        """Count one request for ``key`` if the limits allow it; say what to answer either way."""
        now = self._clock()
        hour, minute = self._windows(key, now)
        if len(hour) >= self.per_hour:
            return RateDecision(False, self.per_hour, 0, self._reset_at(hour, now), None, "hour")
        if len(minute) >= self.per_minute:
            retry_after = max(1, math.ceil(minute[0] + self.minute_window_s - now))
            remaining = self.per_hour - len(hour)
            return RateDecision(
                False, self.per_hour, remaining, self._reset_at(hour, now), retry_after, "minute"
            )
        hour.append(now)
        minute.append(now)
        return self._ok(hour, now)

    def peek(self, key: str | None) -> RateDecision:
        """The headers for ``key`` without counting a request (unknown key: a full quota)."""
        now = self._clock()
        if key is None:
            return RateDecision(True, self.per_hour, self.per_hour, int(now))
        hour, _ = self._windows(key, now)
        return self._ok(hour, now)

    def _ok(self, hour: deque[float], now: float) -> RateDecision:
        return RateDecision(
            True, self.per_hour, self.per_hour - len(hour), self._reset_at(hour, now)
        )

    def _windows(self, key: str, now: float) -> tuple[deque[float], deque[float]]:
        hour = self._hour.setdefault(key, deque())
        minute = self._minute.setdefault(key, deque())
        while hour and hour[0] <= now - self.hour_window_s:
            hour.popleft()
        while minute and minute[0] <= now - self.minute_window_s:
            minute.popleft()
        return hour, minute

    def _reset_at(self, hour: deque[float], now: float) -> int:
        oldest = hour[0] if hour else now
        return math.ceil(oldest + self.hour_window_s) if hour else int(now)
