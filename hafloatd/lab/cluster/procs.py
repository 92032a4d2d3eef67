"""Processes for the cluster harness: bounded commands, long-lived services, PID bookkeeping.

Every wait is asynchronous (the in-process simulator keeps answering while a command runs),
every command has a timeout after which it is killed, and every long-lived process is known
by its PID so it can be stopped by PID. ``/proc`` reads go through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Corosync, Pacemaker and everything they run inherit this, and nothing else: agents inherit
# pacemakerd's environment, so a stray variable from the caller would leak into every agent.
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CLEAN_ENV: Mapping[str, str] = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}


class ClusterError(Exception):
    """The cluster lab could not do what was asked; the message says what and where."""


class CommandError(ClusterError):
    """A command exited non-zero or timed out; carries its output."""

    def __init__(self, argv: Sequence[str], rc: int | None, output: str) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.output = output
        what = "timed out" if rc is None else f"exited {rc}"
        tail = " ".join(output.strip().splitlines()[-3:])[:400]
        super().__init__(f"`{' '.join(argv)}` {what}: {tail}")


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str


async def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    stdin: bytes | None = None,
) -> Completed:
    """Run ``argv`` to completion (killed after ``timeout``); CommandError when ``check``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else dict(CLEAN_ENV),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        await kill_and_reap(proc)
        raise CommandError(argv, None, f"no exit within {timeout:g}s") from None
    except BaseException:
        await kill_and_reap(proc)
        raise
    assert proc.returncode is not None
    done = Completed(
        list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )
    if check and done.rc != 0:
        raise CommandError(argv, done.rc, done.stderr + done.stdout)
    return done


async def kill_and_reap(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """SIGKILL ``proc`` (by its PID) unless it already exited, and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(p) for p in text.split())
    except (FileNotFoundError, ProcessLookupError):
        return []
    return found


async def children(pid: int) -> list[int]:
    """Host PIDs of the direct children of ``pid`` (empty when it is gone)."""
    return await asyncio.to_thread(_children, pid)


async def wait_child(pid: int, timeout: float = 10.0) -> int:
    """The first child of ``pid`` (e.g. the process ``nsenter``/``unshare`` forked)."""
    async with asyncio.timeout(timeout):
        while True:
            kids = await children(pid)
            if kids:
                return kids[0]
            if not await alive(pid):
                raise ClusterError(f"process {pid} exited before it started its child")
            await asyncio.sleep(0.01)


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    state = await asyncio.to_thread(_state, pid)
    return state is not None and state != "Z"


async def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` has exited (a zombie counts as gone); False on timeout."""
    try:
        async with asyncio.timeout(timeout):
            while await alive(pid):  # noqa: ASYNC110 - polling /proc, nothing to await
                await asyncio.sleep(0.02)
    except TimeoutError:
        return False
    return True


def send_signal(pid: int, signum: int = signal.SIGKILL) -> bool:
    """Signal ``pid``; False when it no longer exists."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def pid_namespace(pid: int) -> str | None:
    """The ``pid:[inode]`` namespace id of ``pid`` (None when it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def pids_in_namespace(namespace: str) -> list[int]:
    """Every live PID whose pid namespace is ``namespace`` (a leak check after teardown)."""
    found = []
    for entry in os.listdir("/proc"):
        if (
            entry.isdigit()
            and pid_namespace(int(entry)) == namespace
            and _state(int(entry)) not in (None, "Z")
        ):
            found.append(int(entry))
    return found


async def wait_namespaces_empty(namespaces: list[str], timeout: float = 20.0) -> list[str]:
    """What is still in the given pid namespaces after ``timeout`` (a leak); empty: none."""
    stray: list[int] = []
    for _ in range(int(timeout / 0.05)):
        stray = []
        for namespace in namespaces:
            stray += await asyncio.to_thread(pids_in_namespace, namespace)
        if not stray:
            return []
        await asyncio.sleep(0.05)
    return [f"pid {pid} still in a node's pid namespace" for pid in stray]
