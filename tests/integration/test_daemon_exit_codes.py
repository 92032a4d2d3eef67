"""How ``hafloatd run`` ends, seen from outside as systemd sees it: the exit code and sd_notify.

Restart=on-failure restarts the daemon only on a non-zero exit, so a crashed essential loop
must exit 70 (EX_SOFTWARE), never 0; a reload must always end in READY=1 (systemd waits for
it); a SIGTERM during startup must not announce READY=1 at all.

Every real fault the loops meet (timeouts, resets, 5xx, garbage) is handled, so a crash is
a bug: the daemon is started with a test-only ``sitecustomize`` (written below, put first on
its PYTHONPATH) that plants one in a dependency of the loop under test, armed by a file.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hafloatd.lab.nodes import DaemonNode, NotifySocket

if TYPE_CHECKING:
    from hafloatd.lab.sim import Simulator

IP = "203.0.113.10"
OTHER_IP = "203.0.113.30"
EXIT_TIMEOUT_S = 20.0

# Loaded by the daemon's interpreter at startup. HAFLOATD_TEST_FAULT names where the bug is;
# it fires once HAFLOATD_TEST_FAULT_ARMED names an existing file (the reload one: always).
SITECUSTOMIZE = """
import os

FAULT = os.environ.get("HAFLOATD_TEST_FAULT", "")
ARMED = os.environ.get("HAFLOATD_TEST_FAULT_ARMED", "/nonexistent")


def _bug(where):
    if os.path.exists(ARMED):
        raise RuntimeError(f"planted bug in {where}")


if FAULT == "metadata-poll":
    from hafloatd.metadata import MetadataClient

    _reserved_ip = MetadataClient.reserved_ip

    async def reserved_ip(self, deadline):
        _bug("MetadataClient.reserved_ip")
        return await _reserved_ip(self, deadline)

    MetadataClient.reserved_ip = reserved_ip
elif FAULT == "holder-check":
    from hafloatd.doapi import DoApiClient

    _get_reserved_ip = DoApiClient.get_reserved_ip

    async def get_reserved_ip(self, ip, deadline):
        _bug("DoApiClient.get_reserved_ip")
        return await _get_reserved_ip(self, ip, deadline)

    DoApiClient.get_reserved_ip = get_reserved_ip
elif FAULT == "probe":
    import hafloatd.probe

    _next_slot = hafloatd.probe._next_slot

    def next_slot(previous_start, interval, now):
        _bug("the probe's scheduling")
        return _next_slot(previous_start, interval, now)

    hafloatd.probe._next_slot = next_slot
elif FAULT == "reload":
    from hafloatd.probe import HealthProbe

    def reconfigure(self, config):
        raise RuntimeError("planted bug in HealthProbe.reconfigure")

    HealthProbe.reconfigure = reconfigure
"""


@pytest.fixture
def node1(node1_configured: DaemonNode) -> DaemonNode:
    return node1_configured


def plant_bug(node: DaemonNode, tmp_path: Path, fault: str) -> Path:
    """Start ``node`` with the bug named ``fault``; returns the file that arms it."""
    hooks = tmp_path / "fault-hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    armed = tmp_path / "fault-armed"
    node.env["PYTHONPATH"] = f"{hooks}:{node.env['PYTHONPATH']}"
    node.env["HAFLOATD_TEST_FAULT"] = fault
    node.env["HAFLOATD_TEST_FAULT_ARMED"] = str(armed)
    return armed


async def wait_exit(node: DaemonNode, timeout: float = EXIT_TIMEOUT_S) -> int:
    assert node.proc is not None
    try:
        return await asyncio.wait_for(node.proc.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"{node.name} still running after {timeout}s: {node.log()}") from None


def received(notify: NotifySocket) -> list[str]:
    """Every sd_notify message the daemon sent so far (the socket is read to the end)."""
    notify.read_pending()
    return list(notify.messages)


@pytest.mark.parametrize("loop", ["metadata-poll", "holder-check", "probe"])
async def test_a_crashed_essential_loop_exits_70_so_systemd_restarts_it(
    node1: DaemonNode, tmp_path: Path, loop: str
) -> None:
    armed = plant_bug(node1, tmp_path, loop)
    node1.config["api"] = {**node1.config["api"], "holder_check_interval": "200ms"}
    await node1.start()
    assert (await node1.agent("monitor")).rc == 7  # serving, IP not started here

    armed.touch()
    rc = await wait_exit(node1)

    assert rc == 70, node1.log()  # EX_SOFTWARE: Restart=on-failure restarts it
    assert "planted bug" in node1.log()
    assert node1.notify is not None
    assert any("STOPPING=1" in message for message in received(node1.notify))


async def test_a_reload_failing_for_a_bug_still_sends_ready_and_keeps_the_old_config(
    node1: DaemonNode, tmp_path: Path
) -> None:
    plant_bug(node1, tmp_path, "reload")
    await node1.start()
    assert node1.notify is not None

    new = dict(node1.config)
    new["health"] = {**new["health"], "interval": "150ms"}  # reaches the planted bug
    new["ips"] = [{"address": IP}, {"address": OTHER_IP}]
    node1.write_config(new)
    await node1.signal(signal.SIGHUP)
    await node1.notify.wait_for("RELOADING=1")
    status_line = await node1.notify.wait_for("READY=1")

    assert "reload failed" in status_line
    assert "planted bug" in node1.log()
    assert (await node1.agent("validate-all", ip=OTHER_IP)).rc == 5  # the old config: not added
    assert (await node1.agent("start")).rc == 0  # and it still serves
    assert node1.proc is not None and node1.proc.returncode is None


async def test_sigterm_during_startup_exits_0_without_ready_or_serving(
    simulator: Simulator, node1: DaemonNode
) -> None:
    await node1.start()  # once, so the droplet identity is cached: startup can get further
    assert await node1.stop() == 0
    slow = simulator.faults.metadata_slow(delay_s=5.0, droplet_id=1001)
    log_before = len(node1.log())

    await node1.start(wait_ready=False)
    async with asyncio.timeout(EXIT_TIMEOUT_S):
        while slow.hits == 0:  # startup is now waiting for the metadata service
            await asyncio.sleep(0.02)
    await node1.signal(signal.SIGTERM)
    rc = await wait_exit(node1)

    log = node1.log()[log_before:]
    assert rc == 0, log
    assert node1.notify is not None
    assert not [m for m in received(node1.notify) if "READY=1" in m]
    assert "event=control_listening" not in log  # never served
