"""The daemon in the test's own event loop, watched by blockbuster: no blocking call in the
loop on the daemon's paths (startup, start, monitor, stop, status, reload, shutdown)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from blockbuster import blockbuster_ctx
from prometheus_client import CollectorRegistry

from hafloatd.config import parse_config
from hafloatd.control.client import request
from hafloatd.daemon import Daemon
from hafloatd.lab.nodes import node_config, stand_in_web
from hafloatd.lab.sim import Simulator
from hafloatd.metrics import Metrics

IP = "203.0.113.10"


async def test_daemon_paths_never_block_the_loop(simulator: Simulator, tmp_path: Path) -> None:
    async with stand_in_web("node1") as web:
        raw = node_config(simulator, 1001, tmp_path, health_url=web.url)
        raw["metrics"] = {"listen": None}
        config = parse_config(raw, source="test")
        (tmp_path / "hafloatd.yaml").write_text("ips: [203.0.113.10]\n")
        registry = CollectorRegistry()
        daemon = Daemon(
            config,
            str(tmp_path / "hafloatd.yaml"),
            environ={"HAFLOATD_DO_TOKEN": "test-token"},
            metrics=Metrics(registry),
        )
        sock = config.control.socket_path
        # Only the daemon's modules are scanned: the simulator and test code may block.
        with blockbuster_ctx(["hafloatd"], excluded_modules=["hafloatd.lab", "tests"]):
            async with daemon.running():
                reply = await request(sock, {"op": "start", "ip": IP, "deadline_ms": 10000}, 10)
                assert reply["ocf"] == 0, reply
                reply = await request(sock, {"op": "monitor", "ip": IP, "deadline_ms": 5000}, 5)
                assert reply["ocf"] == 0, reply
                status = await request(sock, {"op": "status", "deadline_ms": 5000}, 5)
                assert status["ips"][0]["role"] == "started"
                assert await daemon.reload() is True
                reply = await request(sock, {"op": "stop", "ip": IP, "deadline_ms": 5000}, 5)
                assert reply["ocf"] == 0, reply
                async with asyncio.timeout(5):
                    while daemon.probe is not None and daemon.probe.checks_total < 2:
                        await asyncio.sleep(0.02)
                owned = {"metadata-poll", "holder-check", "keep-warm"}
                assert owned <= {task.get_name() for task in asyncio.all_tasks()}
        # Leaving running() shut everything down: no task the daemon started is left behind.
        assert owned.isdisjoint(task.get_name() for task in asyncio.all_tasks())
        assert simulator.holder(IP) == 1001
        assert (
            registry.get_sample_value("hafloatd_failovers_total", {"ip": IP, "outcome": "moved"})
            == 1.0
        )
        assert registry.get_sample_value("hafloatd_role", {"ip": IP}) == 0.0
