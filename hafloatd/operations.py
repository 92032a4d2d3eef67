"""One owner per reserved IP for its operations: an operation belongs to itself, not its caller.

Each start or stop runs as its own task, owned here until it ends. Its caller (a control
request) only *waits* for it, bounded by the caller's own deadline, queueing included; a caller
that goes away (socket timeout, shutdown of the connection) leaves the operation running to its
own deadline, still serialised with the next one, so it can never finish behind a later
operation's back. The rules:

* operations run one at a time, in arrival order;
* a request identical to the newest queued or running operation joins it (a Pacemaker retry);
* a stop cancels every queued or running start, and its body runs only once they unwound;
* an operation still queued at its deadline gives up without running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hafloatd.control.protocol import ControlReply
from hafloatd.deadline import Deadline
from hafloatd.errors import OCF_ERR_GENERIC, DeadlineExceeded

log = logging.getLogger("hafloatd.operations")

Body = Callable[[], Awaitable[ControlReply]]


@dataclass
class _Operation:
    kind: str
    task: asyncio.Task[ControlReply]


class OperationOwner:
    """Runs one IP's operations as owned tasks, one at a time."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self._operations: list[_Operation] = []
        self._closing = False

    @property
    def in_flight(self) -> str | None:
        """The kind of the running operation, if any."""
        return self._operations[0].kind if self._operations else None

    async def run(self, kind: str, deadline: Deadline, body: Body) -> ControlReply:
        """Run (or join) ``kind`` and wait for its reply until ``deadline``."""
        newest = self._operations[-1] if self._operations else None
        if newest is not None and newest.kind == kind and not newest.task.done():
            task = newest.task
        else:
            task = self._enqueue(kind, deadline, body)
        return await self._wait(task, kind, deadline)

    async def close(self) -> None:
        """Cancel every operation (daemon shutdown) and wait until they unwound."""
        self._closing = True
        tasks = [operation.task for operation in self._operations]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _enqueue(self, kind: str, deadline: Deadline, body: Body) -> asyncio.Task[ControlReply]:
        if kind == "stop":
            for operation in self._operations:
                if operation.kind == "start" and not operation.task.done():
                    log.info("event=operation_cancelled ip=%s op=start by=stop", self.subject)
                    operation.task.cancel()
        before = [operation.task for operation in self._operations]
        task = asyncio.get_running_loop().create_task(
            self._run_after(before, kind, deadline, body), name=f"{kind}-{self.subject}"
        )
        operation = _Operation(kind, task)
        self._operations.append(operation)
        task.add_done_callback(lambda _task: self._operations.remove(operation))
        return task

    async def _run_after(
        self,
        before: list[asyncio.Task[ControlReply]],
        kind: str,
        deadline: Deadline,
        body: Body,
    ) -> ControlReply:
        if before:
            _done, waiting = await asyncio.wait(before, timeout=deadline.remaining())
            if waiting:
                running = ", ".join(sorted({task.get_name() for task in waiting}))
                return ControlReply(
                    OCF_ERR_GENERIC,
                    f"{kind} of {self.subject} gave up at its deadline while queued behind "
                    f"{running}",
                )
        try:
            return await deadline.run(body(), f"{kind} of {self.subject}")
        except DeadlineExceeded as exc:
            return ControlReply(OCF_ERR_GENERIC, str(exc))

    async def _wait(
        self, task: asyncio.Task[ControlReply], kind: str, deadline: Deadline
    ) -> ControlReply:
        try:
            return await deadline.run(asyncio.shield(task), f"waiting for {kind} of {self.subject}")
        except DeadlineExceeded as exc:
            return ControlReply(
                OCF_ERR_GENERIC, f"{exc}; the {kind} goes on in the daemon until its own deadline"
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or current.cancelling() == 0):
                by = "the daemon shutting down" if self._closing else "a stop"
                return ControlReply(OCF_ERR_GENERIC, f"{kind} of {self.subject} cancelled by {by}")
            raise
