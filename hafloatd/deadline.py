"""Deadlines: an absolute point on the monotonic clock that every awaited step respects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from hafloatd.errors import DeadlineExceeded

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    """A monotonic instant (``time.monotonic()`` seconds) by which work must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def cap(self, seconds: float) -> float:
        """``seconds`` or what is left of the deadline, whichever is smaller."""
        return min(seconds, self.remaining())

    async def run(self, awaitable: Awaitable[T], what: str) -> T:
        """Await ``awaitable`` within the deadline; raise DeadlineExceeded naming ``what``."""
        try:
            async with asyncio.timeout_at(self._loop_time_at()):
                return await awaitable
        except TimeoutError:
            raise DeadlineExceeded(f"deadline exceeded while {what}") from None

    def _loop_time_at(self) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + (self.at - time.monotonic())
