"""A running daemon reloading a hostile configuration file: rejected, the old configuration
kept, and the reload path still alive for the next SIGHUP (it used to die on a traceback).
Besides the hand-written cases, 20 of tests/hostile_configs.py's generated files go to one
running daemon, one SIGHUP each."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from hafloatd.control.client import request
from hafloatd.lab.nodes import DaemonNode
from tests.hostile_configs import generate, sample

IP = "203.0.113.10"
HOSTILE = {
    "deep-nesting": "ips: " + "[" * 5000 + "]" * 5000 + "\n",
    "nul-character": f"ips: [{IP}]\nlogging: \x00\n",
    "400-digit-duration": f"ips: [{IP}]\nhealth:\n  interval: {'9' * 400}\n",
    "int-tag-on-a-word": f"ips: [{IP}]\nhealth:\n  rise: !!int two\n",
}


@pytest.fixture
def node1(node1_configured: DaemonNode) -> DaemonNode:
    return node1_configured


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
async def test_sighup_with_a_hostile_file_is_rejected_and_reload_keeps_working(
    node1: DaemonNode, text: str
) -> None:
    await node1.start()
    assert node1.notify is not None

    node1.config_path.write_text(text, encoding="utf-8")
    await node1.signal(signal.SIGHUP)
    await node1.notify.wait_for("RELOADING=1")
    status_line = await node1.notify.wait_for("READY=1")
    assert "reload rejected" in status_line
    assert "event=reload_rejected" in node1.log()
    assert "Traceback" not in node1.log()
    assert (await node1.agent("start")).rc == 0  # the old configuration still serves

    node1.write_config()  # the good file back: the next reload is applied
    await node1.signal(signal.SIGHUP)
    await node1.notify.wait_for("RELOADING=1")
    status_line = await node1.notify.wait_for("READY=1")
    assert "reload rejected" not in status_line
    assert (await node1.agent("monitor")).rc == 0


GENERATED_RELOADS = 20


async def config_in_force(node: DaemonNode) -> dict[str, Any]:
    """What ``status`` shows of the configuration (what a bad file would have changed)."""
    reply = await request(node.socket_path, {"op": "status"}, 10.0)
    assert reply["ok"] is True, reply
    health = reply["health"]
    return {
        "ips": [(entry["ip"], entry["on_stop"]) for entry in reply["ips"]],
        "api": (reply["api"]["base_url"], reply["api"]["hourly_budget"]),
        "health": {key: health[key] for key in ("url", "interval_s", "timeout_s", "rise", "fall")},
    }


async def test_generated_hostile_files_on_sighup_keep_the_running_config_and_ready_again(
    node1: DaemonNode, tmp_path: Path
) -> None:
    await node1.start()
    assert node1.notify is not None
    before = await config_in_force(node1)
    chosen = sample(generate(tmp_path / "hostile"), GENERATED_RELOADS)
    assert len(chosen) == GENERATED_RELOADS

    for hostile in chosen:
        assert not [m for m in node1.notify.messages if "READY=1" in m]  # none left over
        node1.config_path.write_bytes(hostile.data)
        await node1.signal(signal.SIGHUP)
        await node1.notify.wait_for("RELOADING=1")
        status_line = await node1.notify.wait_for("READY=1")
        assert "reload rejected" in status_line, (hostile.name, status_line)
        assert await config_in_force(node1) == before, hostile.name

    log = node1.log()
    assert log.count("event=reload_rejected") == GENERATED_RELOADS
    assert "Traceback" not in log and "event=reload_failed" not in log
    node1.write_config()  # the good file back: applied, and the daemon serves
    await node1.signal(signal.SIGHUP)
    await node1.notify.wait_for("RELOADING=1")
    assert "reload rejected" not in await node1.notify.wait_for("READY=1")
    assert (await node1.agent("start")).rc == 0
    assert (await node1.agent("monitor")).rc == 0
