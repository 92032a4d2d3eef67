"""PacemakerNotifier against a real executable stand-in for crm_resource on a temp path."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx
from prometheus_client import CollectorRegistry

from hafloatd.config import TOKEN_ENV_VAR, PacemakerConfig
from hafloatd.metrics import Metrics
from hafloatd.pacemaker import PacemakerNotifier, is_valid_node_name, is_valid_resource_id

WAIT_S = 10.0

# Records its argv (and environment) next to itself, then behaves as ./mode says.
STAND_IN = """#!/usr/bin/python3
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "pid": os.getpid()}) + "\\n")
mode = open(os.path.join(here, "mode")).read().strip()
if mode == "ok":
    print("Waiting for 1 reply from the controller")
    sys.exit(0)
if mode == "fail":
    sys.stderr.write("Error performing operation: No such device or address\\nsecond line\\n")
    sys.exit(6)
if mode == "hang":
    time.sleep(120)
sys.exit(0)
"""


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    with blockbuster_ctx():
        yield


class StandIn:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "crm_resource"
        self.path.write_text(STAND_IN)
        self.path.chmod(0o755)
        self.mode = "ok"

    @property
    def mode(self) -> str:
        return (self.directory / "mode").read_text()

    @mode.setter
    def mode(self, value: str) -> None:
        (self.directory / "mode").write_text(value)

    async def set_mode(self, value: str) -> None:
        await asyncio.to_thread(setattr, self, "mode", value)

    def calls(self) -> list[dict[str, object]]:
        log_file = self.directory / "calls.jsonl"
        if not log_file.exists():
            return []
        return [json.loads(line) for line in log_file.read_text().splitlines()]

    def config(self, enabled: bool = True) -> PacemakerConfig:
        return PacemakerConfig(notify_failures=enabled, crm_resource=str(self.path))


@pytest.fixture
def stand_in(tmp_path: Path) -> StandIn:
    return StandIn(tmp_path)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def notifications(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value(
        "hafloatd_pacemaker_notifications_total", {"result": result}
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def calls_of(stand_in: StandIn) -> list[dict[str, object]]:
    return await asyncio.to_thread(stand_in.calls)


async def wait_for_calls(stand_in: StandIn, count: int) -> list[dict[str, object]]:
    # The stand-in writes its record before it starts hanging; poll the file briefly.
    async with asyncio.timeout(WAIT_S):
        while len(calls := await calls_of(stand_in)) < count:
            await asyncio.sleep(0.01)
    return calls


async def test_notify_failure_runs_crm_resource_fail_with_resource_and_node(
    stand_in: StandIn, metrics: Metrics
) -> None:
    notifier = PacemakerNotifier(stand_in.config(), metrics=metrics)
    ok = await notifier.notify_failure("FloatIP", "node-1", "health down: status 502")
    assert ok is True
    calls = await calls_of(stand_in)
    assert [c["argv"] for c in calls] == [["--fail", "--resource", "FloatIP", "--node", "node-1"]]
    assert notifications(metrics, "ok") == 1
    assert notifications(metrics, "error") is None


async def test_disabled_notifier_runs_nothing(stand_in: StandIn, metrics: Metrics) -> None:
    notifier = PacemakerNotifier(stand_in.config(enabled=False), metrics=metrics)
    assert notifier.enabled is False
    assert await notifier.notify_failure("FloatIP", "node-1", "down") is False
    assert notifier.fire("FloatIP", "node-1", "down") is None
    await notifier.close()
    assert await calls_of(stand_in) == []
    assert notifications(metrics, "ok") is None


async def test_reconfigure_enables_notifications(stand_in: StandIn) -> None:
    notifier = PacemakerNotifier(stand_in.config(enabled=False))
    notifier.reconfigure(stand_in.config(enabled=True))
    assert await notifier.notify_failure("FloatIP", "node-1", "down") is True


async def test_nonzero_exit_is_logged_on_one_line_with_stderr(
    stand_in: StandIn, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    await stand_in.set_mode("fail")
    notifier = PacemakerNotifier(stand_in.config(), metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="hafloatd.pacemaker"):
        ok = await notifier.notify_failure("FloatIP", "node-1", "down")
    assert ok is False
    assert notifications(metrics, "error") == 1
    [record] = [r for r in caplog.records if r.name == "hafloatd.pacemaker"]
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith("event=pacemaker_notify_failed resource=FloatIP node=node-1 rc=6")
    assert "stderr='Error performing operation: No such device or address | second line'" in (
        message
    )


async def test_hung_crm_resource_is_killed_after_the_timeout(
    stand_in: StandIn, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    await stand_in.set_mode("hang")
    notifier = PacemakerNotifier(stand_in.config(), metrics=metrics, timeout_s=0.5)
    # The stand-in sleeps 120 s: returning within WAIT_S means the timeout ended it.
    with caplog.at_level(logging.ERROR, logger="hafloatd.pacemaker"):
        async with asyncio.timeout(WAIT_S):
            ok = await notifier.notify_failure("FloatIP", "node-1", "down")
    assert ok is False
    [call] = await calls_of(stand_in)
    pid = call["pid"]
    assert isinstance(pid, int)
    assert not pid_alive(pid)
    assert notifications(metrics, "error") == 1
    assert any("was killed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("resource", "node"),
    [
        ("-rf", "node-1"),
        ("--force", "node-1"),
        ("FloatIP", "--node=other"),
        ("FloatIP", "-n"),
        ("Float IP", "node-1"),
        ("FloatIP;reboot", "node-1"),
        ("$(id)", "node-1"),
        ("FloatIP", "node 1"),
        ("", "node-1"),
        ("FloatIP", ""),
        ("1FloatIP", "node-1"),
        ("FloatIP", "n" * 300),
        ("FloatIP\n", "node-1"),
    ],
)
async def test_names_outside_pacemaker_id_syntax_are_refused_without_running_anything(
    stand_in: StandIn, metrics: Metrics, resource: str, node: str
) -> None:
    notifier = PacemakerNotifier(stand_in.config(), metrics=metrics)
    assert await notifier.notify_failure(resource, node, "down") is False
    assert await calls_of(stand_in) == []
    assert notifications(metrics, "error") == 1


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("FloatIP", True),
        ("float_ip-1.a", True),
        ("FloatIP:0", True),
        ("_x", True),
        ("FloatIP:", False),
        ("FloatIP:a", False),
        ("-x", False),
        ("9lives", False),
    ],
)
def test_resource_id_syntax(name: str, valid: bool) -> None:
    assert is_valid_resource_id(name) is valid


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("node-1", True),
        ("1node.example.com", True),
        ("db_2", True),
        ("-node", False),
        ("node/1", False),
        ("node:1", False),
        ("", False),
    ],
)
def test_node_name_syntax(name: str, valid: bool) -> None:
    assert is_valid_node_name(name) is valid


async def test_fire_returns_at_once_and_coalesces_a_notification_in_flight(
    stand_in: StandIn,
) -> None:
    await stand_in.set_mode("hang")
    notifier = PacemakerNotifier(stand_in.config(), timeout_s=60.0)
    first = notifier.fire("FloatIP", "node-1", "down")
    again = notifier.fire("FloatIP", "node-1", "still down")
    other = notifier.fire("OtherIP", "node-1", "down")
    assert first is not None and other is not None
    assert again is first
    assert other is not first
    calls = await wait_for_calls(stand_in, 2)
    pids = [c["pid"] for c in calls]
    # Both stand-ins sleep 120 s: close returning within WAIT_S means it ended them.
    async with asyncio.timeout(WAIT_S):
        await notifier.close(grace=0.1)
    assert first.done() and other.done()
    for pid in pids:
        assert isinstance(pid, int)
        assert not pid_alive(pid)
    assert notifier.fire("FloatIP", "node-1", "after close") is None


async def test_close_lets_a_quick_notification_finish(stand_in: StandIn) -> None:
    notifier = PacemakerNotifier(stand_in.config())
    task = notifier.fire("FloatIP", "node-1", "down")
    assert task is not None
    await notifier.close(grace=WAIT_S)
    assert task.done() and not task.cancelled()
    assert task.result() is True


async def test_missing_executable_is_reported_not_raised(
    tmp_path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    config = PacemakerConfig(notify_failures=True, crm_resource=str(tmp_path / "nope"))
    notifier = PacemakerNotifier(config, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="hafloatd.pacemaker"):
        assert await notifier.notify_failure("FloatIP", "node-1", "down") is False
    assert notifications(metrics, "error") == 1
    assert any("not found" in r.getMessage() for r in caplog.records)


async def test_api_token_is_not_passed_to_crm_resource(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV_VAR, "dop_v1_secret_token_value")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/hafloatd.service")
    notifier = PacemakerNotifier(stand_in.config())
    assert await notifier.notify_failure("FloatIP", "node-1", "down") is True
    [call] = await calls_of(stand_in)
    env = call["env"]
    assert isinstance(env, dict)
    assert TOKEN_ENV_VAR not in env
    assert "CREDENTIALS_DIRECTORY" not in env
    assert "dop_v1_secret_token_value" not in json.dumps(call)
