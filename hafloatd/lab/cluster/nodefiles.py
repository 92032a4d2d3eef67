"""The files a node starts from, and the logs it leaves.

Written in each node's directory with the owners and modes the packages would give them:
the CIB (hacluster, 0600), corosync's key (0400) and configuration, hafloatd's
configuration and token file (root, 0600). Read back: Pacemaker's log; at teardown, the
daemon's stamped log is saved. The synchronous helpers run through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import time
from pathlib import Path
from typing import Any

import yaml

from hafloatd.fsutil import write_atomically
from hafloatd.lab.cluster.clusterconf import ResourceSpec, seed_cib
from hafloatd.lab.cluster.node import ClusterNode
from hafloatd.lab.cluster.procs import run


async def prepare_cluster_files(
    nodes: list[ClusterNode], workdir: Path, resource: ResourceSpec, dc_deadtime: str, conf: str
) -> str:
    """Seed CIB (with the resource), a corosync key, both in every node's directory with
    ``conf``; returns the pcs line that created the resource."""
    seed = workdir / "cib.seed.xml"
    pcs_line = await seed_cib(seed, resource, dc_deadtime)
    authkey = workdir / "authkey"
    await run(["corosync-keygen", "-k", str(authkey)], timeout=30)
    for node in nodes:
        await asyncio.to_thread(write_cluster_files, node, seed, authkey, conf)
    return pcs_line


def write_cluster_files(node: ClusterNode, seed: Path, authkey: Path, conf: str) -> None:
    node.make_dirs()
    hacluster = pwd.getpwnam("hacluster").pw_uid
    haclient = grp.getgrnam("haclient").gr_gid
    for sub in ("lib-pacemaker", "log-pacemaker"):
        for path in [node.workdir / sub, *(node.workdir / sub).rglob("*")]:
            os.chown(path, hacluster, haclient)
    for sub in ("cib", "pengine", "blackbox", "cores"):
        (node.workdir / "lib-pacemaker" / sub).chmod(0o750)
    (node.workdir / "log-pacemaker").chmod(0o770)
    cib = node.workdir / "lib-pacemaker" / "cib" / "cib.xml"
    write_atomically(cib, seed.read_bytes(), mode=0o600)
    os.chown(cib, hacluster, haclient)
    write_atomically(node.workdir / "etc-corosync" / "authkey", authkey.read_bytes(), mode=0o400)
    write_atomically(node.workdir / "etc-corosync" / "corosync.conf", conf.encode(), mode=0o644)


def write_daemon_files(node: ClusterNode, config: dict[str, Any], token: str) -> None:
    node.make_dirs()
    write_atomically(node.token_path, (token + "\n").encode(), mode=0o600)
    config_text = yaml.safe_dump(config, sort_keys=False).encode()
    write_atomically(node.config_path, config_text, mode=0o600)


def pacemaker_lines(nodes: list[ClusterNode], mark: dict[str, int] | None = None) -> list[str]:
    """Each node's pacemaker.log lines (prefixed with the node's name), after ``mark``."""
    lines: list[str] = []
    for node in nodes:
        try:
            text = node.pacemaker_log.read_text(errors="replace")
        except FileNotFoundError:
            continue
        skip = (mark or {}).get(node.name, 0)
        lines += [f"{node.name}: {line}" for line in text.splitlines()[skip:]]
    return lines


def pacemaker_line_counts(nodes: list[ClusterNode]) -> dict[str, int]:
    counts = {}
    for node in nodes:
        try:
            counts[node.name] = len(node.pacemaker_log.read_text(errors="replace").splitlines())
        except FileNotFoundError:
            counts[node.name] = 0
    return counts


def save_daemon_log(node: ClusterNode) -> None:
    """The daemon's stderr lines, each with the time it arrived, as ``hafloatd/hafloatd.log``."""
    if not node.daemon_log:
        return
    stamped = "".join(
        f"{time.strftime('%H:%M:%S', time.localtime(line.at))}.{int(line.at % 1 * 1000):03d}"
        f" {line.text}\n"
        for line in node.daemon_log
    )
    node.hafloatd_dir.mkdir(parents=True, exist_ok=True)
    (node.hafloatd_dir / "hafloatd.log").write_text(stamped)
