"""``hafloatd lab`` on a real cluster, run as a process: the README's first command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hafloatd.lab.cluster import check_capabilities
from hafloatd.lab.cluster.procs import run
from tests.cluster.conftest import free_network, require_cluster, running_under_ci

pytestmark = [pytest.mark.cluster]


async def _lab_argv(prefix: str) -> list[str]:
    require_cluster(await check_capabilities(), running_under_ci())
    network = await free_network(prefix)
    return [sys.executable, "-m", "hafloatd.cli", "lab",
            "--net-prefix", network.prefix, "--subnet", network.subnet]  # fmt: skip


async def _leftovers(prefix: str) -> list[str]:
    netns = (await run(["ip", "netns", "list"])).stdout
    links = (await run(["ip", "-br", "link"])).stdout
    found = [line for line in (netns + links).splitlines() if line.startswith(f"{prefix}-")]
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdigit() and b"hafloatd-cluster-" in cmdline and b"pytest" not in cmdline:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"pid {pid}: {shown}")
    return found


async def test_the_lab_drills_a_real_cluster_and_reports_each_partys_share(
    tmp_path: Path,
) -> None:
    prefix = f"hfl{os.getpid() % 10000}"
    argv = await _lab_argv(prefix)
    json_path, svg_path = tmp_path / "lab.json", tmp_path / "lab.svg"
    proc = await asyncio.create_subprocess_exec(
        *argv, "--drills", "node-crash,nginx-stopped,graceful-move", "--notify-failures",
        "--health-interval", "1", "--health-fall", "2",
        "--json", str(json_path), "--svg", str(svg_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
    except TimeoutError:
        proc.send_signal(signal.SIGINT)
        await proc.wait()
        raise
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.splitlines()[0].startswith(
        "hafloatd lab: a real two-node Corosync + Pacemaker cluster (Corosync token 1000 ms"
    )
    assert "$ pcs resource describe ocf:hafloatd:hafloat" in text
    assert "drill" in text and "hafloatd" in text  # the summary table
    data = json.loads(json_path.read_text())
    assert [d["drill"] for d in data["drills"]] == ["node-crash", "nginx-stopped", "graceful-move"]
    for drill in data["drills"]:
        assert drill["ok"] and drill["moved"], drill["problems"]
        assert drill["assign_posts"] == 1
        assert drill["fail_counts"][drill["to"]] == 0
        assert all(v is not None for v in drill["phases_s"].values()), drill["phases_s"]
        kinds = [m["label"] for m in drill["marks"]]
        assert kinds[0] == "fault" and "assign POST arrives" in kinds
        answered = {r["answered_by"] for r in drill["requests"]}
        assert {drill["from"], drill["to"]} <= answered
    crash = data["drills"][0]
    assert any("Corosync" in m["label"] for m in crash["marks"])
    nginx = data["drills"][1]
    assert any("asyncmon" in m["label"] for m in nginx["marks"]), "notified, not monitored"
    svg = ET.fromstring(svg_path.read_text())
    assert svg.tag.endswith("svg")
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) > 50  # request ticks
    assert await _leftovers(prefix) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_interrupting_the_lab_tears_everything_down(signum: int) -> None:
    prefix = f"hfi{os.getpid() % 10000}"
    argv = await _lab_argv(prefix)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    seen = []
    try:
        async with asyncio.timeout(120):
            while line := (await proc.stdout.readline()).decode():
                seen.append(line)
                if "cluster up in" in line:
                    break
        assert any("cluster up in" in line for line in seen), "".join(seen)
        proc.send_signal(signum)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode != 0, "".join(seen) + rest.decode()
    assert await _leftovers(prefix) == [], "".join(seen) + rest.decode()
