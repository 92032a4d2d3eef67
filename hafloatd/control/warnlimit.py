"""A per-peer limit on the control server's warnings, so a client cannot flood the journal.

Every warning a client can cause (an invalid request, a refused peer, a busy server, a handler
failure) goes through ``WarningLimiter.warn`` with the peer's uid. Each uid may write
``burst`` warning lines per window of ``window_s`` seconds (the window starts at its first
warning); past that, its warnings are only counted, in
``hafloatd_control_warnings_suppressed_total{event}``, and once its window is over one line
sums them up::

    event=control_warnings_suppressed peer_uid=0 count=98 window_s=60 events=control_peer_denied:98

``start()`` starts the task that writes those summaries when a peer goes quiet (``run()``);
``close()`` stops it and writes every summary still pending (at shutdown). A peer whose
uid is unknown (no peer credentials) is ``peer_uid=-1``; past ``max_peers`` distinct uids in
flight, the rest share one budget, ``peer_uid=other``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hafloatd.metrics import Metrics

__all__ = ["BURST", "MAX_PEERS", "WINDOW_S", "WarningLimiter"]

log = logging.getLogger("hafloatd.control")

BURST = 10  # warning lines per peer uid per window
WINDOW_S = 60.0
MAX_PEERS = 1024  # uids tracked at once; more share the OTHER budget
_OTHER = -2  # the shared key past MAX_PEERS
_TICKS_PER_WINDOW = 6  # how often run() looks for windows that are over
_CLOSE_TIMEOUT_S = 1.0


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)


class WarningLimiter:
    """At most ``burst`` warnings per peer uid per ``window_s``; see the module docstring."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._burst = burst
        self._window_s = window_s
        self._max_peers = max_peers
        self._clock = clock
        self._windows: dict[int, _Window] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def window_s(self) -> float:
        return self._window_s

    def warn(self, uid: int, event: str, fmt: str = "", *args: object) -> bool:
        """Log ``event=EVENT`` + ``fmt % args`` at WARNING unless ``uid`` is over its budget;
        True when the line was written."""
        if not self.allow(uid, event):
            return False
        log.warning(f"event={event} {fmt}".rstrip(), *args)
        return True

    def allow(self, uid: int, event: str) -> bool:
        """Whether ``uid`` may write one more warning now; a refusal is counted."""
        now = self._clock()
        key = uid if uid in self._windows or len(self._windows) < self._max_peers else _OTHER
        window = self._windows.get(key)
        if window is not None and now - window.started >= self._window_s:
            self._summarise(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(started=now)
        if window.logged < self._burst:
            window.logged += 1
            return True
        window.suppressed[event] += 1
        if self._metrics is not None:
            self._metrics.control_warnings_suppressed_total.labels(event=event).inc()
        return False

    def roll_over(self) -> None:
        """Write the summary of every window that is over, and forget those windows."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now - window.started >= self._window_s:
                self._summarise(key, window)
                del self._windows[key]

    def flush(self) -> None:
        """Write every pending summary now (the windows still running included); forget all."""
        for key, window in list(self._windows.items()):
            self._summarise(key, window)
        self._windows.clear()

    def pending(self) -> int:
        """Warnings suppressed and not yet summed up in a log line."""
        return sum(sum(w.suppressed.values()) for w in self._windows.values())

    def start(self) -> None:
        """Start the task that writes summaries as windows end (``close()`` stops it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="hafloatd-control-warning-summaries"
            )

    async def close(self) -> None:
        """Stop the summary task and write every summary still pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT_S)
        self.flush()

    async def run(self) -> None:
        """Write summaries as windows end, until cancelled (the owner cancels it)."""
        while True:
            await asyncio.sleep(self._window_s / _TICKS_PER_WINDOW)
            self.roll_over()

    def _summarise(self, key: int, window: _Window) -> None:
        count = sum(window.suppressed.values())
        if not count:
            return
        events = ",".join(f"{event}:{n}" for event, n in sorted(window.suppressed.items()))
        log.warning(
            "event=control_warnings_suppressed peer_uid=%s count=%d window_s=%g events=%s",
            "other" if key == _OTHER else str(key),
            count,
            self._window_s,
            events,
        )
        window.suppressed.clear()
