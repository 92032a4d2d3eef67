"""A 25 ms-each-way link between two network namespaces the benchmark makes and deletes.

This kernel has no netem: ``bench/tools/delaylink`` forwards every packet between two TUN
devices after a fixed delay (measured lateness ~0.03 ms). The client side (``c``: the
daemon, the agents, a local metadata service) reaches the server side (``s``: the simulated
API) at 10.99.250.2 only through that link. Nothing leaves the two namespaces.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from common import REPO, BenchError, Procs

DELAYLINK = REPO / "bench" / "tools" / "delaylink"


@dataclass(frozen=True)
class Link:
    client_ns: str
    server_ns: str
    client_addr: str
    server_addr: str
    delay_ms: float


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@contextlib.contextmanager
def delayed_link(procs: Procs, delay_ms: float = 25.0, prefix: str = "hfb") -> Iterator[Link]:
    link = Link(f"{prefix}-c", f"{prefix}-s", "10.99.250.1", "10.99.250.2", delay_ms)
    existing = _ip("netns", "list").stdout.split()
    for ns in (link.client_ns, link.server_ns):
        if ns in existing:
            raise BenchError(
                f"network namespace {ns} already exists (an earlier run?): ip netns del {ns}"
            )
    created: list[str] = []
    proc = None
    try:
        for ns, tun, mine, peer in (
            (link.client_ns, "tc0", link.client_addr, link.server_addr),
            (link.server_ns, "ts0", link.server_addr, link.client_addr),
        ):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "tuntap", "add", "dev", tun, "mode", "tun")
            _ip("-n", ns, "addr", "add", mine, "peer", peer, "dev", tun)
            _ip("-n", ns, "link", "set", tun, "up")
        proc = procs.start(
            [
                sys.executable,
                str(DELAYLINK),
                link.client_ns,
                "tc0",
                link.server_ns,
                "ts0",
                f"{delay_ms:g}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode(errors="replace")
        if "delaylink up" not in line:
            raise BenchError(f"delaylink did not start: {line.strip()}")
        yield link
    finally:
        if proc is not None:
            procs.stop(proc)
        for ns in created:
            _ip("netns", "del", ns, check=False)
