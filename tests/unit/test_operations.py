"""The operation owner (``hafloatd.operations``): an operation belongs to itself, not its caller.

No server: bodies are fakes that log what they do and block on events the test releases. Every
wait is bounded (``within``); nothing asserts on wall-clock durations, only on the order of
events and on who is still running when a reply arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

import pytest

from hafloatd.control.protocol import ControlReply
from hafloatd.deadline import Deadline
from hafloatd.errors import OCF_ERR_GENERIC
from hafloatd.operations import OperationOwner

IP = "203.0.113.10"
WAIT_S = 5.0  # bound on every wait in these tests: a hang fails, it does not block CI
LONG_S = 60.0  # a deadline that never expires during a test
SHORT_S = 0.2  # a deadline that expires while something else still blocks

T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


class Body:
    """A fake operation body: logs "<name> began/ended/cancelled/unwound" to a shared list.

    ``blocked``: it waits for ``gate`` before it ends. ``slow_unwind``: once cancelled, its
    clean-up waits for ``unwind`` (like a real body awaiting an action it must not abandon).
    """

    def __init__(
        self, name: str, log: list[str], *, blocked: bool = False, slow_unwind: bool = False
    ) -> None:
        self.name = name
        self.log = log
        self.gate = asyncio.Event()
        self.unwind = asyncio.Event()
        if not blocked:
            self.gate.set()
        if not slow_unwind:
            self.unwind.set()
        self.began = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.runs = 0
        self.reply = ControlReply(0, f"{name} done")

    async def __call__(self) -> ControlReply:
        self.runs += 1
        self.log.append(f"{self.name} began")
        self.began.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.log.append(f"{self.name} cancelled")
            self.cancelled.set()
            await self.unwind.wait()
            self.log.append(f"{self.name} unwound")
            raise
        self.log.append(f"{self.name} ended")
        return self.reply


class Harness:
    def __init__(self) -> None:
        self.owner = OperationOwner(IP)
        self.log: list[str] = []
        self.callers: list[asyncio.Task[Any]] = []

    def body(self, name: str, **kwargs: bool) -> Body:
        return Body(name, self.log, **kwargs)

    async def call(
        self, kind: str, body: Body, deadline_s: float = LONG_S
    ) -> asyncio.Task[ControlReply]:
        """A caller (a control request) as its own task, already queued when this returns."""
        task = self.spawn(self.owner.run(kind, Deadline.after(deadline_s), body))
        # one loop turn: the caller's first step reaches run(), which enqueues synchronously
        await asyncio.sleep(0)
        return task

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self.callers.append(task)
        return task


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await within(harness.owner.close())
    for task in harness.callers:
        task.cancel()
    await asyncio.gather(*harness.callers, return_exceptions=True)


def operation_task(kind: str) -> asyncio.Task[Any]:
    """The owner's task for ``kind`` (named ``<kind>-<ip>``, as queue messages show it)."""
    return next(task for task in asyncio.all_tasks() if task.get_name() == f"{kind}-{IP}")


# --- one at a time, in arrival order -------------------------------------------------------


async def test_the_body_reply_is_the_caller_reply(h: Harness) -> None:
    body = h.body("start")
    reply = await within(h.owner.run("start", Deadline.after(LONG_S), body))
    assert reply is body.reply
    assert h.owner.in_flight is None


async def test_operations_run_one_at_a_time_in_arrival_order(h: Harness) -> None:
    # kinds other than start/stop: nothing cancels or joins anything here
    a, b, c = h.body("a", blocked=True), h.body("b", blocked=True), h.body("c", blocked=True)
    calls = [await h.call("a", a), await h.call("b", b), await h.call("c", c)]
    await within(a.began.wait())
    assert h.owner.in_flight == "a"
    c.gate.set()
    b.gate.set()
    assert (b.runs, c.runs) == (0, 0)  # released, but queued behind a
    a.gate.set()
    replies = await within(asyncio.gather(*calls))
    assert [reply.reason for reply in replies] == ["a done", "b done", "c done"]
    assert h.log == ["a began", "a ended", "b began", "b ended", "c began", "c ended"]


