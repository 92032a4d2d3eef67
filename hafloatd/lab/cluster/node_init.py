"""PID 1 of one lab node: private mounts, then reap children until killed.

Run by the harness as ``unshare --mount --uts --ipc --pid --fork --kill-child --mount-proc
python3 -I node_init.py HOSTNAME SRC:DST...`` inside the node's network namespace. It gives
the node its own host name, ``/run`` and ``/dev/shm`` (tmpfs: gone when the node "reboots",
as on a droplet) and bind-mounts each per-node directory SRC over DST (``/etc/corosync``,
``/var/lib/pacemaker``...), prints ``ready`` and then does PID 1's one duty: reaping every
child, including orphans adopted from services the harness started with ``nsenter``.

SIGKILL of this process is a node crash: the kernel kills every process of the namespace.
As PID 1 it ignores every other signal. Standard library only (it runs as a plain script).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def main(argv: list[str]) -> int:
    hostname, binds = argv[0], argv[1:]
    socket.sethostname(hostname)
    _mount("--make-rprivate", "/")
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")
    _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm")  # private libqb IPC files
    for pair in binds:
        source, target = pair.split(":", 1)
        _mount("--bind", source, target)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    print("ready", flush=True)
    os.close(1)
    while True:
        signal.sigtimedwait({signal.SIGCHLD}, 1.0)
        _reap()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
