"""Deadline: the arithmetic on a fake clock, and ``run`` enforcing it on a real event loop.

No test here measures how long anything took: ``run`` is judged by what it raises, whether the
awaited work was cancelled, and whether the deadline had in fact passed when it gave up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from hafloatd import deadline as deadline_module
from hafloatd.deadline import Deadline
from hafloatd.errors import DeadlineExceeded

# Guards a test against a ``run`` that enforces nothing (the stuck work would wait forever):
# far beyond any deadline used here, and never what a test asserts.
HANG_GUARD_S = 10.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The deadline module's clock, and only its: the event loop keeps the real one."""
    fake = FakeClock(1000.0)
    monkeypatch.setattr(deadline_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    yield fake


# --- arithmetic ------------------------------------------------------------------------------


def test_after_is_that_many_seconds_from_now(clock: FakeClock) -> None:
    assert Deadline.after(5).at == 1005.0
    assert Deadline.after(0).at == 1000.0


def test_remaining_counts_down_and_never_goes_negative(clock: FakeClock) -> None:
    deadline = Deadline(1005.0)
    assert deadline.remaining() == 5.0
    clock.now = 1003.5
    assert deadline.remaining() == 1.5
    clock.now = 1005.0
    assert deadline.remaining() == 0.0
    clock.now = 1100.0
    assert deadline.remaining() == 0.0


def test_expired_from_the_instant_itself(clock: FakeClock) -> None:
    deadline = Deadline(1005.0)
    assert not deadline.expired()
    clock.now = 1004.999
    assert not deadline.expired()
    clock.now = 1005.0
    assert deadline.expired()
    clock.now = 2000.0
    assert deadline.expired()


def test_cap_is_the_smaller_of_the_step_and_what_is_left(clock: FakeClock) -> None:
    deadline = Deadline(1005.0)
    assert deadline.cap(2.0) == 2.0  # the step's own timeout is shorter
    assert deadline.cap(30.0) == 5.0  # the deadline is nearer
    clock.now = 1004.0
    assert deadline.cap(2.0) == 1.0
    clock.now = 1010.0
    assert deadline.cap(2.0) == 0.0  # expired: no time for the step, never negative


# --- run -------------------------------------------------------------------------------------


def stuck(cancelled: asyncio.Event) -> Coroutine[Any, Any, str]:
    """Work that never finishes on its own; sets ``cancelled`` when it is cancelled."""

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "finished"  # pragma: no cover - never set

    return work()


async def test_run_returns_what_finishes_in_time() -> None:
    async def work() -> str:
        await asyncio.sleep(0)  # suspends at least once, so a timeout could strike
        return "done"

    assert await Deadline.after(30).run(work(), "working") == "done"


async def test_run_lets_the_works_own_error_through() -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        raise LookupError("not found")

    with pytest.raises(LookupError, match="not found"):
        await Deadline.after(30).run(work(), "looking up")


async def test_run_gives_up_at_the_deadline_cancelling_the_work() -> None:
    cancelled = asyncio.Event()
    deadline = Deadline.after(0.05)
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(DeadlineExceeded, match="deadline exceeded while asking the API"):
            await deadline.run(stuck(cancelled), "asking the API")
    assert cancelled.is_set()  # the work did not outlive the deadline
    assert deadline.expired()  # and it was not abandoned before its time


async def test_run_with_an_expired_deadline_does_not_wait() -> None:
    cancelled = asyncio.Event()
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(DeadlineExceeded, match="while polling"):
            await Deadline(time.monotonic() - 1).run(stuck(cancelled), "polling")
    assert cancelled.is_set()


async def test_runs_share_one_deadline_rather_than_each_getting_a_fresh_budget() -> None:
    """Two steps under one deadline: the second gets only what the first left."""
    deadline = Deadline.after(0.05)
    first, second = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(DeadlineExceeded):
            await deadline.run(stuck(first), "step one")
        with pytest.raises(DeadlineExceeded, match="while step two"):
            await deadline.run(stuck(second), "step two")
    assert first.is_set() and second.is_set()


async def test_run_does_not_turn_the_callers_cancellation_into_a_timeout() -> None:
    cancelled = asyncio.Event()
    task = asyncio.create_task(Deadline.after(30).run(stuck(cancelled), "waiting"))
    await asyncio.sleep(0)  # let it start and suspend
    task.cancel()
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert cancelled.is_set()


class OffsetClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is not ``time.monotonic`` (as with other loop implementations):
    the deadline, a monotonic instant, must be translated to it."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self._offset = offset

    def time(self) -> float:
        return super().time() + self._offset


def run_on_offset_loop(offset: float, main: Callable[[], Awaitable[None]]) -> None:
    loop = OffsetClockLoop(offset)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("offset", [-1e6, 1e6])
def test_run_translates_the_deadline_to_the_loops_clock(offset: float) -> None:
    async def main() -> None:
        async def work() -> str:
            await asyncio.sleep(0)
            return "done"

        # Ample time: read on the wrong clock it would already be over (offset > 0).
        assert await Deadline.after(30).run(work(), "working") == "done"
        # Short time: read on the wrong clock it would be a million seconds away (offset < 0).
        cancelled = asyncio.Event()
        deadline = Deadline.after(0.05)
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(DeadlineExceeded):
                await deadline.run(stuck(cancelled), "waiting")
        assert cancelled.is_set()
        assert deadline.expired()

    run_on_offset_loop(offset, main)
