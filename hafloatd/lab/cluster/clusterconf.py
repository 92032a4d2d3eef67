"""What the lab writes before anything starts: corosync.conf, the seed CIB, each daemon's YAML.

The resource is created with the very ``pcs resource create`` line docs/operations.md gives
a user (``ResourceSpec.pcs_args``; a test keeps the two identical), run offline on the seed
CIB with ``pcs -f``: Debian's pcs edits a CIB file without pcsd. The daemon's configuration is
written as YAML, like a user would: nothing here imports the daemon's config code.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hafloatd.lab.cluster.procs import CLEAN_ENV, run

RESOURCE_ID = "FloatIP"
AGENT = "ocf:hafloatd:hafloat"


@dataclass(frozen=True)
class ResourceSpec:
    """The documented primitive; the fields are the values of its ``op`` and ``meta``."""

    ip: str = "203.0.113.10"
    monitor_interval: str = "10s"
    monitor_timeout: str = "20s"
    start_timeout: str = "20s"
    stop_timeout: str = "20s"
    stickiness: int = 100
    migration_threshold: int = 1
    failure_timeout: str = "120s"

    def pcs_args(self) -> list[str]:
        """Arguments after ``pcs`` (or ``pcs -f CIB``)."""
        return [
            "resource",
            "create",
            RESOURCE_ID,
            AGENT,
            f"ip={self.ip}",
            "op",
            "monitor",
            f"interval={self.monitor_interval}",
            f"timeout={self.monitor_timeout}",
            "op",
            "start",
            f"timeout={self.start_timeout}",
            "op",
            "stop",
            f"timeout={self.stop_timeout}",
            "meta",
            f"resource-stickiness={self.stickiness}",
            f"migration-threshold={self.migration_threshold}",
            f"failure-timeout={self.failure_timeout}",
        ]

    def pcs_line(self) -> str:
        return "pcs " + shlex.join(self.pcs_args())

    @property
    def monitor_interval_s(self) -> float:
        return parse_seconds(self.monitor_interval)

    @property
    def start_timeout_s(self) -> float:
        return parse_seconds(self.start_timeout)


@dataclass(frozen=True)
class HealthSpec:
    """The daemon's ``health:`` section (probing the node's own web server)."""

    interval_s: float = 2.0
    timeout_s: float = 1.0
    rise: int = 2
    fall: int = 3

    def to_yaml(self) -> dict[str, Any]:
        return {
            "url": "http://127.0.0.1/",
            "interval": f"{self.interval_s:g}s",
            "timeout": f"{self.timeout_s:g}s",
            "rise": self.rise,
            "fall": self.fall,
        }


def parse_seconds(text: str) -> float:
    """``500ms``, ``10s``, ``2min`` as Pacemaker writes durations in op definitions."""
    for suffix, scale in (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def corosync_conf(nodes: Mapping[str, str], token_ms: int, cluster_name: str) -> str:
    """knet with crypto on (as in production), two_node quorum, ms-resolution log stamps."""
    entries = "".join(
        f"    node {{\n        name: {name}\n        nodeid: {i}\n"
        f"        ring0_addr: {address}\n    }}\n"
        for i, (name, address) in enumerate(nodes.items(), 1)
    )
    return (
        "totem {\n"
        "    version: 2\n"
        f"    cluster_name: {cluster_name}\n"
        "    transport: knet\n"
        "    crypto_cipher: aes256\n"
        "    crypto_hash: sha256\n"
        f"    token: {token_ms}\n"
        "}\n"
        "logging {\n"
        "    to_stderr: yes\n"
        "    to_logfile: yes\n"
        "    logfile: /var/log/corosync/corosync.log\n"
        "    to_syslog: no\n"
        "    timestamp: hires\n"
        "}\n"
        "quorum {\n"
        "    provider: corosync_votequorum\n"
        "    two_node: 1\n"
        "}\n"
        f"nodelist {{\n{entries}}}\n"
    )


async def seed_cib(path: Path, resource: ResourceSpec, dc_deadtime: str = "2s") -> str:
    """Write the CIB every node starts from; returns the pcs line that created the resource.

    Seeding offline (stonith off, no-quorum-policy=ignore, a short dc-deadtime) brings a new
    cluster online in seconds instead of ~20 s of DC election.
    """
    empty = await run(["cibadmin", "--empty"])
    await asyncio.to_thread(path.write_text, empty.stdout)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "CIB_file": str(path)}
    for name, value in (
        ("stonith-enabled", "false"),
        ("no-quorum-policy", "ignore"),
        ("dc-deadtime", dc_deadtime),
    ):
        await run(["crm_attribute", "-t", "crm_config", "-n", name, "-v", value], env=env)
    await run(["pcs", "-f", str(path), *resource.pcs_args()], env=env, timeout=60)
    return f"pcs -f {path.name} " + shlex.join(resource.pcs_args())


def daemon_config(
    *,
    ip: str,
    api_url: str,
    metadata_url: str,
    token_file: Path,
    cache_file: Path,
    metrics_listen: str,
    health: HealthSpec | None,
    notify_failures: bool,
) -> dict[str, Any]:
    """One node's hafloatd.yaml: the production defaults except where the lab must differ
    (the simulator's URLs, a token file, a per-node cache, metrics reachable from the host)."""
    config: dict[str, Any] = {
        "ips": [{"address": ip}],
        "api": {"base_url": api_url, "token_source": "file", "token_file": str(token_file)},
        "metadata": {"base_url": metadata_url, "cache_file": str(cache_file)},
        "metrics": {"listen": metrics_listen},
        "pacemaker": {"notify_failures": notify_failures},
    }
    if health is not None:
        config["health"] = health.to_yaml()
    return config


async def install_agent() -> None:
    """``hafloatd install-agent``: how every node gets ``ocf:hafloatd:hafloat``."""
    env = {**CLEAN_ENV, "HOME": "/root"}
    await run([sys.executable, "-m", "hafloatd.cli", "install-agent"], env=env, timeout=60)
