"""Fixtures for the daemon-as-a-process tests: node1 with its web server, the agent runner."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hafloatd.lab.nodes import (
    DaemonNode,
    StandInWeb,
    make_node,
    stand_in_web,
)
from hafloatd.lab.sim import Simulator


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A short directory (``sun_path`` is 107 bytes) that ``nobody`` may traverse: pytest's
    ``tmp_path`` is private to root. ``/tmp/hft-XXXX``, mode 0711."""
    directory = Path(tempfile.mkdtemp(prefix="hft-", dir="/tmp"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def web1() -> AsyncIterator[StandInWeb]:
    async with stand_in_web("node1") as server:
        yield server


@pytest.fixture
async def node1_configured(
    simulator: Simulator, tmp_path: Path, web1: StandInWeb
) -> AsyncIterator[DaemonNode]:
    """Droplet 1001's daemon, configured (health probe on ``web1``) but not started."""
    simulator.set_backend(1001, web1.backend)
    node = make_node(simulator, "node1", 1001, tmp_path, health_url=web1.url)
    yield node
    await node.stop()
