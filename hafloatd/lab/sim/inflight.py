"""The request handlers a simulated server is still running, so ``stop()`` can end them all.

aiohttp keeps running a handler whose client hung up (``handler_cancellation`` is off, and must
stay off: a POST held by an injected latency still takes effect after its client gave up — a
POST of unknown fate), and forgets it: ``AppRunner.cleanup()`` only ends handlers of connections
still open. Servers register each handler here and cancel what is left when they stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class InflightHandlers:
    """The set of handler tasks running now."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    @contextmanager
    def track(self) -> Iterator[None]:
        """Register the current task for the duration of the block."""
        task = asyncio.current_task()
        if task is None:  # not inside a task: nothing to own
            yield
            return
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def cancel_all(self, timeout: float) -> None:
        """Cancel every handler still running and wait up to ``timeout`` for them to unwind."""
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
