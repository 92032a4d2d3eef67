"""Reload against a stand-in daemon: what is put back when applying a good file hits a bug."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hafloatd import reload
from hafloatd.config import Config, ControlConfig, HealthConfig, IpConfig, parse_config
from hafloatd.reload import FAILED, ConfigReloader

IP = "203.0.113.10"
OTHER_IP = "203.0.113.30"


def config(**health: Any) -> dict[str, Any]:
    return {
        "ips": [IP],
        "health": {"url": "http://127.0.0.1:9/", "interval": "1s", "timeout": "500ms", **health},
        "control": {"socket_path": "/run/hafloatd-test/control.sock"},
    }


class StandInProbe:
    def __init__(self, config: HealthConfig) -> None:
        self.config = config

    def reconfigure(self, config: HealthConfig) -> None:
        self.config = config

    async def stop(self) -> None:
        self.stopped = True


class ControlFailingOnce:
    """The control server with a bug the first time it is reconfigured."""

    def __init__(self) -> None:
        self.configs: list[ControlConfig] = []

    def reconfigure(self, config: ControlConfig) -> None:
        self.configs.append(config)
        if len(self.configs) == 1:
            raise RuntimeError("bug in reconfigure")


class StandInIp:
    def __init__(self, ip_config: IpConfig, probe: StandInProbe | None) -> None:
        self.ip_config = ip_config
        self.probe = probe


class StandInDaemon:
    def __init__(self, running: Config) -> None:
        self.config = running
        assert running.health is not None
        self.probe: StandInProbe | None = StandInProbe(running.health)
        self.control = ControlFailingOnce()
        self.pacemaker = None
        self.controllers: dict[str, StandInIp] = {}
        for entry in running.ips:
            self.add_controller(entry)

    def add_controller(self, ip_config: IpConfig) -> None:
        self.controllers[ip_config.address] = StandInIp(ip_config, self.probe)

    async def remove_controller(self, address: str) -> None:
        del self.controllers[address]

    async def start_probe(self, config: HealthConfig) -> StandInProbe:
        return StandInProbe(config)

    def status_line(self, extra: str | None = None) -> str:
        return f"{IP} role=stopped; {extra}" if extra else f"{IP} role=stopped"


class Notifications:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")

    def ready(self, status: str | None = None) -> None:
        self.sent.append(f"READY=1 STATUS={status}")


@pytest.fixture(autouse=True)
def _keep_test_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reload, "setup_logging", lambda level: None)


async def test_a_bug_while_applying_puts_back_what_was_applied_and_still_sends_ready(
    tmp_path: Path,
) -> None:
    running = parse_config(config(), source="running")
    new = config(interval="2s")  # applied first (health), then the control step fails
    new["ips"] = [IP, OTHER_IP]
    path = tmp_path / "hafloatd.yaml"
    path.write_text(yaml.safe_dump(new))
    daemon = StandInDaemon(running)
    notifications = Notifications()

    assert await ConfigReloader(daemon, str(path), notifications).reload() is False  # type: ignore[arg-type]

    assert daemon.probe is not None and daemon.probe.config == running.health  # put back
    assert all(ip.probe is daemon.probe for ip in daemon.controllers.values())
    assert list(daemon.controllers) == [IP]
    assert daemon.config is running
    assert daemon.control.configs[-1] == running.control
    assert notifications.sent == ["RELOADING=1", f"READY=1 STATUS={IP} role=stopped; {FAILED}"]


async def test_a_good_file_is_applied_step_by_step(tmp_path: Path) -> None:
    running = parse_config(config(), source="running")
    new = config(interval="2s")
    new["ips"] = [IP, OTHER_IP]
    path = tmp_path / "hafloatd.yaml"
    path.write_text(yaml.safe_dump(new))
    daemon = StandInDaemon(running)
    daemon.control.configs.append(running.control)  # its one bug already spent
    notifications = Notifications()

    assert await ConfigReloader(daemon, str(path), notifications).reload() is True  # type: ignore[arg-type]

    assert daemon.probe is not None and daemon.probe.config.interval == 2.0
    assert list(daemon.controllers) == [IP, OTHER_IP]
    assert notifications.sent == ["RELOADING=1", f"READY=1 STATUS={IP} role=stopped"]


async def test_health_removed_stops_the_probe_and_every_controller_forgets_it(
    tmp_path: Path,
) -> None:
    running = parse_config(config(), source="running")
    new = config()
    del new["health"]
    path = tmp_path / "hafloatd.yaml"
    path.write_text(yaml.safe_dump(new))
    daemon = StandInDaemon(running)
    probe = daemon.probe
    daemon.control.configs.append(running.control)

    assert await ConfigReloader(daemon, str(path), Notifications()).reload() is True  # type: ignore[arg-type]

    assert daemon.probe is None and getattr(probe, "stopped", False)
    assert [ip.probe for ip in daemon.controllers.values()] == [None]
