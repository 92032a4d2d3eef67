"""The unit's lifecycle under systemd 252: the OCF agent, the watchdog, reload, restarts, exit 78.

A daemon restart changes nothing Pacemaker can see: after ``systemctl restart``, ``kill -9``
and a watchdog kill, monitor still answers 0 and no assign was POSTed.
"""

from __future__ import annotations

import time

import pytest

from tests.systemd.service import (
    BAD_CONFIG,
    DROPLET_ID,
    IP,
    RESTART_SEC,
    SECOND_IP,
    TOKEN_FILE,
    UNIT,
    WATCHDOG_SEC,
    Installed,
    config_yaml,
    started,
    wait_for,
)

OCF_SUCCESS, OCF_NOT_RUNNING = 0, 7
WATCHDOG_WINDOW_S = 6.0  # pings come every WatchdogSec/2 = 5 s
REJECTED = "reload rejected: kept the old config"


def test_ocf_agent_as_root_drives_start_monitor_stop(unit: Installed) -> None:
    assert unit.ocf("stop")[0] == OCF_SUCCESS
    unit.move_ip(1002)
    posts = unit.assigns()
    assert unit.ocf("monitor") == (OCF_NOT_RUNNING, "")
    rc, out = unit.ocf("start")
    assert rc == OCF_SUCCESS, out
    assert unit.holder() == DROPLET_ID
    assert unit.assigns() == posts + 1
    assert unit.ocf("monitor") == (OCF_SUCCESS, "")
    assert unit.ocf("stop") == (OCF_SUCCESS, "")
    assert unit.ocf("monitor") == (OCF_NOT_RUNNING, "")
    assert unit.assigns() == posts + 1, "stop (on_stop: release) made an API call"


def test_watchdog_is_fed(unit: Installed) -> None:
    props = unit.props("WatchdogUSec", "MainPID", "NRestarts", "WatchdogTimestampMonotonic")
    assert props["WatchdogUSec"] == f"{WATCHDOG_SEC:.0f}s"
    mark = unit.journal_cursor()
    before = int(props["WatchdogTimestampMonotonic"])
    after = wait_for(
        lambda: (t := int(unit.prop("WatchdogTimestampMonotonic"))) > before and t,
        WATCHDOG_WINDOW_S,
        "a WATCHDOG=1 ping (WatchdogTimestamp to advance)",
    )
    assert (after - before) / 1e6 < WATCHDOG_SEC
    assert unit.props("MainPID", "NRestarts") == {
        "MainPID": props["MainPID"],
        "NRestarts": props["NRestarts"],
    }
    assert "Watchdog timeout" not in unit.journal(mark)


def test_stopped_daemon_is_killed_by_the_watchdog_and_restarted(unit: Installed) -> None:
    started(unit)
    pid, restarts, posts = unit.main_pid(), int(unit.prop("NRestarts")), unit.assigns()
    mark = unit.journal_cursor()
    began = time.monotonic()
    unit.c.run("kill", "-STOP", str(pid))
    new_pid = unit.wait_running(other_than=pid, timeout_s=WATCHDOG_SEC + RESTART_SEC + 10)
    took_s = time.monotonic() - began
    journal = unit.journal(mark)
    assert "Watchdog timeout" in journal, journal
    # WatchdogSignal=SIGABRT + PYTHONFAULTHANDLER=1: the stack of the frozen loop is dumped.
    assert "Fatal Python error: Aborted" in journal, journal
    assert int(unit.prop("NRestarts")) == restarts + 1
    assert unit.c.run("kill", "-0", str(pid), check=False).returncode != 0, "old daemon alive"
    assert unit.ocf("monitor") == (OCF_SUCCESS, "")
    assert unit.assigns() == posts
    assert took_s >= WATCHDOG_SEC, f"restarted after {took_s:.1f} s: not the watchdog"
    print(f"watchdog kill and restart: {took_s:.1f} s, pid {pid} -> {new_pid}")


