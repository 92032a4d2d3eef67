"""A running daemon reloading a hostile configuration file: rejected, the old configuration
kept, and the reload path still alive for the next SIGHUP (it used to die on a traceback)."""

from __future__ import annotations

import signal

import pytest

from hafloatd.lab.nodes import DaemonNode

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
