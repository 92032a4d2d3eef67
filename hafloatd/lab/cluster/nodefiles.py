"""The files a node starts from, written in its directory with the owners and modes the
packages would give them: the CIB (hacluster, 0600), corosync's key (0400) and
configuration, hafloatd's configuration and token file (root, 0600). At teardown, the
daemon's stamped log. Synchronous: the harness calls these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from pathlib import Path
from typing import Any

import yaml

from hafloatd.fsutil import write_atomically
from hafloatd.lab.cluster.node import ClusterNode


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
    write_daemon_config(node, config)


def write_daemon_config(node: ClusterNode, config: dict[str, Any]) -> None:
    write_atomically(node.config_path, yaml.safe_dump(config, sort_keys=False).encode(), mode=0o600)


def read_daemon_config(node: ClusterNode) -> dict[str, Any]:
    loaded = yaml.safe_load(node.config_path.read_text())
    return dict(loaded) if isinstance(loaded, dict) else {}


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
