"""`hafloatd lab --agent-only`, the lab where no cluster can run, as a process end to end.
(The lab on a real cluster: tests/cluster/test_lab.py.)"""

from __future__ import annotations

import asyncio
import json
import sys


async def test_lab_drill_fails_over_both_ways_with_one_post_each() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hafloatd.cli", "lab", "--agent-only", "--rounds", "2",
        "--action-delay", "0.2", "--json", "-",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert text.startswith("hafloatd lab: agent-only drill, NO Pacemaker cluster (--agent-only)")
    assert "Pacemaker is NOT involved" in text
    results = json.loads(text[text.index("\n[") + 1 :])
    assert [(r["from"], r["to"]) for r in results] == [("node1", "node2"), ("node2", "node1")]
    for result in results:
        assert result["ok"]
        assert result["posts"] == 1
        ms = result["ms_after_stop_command"]
        assert ms["post_sent"] < ms["api_accepted"] <= ms["holder_confirmed"] <= ms["start_exit"]
        assert result["downtime_ms"] < 2000