async def test_a_start_queued_behind_a_stop_runs_after_it(h: Harness) -> None:
    stop, start = h.body("stop", blocked=True), h.body("start")
    stopping = await h.call("stop", stop)
    starting = await h.call("start", start)
    await within(stop.began.wait())
    assert start.runs == 0
    assert h.owner.in_flight == "stop"
    stop.gate.set()
    assert (await within(stopping)).ok
    assert (await within(starting)).ok
    assert h.log == ["stop began", "stop ended", "start began", "start ended"]


# --- joining -------------------------------------------------------------------------------


async def test_an_identical_request_joins_the_newest_operation(h: Harness) -> None:
    first, retry = h.body("start", blocked=True), h.body("start-retry")
    starting = await h.call("start", first)
    retrying = await h.call("start", retry)  # Pacemaker retried after its own timeout
    await within(first.began.wait())
    first.gate.set()
    replies = await within(asyncio.gather(starting, retrying))
    assert replies[0] is replies[1] is first.reply
    assert (first.runs, retry.runs) == (1, 0)


async def test_a_request_arriving_as_the_operation_ends_is_not_answered_from_it(h: Harness) -> None:
    # defect 15: a start's answer must come from work done after the request arrived
    first, second = h.body("start", blocked=True), h.body("start-again")
    starting = await h.call("start", first)
    await within(first.began.wait())
    first.gate.set()
    # queued right behind the first start's last step: its task is done before this caller
    # runs, but its done-callbacks (which drop it from the queue) have not run yet
    again = h.spawn(h.owner.run("start", Deadline.after(LONG_S), second))
    assert (await within(starting)) is first.reply
    assert (await within(again)) is second.reply
    assert (first.runs, second.runs) == (1, 1)


async def test_a_request_identical_to_an_older_operation_is_not_joined(h: Harness) -> None:
    # stop, start, stop: the second stop is not the newest operation's kind, so it is new
    # (and it cancels the queued start); a stop never cancels an earlier stop
    stop1, start, stop2 = h.body("stop1", blocked=True), h.body("start"), h.body("stop2")
    stopping1 = await h.call("stop", stop1)
    starting = await h.call("start", start)
    stopping2 = await h.call("stop", stop2)
    await within(stop1.began.wait())
    stop1.gate.set()
    assert (await within(stopping1)).reason == "stop1 done"
    assert (await within(stopping2)).reason == "stop2 done"
    assert not (await within(starting)).ok
    assert h.log == ["stop1 began", "stop1 ended", "stop2 began", "stop2 ended"]


# --- a stop cancels starts -----------------------------------------------------------------


async def test_a_stop_cancels_a_running_start_and_runs_only_after_it_unwound(h: Harness) -> None:
    start = h.body("start", blocked=True, slow_unwind=True)
    stop = h.body("stop")
    starting = await h.call("start", start)
    await within(start.began.wait())
    stopping = await h.call("stop", stop)
    await within(start.cancelled.wait())
    assert stop.runs == 0  # the start is still unwinding
    start.unwind.set()
    assert (await within(stopping)).ok
    start_reply = await within(starting)
    assert start_reply.ocf == OCF_ERR_GENERIC
    assert start_reply.reason == f"start of {IP} cancelled by a stop"
    assert h.log == ["start began", "start cancelled", "start unwound", "stop began", "stop ended"]


async def test_a_stop_cancels_a_queued_start_before_its_body_ever_runs(h: Harness) -> None:
    stop1, start, stop2 = h.body("stop1", blocked=True), h.body("start"), h.body("stop2")
    await h.call("stop", stop1)
    starting = await h.call("start", start)
    await within(stop1.began.wait())
    stopping2 = await h.call("stop", stop2)
    start_reply = await within(starting)  # answered at once, while stop1 still runs
    assert start_reply.reason == f"start of {IP} cancelled by a stop"
    assert h.owner.in_flight == "stop"
    assert "stop1 ended" not in h.log
    stop1.gate.set()
    assert (await within(stopping2)).ok
    assert start.runs == 0


async def test_a_caller_cancelled_as_a_stop_cancels_its_start_stays_cancelled(h: Harness) -> None:
    # the caller's own cancellation (shutdown of its connection) is never turned into a reply
    start, stop = h.body("start", blocked=True), h.body("stop")
    starting = await h.call("start", start)
    await within(start.began.wait())
    # cancel the caller after the start's task ended (cancelled) but before the caller ran
    operation_task("start").add_done_callback(lambda _task: starting.cancel())
    stopping = await h.call("stop", stop)
    with pytest.raises(asyncio.CancelledError):
        await within(starting)
    assert (await within(stopping)).ok