def test_reload_with_a_good_config_applies_it_in_place(unit: Installed) -> None:
    pid = unit.main_pid()
    mark = unit.journal_cursor()
    unit.write_config(config_yaml(IP, SECOND_IP))
    unit.systemctl("reload", UNIT)
    wait_for(
        lambda: [e["ip"] for e in unit.status()["ips"]] == [IP, SECOND_IP],
        10,
        f"{SECOND_IP} in the daemon's status",
    )
    wait_for(lambda: unit.state() == "active/running", 10, "active/running after the reload")
    assert unit.main_pid() == pid
    assert SECOND_IP in unit.prop("StatusText")
    assert "event=reloaded " in unit.journal(mark)


def test_reload_with_a_bad_config_keeps_the_old_one(unit: Installed) -> None:
    pid = unit.main_pid()
    mark = unit.journal_cursor()
    unit.write_config(BAD_CONFIG)
    unit.systemctl("reload", UNIT)

    def rejected() -> str | None:
        status = unit.prop("StatusText")
        return status if status.endswith(REJECTED) else None

    status = wait_for(rejected, 10, f"StatusText ending in {REJECTED!r}")
    # RELOADING=1 put the unit in "reloading"; only READY=1 brings it back to running.
    wait_for(lambda: unit.state() == "active/running", 5, "active/running (READY=1 again)")
    assert unit.main_pid() == pid
    assert status.startswith(f"{IP} role=")
    assert [e["ip"] for e in unit.status()["ips"]] == [IP]
    journal = unit.journal(mark)
    assert "event=reload_rejected " in journal and "health.fall" in journal, journal


def test_restart_keeps_the_role(unit: Installed) -> None:
    started(unit)
    pid, posts = unit.main_pid(), unit.assigns()
    unit.systemctl("restart", UNIT)
    assert unit.main_pid() != pid
    assert unit.ocf("monitor") == (OCF_SUCCESS, "")
    assert unit.assigns() == posts, "a restart cost an API call"


def test_kill_9_is_restarted_and_keeps_the_role(unit: Installed) -> None:
    started(unit)
    pid, restarts, posts = unit.main_pid(), int(unit.prop("NRestarts")), unit.assigns()
    began = time.monotonic()
    unit.c.run("kill", "-9", str(pid))
    new_pid = unit.wait_running(other_than=pid, timeout_s=RESTART_SEC + 15)
    took_s = time.monotonic() - began
    assert int(unit.prop("NRestarts")) == restarts + 1
    assert unit.ocf("monitor") == (OCF_SUCCESS, "")
    assert unit.assigns() == posts, "a restart cost an API call"
    print(f"kill -9 -> running again in {took_s:.1f} s, pid {pid} -> {new_pid}")


@pytest.mark.parametrize(
    ("broken", "status", "journal_says"),
    [
        ("config", "78", "health.fall"),  # the daemon's EX_CONFIG
        ("token file", "243", "Failed at step CREDENTIALS"),  # systemd's LoadCredential=
    ],
)
def test_a_config_error_exits_without_a_restart_loop(
    unit: Installed, broken: str, status: str, journal_says: str
) -> None:
    mark = unit.journal_cursor()
    if broken == "config":
        unit.write_config(BAD_CONFIG)
    else:
        unit.c.run("mv", TOKEN_FILE, f"{TOKEN_FILE}.away")
    try:
        assert unit.systemctl("restart", UNIT, check=False) != 0
        expected = {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": status}
        names = (*expected, "NRestarts")
        assert unit.props(*names) == {**expected, "NRestarts": "0"}
        # RestartPreventExitStatus=78 243: nothing comes back (a restart would after 2 s).
        deadline = time.monotonic() + RESTART_SEC + 1.5
        while time.monotonic() < deadline:
            assert unit.props(*names) == {**expected, "NRestarts": "0"}
            time.sleep(0.2)
        journal = unit.journal(mark)
        assert journal_says in journal, journal
        assert "Scheduled restart job" not in journal, journal
    finally:
        if broken == "token file":
            unit.c.run("mv", f"{TOKEN_FILE}.away", TOKEN_FILE)
