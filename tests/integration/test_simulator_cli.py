"""``hafloatd simulator``: the command line runs the simulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from hafloatd.lab.sim import cli as simulator_cli
from hafloatd.lab.sim.scenario import ScenarioError

EXAMPLE = Path(simulator_cli.__file__).with_name("example-scenario.yaml")
STARTUP_TIMEOUT = 15.0


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulator_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


class Running:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def read_until(self, marker: str) -> list[str]:
        assert self.process.stdout is not None
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    stderr = b""
                    if self.process.stderr is not None:
                        stderr = await self.process.stderr.read()
                    raise AssertionError(f"simulator exited early: {stderr.decode()}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if line == marker or (marker == "{" and line.startswith("{")):
                    return self.lines


StartCli = Callable[..., Awaitable[Running]]


@pytest.fixture
async def run_cli() -> AsyncIterator[StartCli]:
    started: list[asyncio.subprocess.Process] = []

    async def start(*argv: str) -> Running:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hafloatd.cli",
            "simulator",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started.append(process)
        return Running(process)

    yield start
    for process in started:  # stop by PID whatever happened in the test
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(running: Running, signum: int = signal.SIGTERM) -> int:
    running.process.send_signal(signum)
    async with asyncio.timeout(STARTUP_TIMEOUT):
        return await running.process.wait()


async def test_cli_runs_the_example_scenario_and_exits_0_on_sigterm(run_cli: StartCli) -> None:
    running = await run_cli("--scenario", str(EXAMPLE), "--action-delay", "0.05")
    lines = await running.read_until("ready")
    listeners = dict(line.split(" ", 1) for line in lines if line.startswith(("api ", "admin ")))
    assert listeners["api"].startswith("http://127.0.0.1:")
    assert any(line.startswith("metadata 1001 node1 http://127.0.0.1:") for line in lines)
    assert any(line.startswith("proxy 203.0.113.10 127.0.0.1:") for line in lines)
    headers = {"Authorization": "Bearer test-token"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{listeners['api']}/v2/reserved_ips/203.0.113.10") as response,
    ):
        assert (await response.json())["reserved_ip"]["droplet"]["id"] == 1001
    assert await stop(running) == 0


async def test_cli_builds_a_scenario_from_flags_and_prints_json(run_cli: StartCli) -> None:
    running = await run_cli(
        "--droplet", "7:web1:ams3",
        "--droplet", "8:web2:ams3:127.0.0.1:9",
        "--reserved-ip", "203.0.113.50:ams3:8",
        "--token", "lab-token",
        "--json",
    )  # fmt: skip
    lines = await running.read_until("{")
    listing = json.loads(lines[-1])
    assert set(listing["metadata"]) == {"7", "8"}
    assert set(listing["proxies"]) == {"203.0.113.50"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{listing['metadata']['8']}/reserved_ip/ipv4/ip_address") as response,
    ):
        assert await response.text() == "203.0.113.50"
    assert await stop(running, signal.SIGINT) == 0


async def test_cli_refuses_a_bad_scenario_with_exit_2(run_cli: StartCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    await asyncio.to_thread(bad.write_text, "droplets:\n  - {id: 1, name: a, region: mars1}\n")
    running = await run_cli("--scenario", str(bad))
    async with asyncio.timeout(STARTUP_TIMEOUT):
        code = await running.process.wait()
    assert running.process.stderr is not None
    stderr = (await running.process.stderr.read()).decode()
    assert code == 2
    assert "droplets[0]: droplet 1: region: unknown region 'mars1'" in stderr


def test_flags_override_the_scenario_file() -> None:
    scenario = simulator_cli.build_scenario(
        parse("--scenario", str(EXAMPLE), "--action-delay", "0", "--token", "t1", "--tls")
    )
    assert scenario.action_delay == 0
    assert scenario.tokens == ("t1",)
    assert scenario.tls is True
    assert [d.id for d in scenario.droplets] == [1001, 1002]
    assert scenario.droplets[0].backend == "127.0.0.1:8081"


def test_demo_scenario_when_nothing_is_given() -> None:
    scenario = simulator_cli.build_scenario(parse())
    assert [d.name for d in scenario.droplets] == ["node1", "node2"]
    assert [r.ip for r in scenario.reserved_ips] == ["203.0.113.10"]


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--droplet", "web1:ams3"], "expected ID:NAME:REGION"),
        (["--reserved-ip", "203.0.113.9"], "expected IP:REGION"),
        (["--droplet", "1:a:nyc3", "--reserved-ip", "203.0.113.9:nyc3:2"], "not one of"),
        (["--droplet", "1:a:nyc3", "--reserved-ip", "203.0.113.9:sfo3:1"], "reserved to sfo3"),
    ],
)
def test_bad_flags_are_refused_with_the_reason(argv: list[str], complaint: str) -> None:
    with pytest.raises(ScenarioError, match=complaint):
        simulator_cli.build_scenario(parse(*argv))