# --- deadlines -----------------------------------------------------------------------------


async def test_a_queued_operation_gives_up_at_its_deadline_without_running(h: Harness) -> None:
    stop, start, retry = h.body("stop", blocked=True), h.body("start"), h.body("start-retry")
    stopping = await h.call("stop", stop)
    await within(stop.began.wait())
    starting = await h.call("start", start, SHORT_S)
    # a second caller with time to spare joins the queued start: it gets the start's own reply
    retrying = await h.call("start", retry, LONG_S)
    reply = await within(starting)
    # the caller got its answer while the stop it queued behind still runs
    assert h.owner.in_flight == "stop"
    assert "stop ended" not in h.log
    assert reply.ocf == OCF_ERR_GENERIC
    assert f"start of {IP}" in reply.reason
    own = await within(retrying)
    assert own.ocf == OCF_ERR_GENERIC
    assert own.reason == (f"start of {IP} gave up at its deadline while queued behind stop-{IP}")
    assert "stop ended" not in h.log
    stop.gate.set()
    assert (await within(stopping)).ok
    assert (start.runs, retry.runs) == (0, 0)


async def test_a_body_outrunning_its_deadline_is_cancelled_and_answered(h: Harness) -> None:
    start, retry = h.body("start", blocked=True), h.body("start-retry")
    starting = await h.call("start", start, SHORT_S)
    retrying = await h.call("start", retry, LONG_S)  # reads the operation's own reply
    assert not (await within(starting)).ok
    own = await within(retrying)
    assert own.ocf == OCF_ERR_GENERIC
    assert own.reason == f"deadline exceeded while start of {IP}"
    assert start.cancelled.is_set()
    assert retry.runs == 0


async def test_a_caller_timing_out_gets_an_error_while_the_operation_goes_on(h: Harness) -> None:
    stop, retry = h.body("stop", blocked=True), h.body("stop-retry")
    stopping = await h.call("stop", stop, LONG_S)
    await within(stop.began.wait())
    # a retry with little time left joins the running stop, and runs out of it
    reply = await within(h.owner.run("stop", Deadline.after(SHORT_S), retry))
    assert reply.ocf == OCF_ERR_GENERIC
    assert reply.reason == (
        f"deadline exceeded while waiting for stop of {IP}; "
        "the stop goes on in the daemon until its own deadline"
    )
    assert h.owner.in_flight == "stop"
    assert not stop.cancelled.is_set()
    stop.gate.set()
    assert (await within(stopping)) is stop.reply
    assert retry.runs == 0


# --- a caller that goes away ---------------------------------------------------------------


async def test_a_cancelled_caller_does_not_cancel_its_operation(h: Harness) -> None:
    # defect 3: an orphaned stop must neither die with its caller nor finish behind a later
    # start's back
    stop, start = h.body("stop", blocked=True), h.body("start")
    stopping = await h.call("stop", stop)
    await within(stop.began.wait())
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(stopping)
    starting = await h.call("start", start)
    assert h.owner.in_flight == "stop"
    assert not stop.cancelled.is_set()
    assert start.runs == 0
    stop.gate.set()
    assert (await within(starting)).ok
    assert h.log == ["stop began", "stop ended", "start began", "start ended"]


# --- close ---------------------------------------------------------------------------------


async def test_close_cancels_every_operation_and_waits_for_them(h: Harness) -> None:
    stop = h.body("stop", blocked=True, slow_unwind=True)
    start = h.body("start")
    stopping = await h.call("stop", stop)
    starting = await h.call("start", start)
    await within(stop.began.wait())
    closing = h.spawn(h.owner.close())
    await within(stop.cancelled.wait())
    assert not closing.done()  # close waits until the stop unwound
    stop.unwind.set()
    await within(closing)
    assert h.owner.in_flight is None
    assert stop.log == ["stop began", "stop cancelled", "stop unwound"]
    assert start.runs == 0
    for caller, kind in ((stopping, "stop"), (starting, "start")):
        reply = await within(caller)
        assert reply.ocf == OCF_ERR_GENERIC
        assert reply.reason == f"{kind} of {IP} cancelled by the daemon shutting down"


async def test_close_with_nothing_to_do_returns(h: Harness) -> None:
    await within(h.owner.close())
    assert h.owner.in_flight is None
