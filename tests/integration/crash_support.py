"""Helpers for the crash-consistency test: windows of a running daemon made observable.

``RenameDelay`` attaches ``strace`` to a running daemon and delays its ``rename(2)`` calls,
either on entry (the role file's temporary file is written and waits to be renamed over the
role file) or on exit (the role file is replaced; the daemon has not gone on yet). The daemon
is the real process, unmodified; strace is what a person would use to hold it there. Role
files are the only thing a running daemon renames (the control socket and the identity cache
are renamed at startup, before ``attach``).

Everything else is observed from outside: the role file and its temporary files in the state
directory, and the simulator's recorded requests and faults.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from hafloatd.lab.sim import Simulator

STRACE = shutil.which("strace")
RENAME_SYSCALLS = "rename,renameat,renameat2"


class RenameDelay:
    """``strace -f -p PID`` delaying every rename(2) of the daemon by ``delay_s``."""

    def __init__(self, pid: int, phase: Literal["enter", "exit"], delay_s: float) -> None:
        self.pid = pid
        self.phase = phase
        self.delay_us = int(delay_s * 1_000_000)
        self.proc: asyncio.subprocess.Process | None = None

    async def attach(self, timeout: float = 5.0) -> None:
        if STRACE is None:
            raise RuntimeError("strace is not installed (scripts/setup.sh installs it)")
        self.proc = await asyncio.create_subprocess_exec(
            STRACE, "-f", "-p", str(self.pid), "-o", os.devnull,
            "-e", f"trace={RENAME_SYSCALLS}",
            "-e", f"inject={RENAME_SYSCALLS}:delay_{self.phase}={self.delay_us}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stderr.readline()
                if not line:
                    raise RuntimeError(f"strace exited {await self.proc.wait()} before attaching")
                if b"attached" in line:
                    return

    async def close(self, timeout: float = 5.0) -> None:
        """Detach (SIGINT) unless the tracee is gone already; wait for strace, by its PID."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 0.5)
            except TimeoutError:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def role_path(state_dir: Path, ip: str) -> Path:
    return state_dir / f"role-{ip}.json"


def persisted_role(state_dir: Path, ip: str) -> str:
    """The role on disk; a missing file means stopped (``RoleStore.load``)."""
    try:
        return str(json.loads(role_path(state_dir, ip).read_bytes())["role"])
    except FileNotFoundError:
        return "stopped"


def role_temp_files(state_dir: Path, ip: str) -> list[str]:
    """``fsutil.write_atomically``'s temporary files for the role file of ``ip``."""
    prefix = f".role-{ip}.json."
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(".tmp"))


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.002,
) -> float:
    """Poll ``condition`` until true; the monotonic time it became true. AssertionError
    naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def settle(sim: Simulator, timeout: float = 10.0) -> None:
    """Every API request received has been answered (a POST held by a latency fault has taken
    effect) and no action is pending."""
    await wait_until(lambda: sim.requests_in_flight == 0, timeout, "held requests to end", 0.01)
    await sim.wait_idle(timeout)
