"""Last-resort teardown for a process exiting with a cluster still built.

Every ``Cluster`` registers a synchronous cleanup (SIGKILL its nodes' PIDs, delete its
namespaces and bridge) while it is built. It runs from ``atexit``, and SIGTERM/SIGHUP are
turned into ``SystemExit`` so ``finally`` blocks and then ``atexit`` run instead of the
process vanishing with namespaces left behind. Ctrl-C needs nothing here: ``asyncio.run``
cancels the main task on SIGINT, and the harness's ``finally`` blocks tear down.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from types import FrameType

_CLEANUPS: dict[int, Callable[[], None]] = {}
_STATE = {"installed": False}


def register(key: int, cleanup: Callable[[], None]) -> None:
    _CLEANUPS[key] = cleanup
    if _STATE["installed"]:
        return
    _STATE["installed"] = True
    atexit.register(run_all)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _exit_on_signal)


def unregister(key: int) -> None:
    _CLEANUPS.pop(key, None)


def run_all() -> None:
    for key, cleanup in list(_CLEANUPS.items()):
        with contextlib.suppress(Exception):
            cleanup()
        _CLEANUPS.pop(key, None)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def hard_teardown(pids: Sequence[int | None], netns: Sequence[str], links: Sequence[str]) -> None:
    """SIGKILL ``pids``, delete the namespaces and the links (the bridge, the host ends of
    the veths: they go even while something still keeps a namespace alive)."""
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name in netns:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    for link in links:
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
