"""Free TCP ports on 127.0.0.1 for lab processes that take a port number in their
configuration (a daemon's ``metrics.listen``, nginx's ``listen``) and bind it later.

Between the check here and that bind the port could be taken. Inside the kernel's ephemeral
range (``net.ipv4.ip_local_port_range``) anything may take it: every ``bind(0)`` and every
outgoing connection of every process draws from that range (a simulator started meanwhile
did, and a daemon's start failed with "address already in use"). So the port is chosen below
that range, where only an explicit bind can land: another caller of this function, picking
the same one of thousands in the same instant.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000  # above the well-known and most registered service ports
ATTEMPTS = 200


def ephemeral_floor() -> int:
    """The lowest port the kernel hands out on its own (32768 when it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 nothing is bound to now, below the ephemeral range when one is
    found there (else one the kernel picks)."""
    top = ephemeral_floor()
    # SystemRandom: a test framework may seed the random module alike in every process.
    choose = random.SystemRandom().randrange
    for _ in range(ATTEMPTS if top > LOWEST else 0):
        port = choose(LOWEST, top)
        if _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
