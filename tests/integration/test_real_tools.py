"""Real Debian tools against the real daemon: resource-agents' ocf-tester and promtool."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hafloatd.lab.nodes import DaemonNode, make_node
from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
INSTALLED_AGENT = Path("/usr/lib/ocf/resource.d/hafloatd/hafloat")
DEFAULT_SOCKET = Path("/run/hafloatd/control.sock")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installs the agent under /usr/lib/ocf")


async def run(*argv: str, timeout: float = 120) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture
async def default_socket_node(simulator: Simulator, tmp_path: Path) -> AsyncIterator[DaemonNode]:
    """A daemon on the production socket path, as ocf-tester only passes ``ip``."""
    if DEFAULT_SOCKET.exists():
        pytest.skip(f"{DEFAULT_SOCKET} exists: a hafloatd already runs on this machine")
    node = make_node(
        simulator,
        "node1",
        1001,
        tmp_path,
        extra={"control": {"socket_path": str(DEFAULT_SOCKET), "allowed_users": ["root"]}},
    )
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
        DEFAULT_SOCKET.unlink(missing_ok=True)


@needs_root
@pytest.mark.skipif(shutil.which("ocf-tester") is None, reason="resource-agents not installed")
async def test_ocf_tester_passes_with_daemon_running(
    simulator: Simulator, default_socket_node: DaemonNode
) -> None:
    rc, out = await run(sys.executable, "-m", "hafloatd.cli", "install-agent")
    assert rc == 0, out
    assert INSTALLED_AGENT.stat().st_mode & 0o005 == 0o005  # nobody runs meta-data
    rc, out = await run("ocf-tester", "-n", "FloatIP", "-o", f"ip={IP}", str(INSTALLED_AGENT))
    assert rc == 0, out
    assert "passed all tests" in out
    assert simulator.holder(IP) == 1001


@pytest.mark.skipif(shutil.which("promtool") is None, reason="prometheus (promtool) not installed")
async def test_promtool_finds_nothing_on_scrape_after_failover(
    simulator: Simulator, tmp_path: Path
) -> None:
    node1 = make_node(simulator, "node1", 1001, tmp_path)
    node2 = make_node(simulator, "node2", 1002, tmp_path)
    await node1.start()
    await node2.start()
    try:
        assert (await node1.agent("start")).rc == 0
        assert (await node1.agent("stop")).rc == 0
        assert (await node2.agent("start")).rc == 0
        async with aiohttp.ClientSession() as session, session.get(node2.metrics_url) as resp:
            scrape = await resp.text()
    finally:
        await node1.stop()
        await node2.stop()
    assert (
        'hafloatd_failover_phase_seconds_count{ip="203.0.113.10",phase="holder_confirmed"} 1.0'
        in scrape
    )
    assert "test-token" not in scrape
    proc = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(scrape.encode()), 60)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() == ""
