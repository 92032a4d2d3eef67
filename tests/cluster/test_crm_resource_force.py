"""Pacemaker's own executor runs the agent: ``crm_resource --force-*`` with ``CIB_file``.

No cluster is running: crm_resource reads the resource from a CIB file and executes
``ocf:hafloatd:hafloat`` through libcrmservice, with the environment Pacemaker builds (OCF_*,
CRM_meta_timeout...), exactly as pacemaker-execd would. The real daemon answers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from hafloatd.lab.nodes import make_node
from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
AGENT = Path("/usr/lib/ocf/resource.d/hafloatd/hafloat")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs the agent under /usr/lib/ocf"),
    pytest.mark.skipif(shutil.which("crm_resource") is None, reason="pacemaker-cli-utils missing"),
]


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def make_cib(path: Path, socket_path: str) -> dict[str, str]:
    rc, empty = await run("cibadmin", "--empty")
    assert rc == 0, empty
    path.write_text(empty)
    env = {"CIB_file": str(path)}
    primitive = (
        '<primitive id="FloatIP" class="ocf" provider="hafloatd" type="hafloat">'
        '<instance_attributes id="FloatIP-ia">'
        f'<nvpair id="FloatIP-ip" name="ip" value="{IP}"/>'
        f'<nvpair id="FloatIP-socket" name="socket" value="{socket_path}"/>'
        "</instance_attributes>"
        '<operations><op id="FloatIP-start" name="start" interval="0" timeout="20s"/></operations>'
        "</primitive>"
    )
    rc, out = await run("cibadmin", "-C", "-o", "resources", "--xml-text", primitive, env=env)
    assert rc == 0, out
    return env


async def test_pacemakers_executor_drives_start_check_stop(
    simulator: Simulator, tmp_path: Path
) -> None:
    rc, out = await run(sys.executable, "-m", "hafloatd.cli", "install-agent")
    assert rc == 0, out
    node = make_node(simulator, "node1", 1001, tmp_path)
    await node.start()
    try:
        env = await make_cib(tmp_path / "cib.xml", node.socket_path)

        async def force(action: str) -> tuple[int, str]:
            return await run("crm_resource", f"--force-{action}", "-r", "FloatIP", env=env)

        rc, out = await force("check")
        assert rc == 7, out  # probe of a stopped resource: not running
        rc, out = await force("start")
        assert rc == 0, out
        assert simulator.holder(IP) == 1001
        rc, out = await force("check")
        assert rc == 0, out
        rc, out = await force("stop")
        assert rc == 0, out
        rc, out = await force("check")
        assert rc == 7, out
        assert len(simulator.posts(IP)) == 1
    finally:
        await node.stop()
