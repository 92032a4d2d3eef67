"""The lab's free ports: chosen where only an explicit bind can take them before their user
binds them (below the kernel's ephemeral range), never one in use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hafloatd.lab import ports
from hafloatd.lab.nodes import free_port


def test_a_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    floor = ports.ephemeral_floor()
    for _ in range(50):
        port = free_port()
        assert ports.LOWEST <= port < floor
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the ephemeral range there is room for one port only, and it is bound: every draw
    finds it taken, and the port comes from the kernel instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        fake = tmp_path / "ip_local_port_range"
        fake.write_text(f"{taken + 1} 65000\n")
        monkeypatch.setattr(ports, "EPHEMERAL_RANGE", fake)
        monkeypatch.setattr(ports, "LOWEST", taken)  # the range below is [taken] alone
        assert free_port() != taken
