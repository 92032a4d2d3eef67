"""Can this machine run the two-node lab? Says exactly what is missing, and where.

Checked by really doing each thing once (a namespace, a tmpfs mount, a veth pair, a bridge,
an nftables table in a scratch network namespace), not by guessing from the kernel version.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field

from hafloatd.lab.cluster.procs import CommandError, run

# Command -> the Debian package that brings it (what scripts/setup.sh installs).
REQUIRED_COMMANDS: dict[str, str] = {
    "corosync": "corosync",
    "corosync-keygen": "corosync",
    "corosync-cfgtool": "corosync",
    "pacemakerd": "pacemaker",
    "crm_mon": "pacemaker-cli-utils",
    "cibadmin": "pacemaker-cli-utils",
    "crm_resource": "pacemaker-cli-utils",
    "crm_attribute": "pacemaker-cli-utils",
    "pcs": "pcs",
    "ip": "iproute2",
    "nft": "nftables",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
}
SYSTEM_PYTHON = "/usr/bin/python3"
COMMAND_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_DIR = "/usr/lib/ocf/resource.d"
SCRATCH = "hafl-capcheck"


@dataclass
class CapabilityReport:
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def explain(self) -> str:
        if self.ok:
            return "the two-node Pacemaker lab can run here"
        return "cannot build the two-node Pacemaker lab here: " + "; ".join(self.missing)


async def check_capabilities(search_path: str = COMMAND_PATH) -> CapabilityReport:
    """Every problem found, each with the fix (``search_path``: where commands are looked for)."""
    report = CapabilityReport()
    if os.geteuid() != 0:
        report.missing.append("not root (namespaces, mounts and Pacemaker need root)")
        return report
    absent: dict[str, list[str]] = {}
    for command, package in REQUIRED_COMMANDS.items():
        if shutil.which(command, path=search_path) is None:
            absent.setdefault(package, []).append(command)
    for package, commands in absent.items():
        report.missing.append(f"{', '.join(commands)} not found (apt-get install {package})")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        report.missing.append(f"{SYSTEM_PYTHON} not found (apt-get install python3)")
    if not await asyncio.to_thread(os.path.isdir, AGENT_DIR):
        report.missing.append(f"{AGENT_DIR} missing (apt-get install resource-agents)")
    if shutil.which("nginx", path=search_path) is None:
        report.notes.append(
            "nginx is not installed: each node runs the stand-in web server "
            "(apt-get install nginx-light for the real one)"
        )
    if report.missing:
        return report
    await _try(
        report,
        "cannot create pid/mount/uts/ipc namespaces or mount tmpfs "
        "(needs CAP_SYS_ADMIN; in a container: --privileged)",
        "unshare",
        "--mount",
        "--uts",
        "--ipc",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /run && hostname capcheck",
    )
    scratch = f"{SCRATCH}-{os.getpid()}"
    if not await _try(
        report,
        "cannot create network namespaces (needs CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        "ip",
        "netns",
        "add",
        scratch,
    ):
        return report
    try:
        veth = f"hcc{os.getpid() % 100000}"
        if await _try(
            report,
            "no veth support in this kernel",
            "ip",
            "-n",
            scratch,
            "link",
            "add",
            f"{veth}a",
            "type",
            "veth",
            "peer",
            "name",
            f"{veth}b",
        ):
            await run(["ip", "-n", scratch, "link", "del", f"{veth}a"], check=False)
        if await _try(
            report,
            "no bridge support in this kernel",
            "ip",
            "-n",
            scratch,
            "link",
            "add",
            f"{veth}br",
            "type",
            "bridge",
        ):
            await run(["ip", "-n", scratch, "link", "del", f"{veth}br"], check=False)
        await _try(
            report,
            "nftables does not work inside a network namespace (partition tests need it)",
            "ip",
            "netns",
            "exec",
            scratch,
            "nft",
            "add",
            "table",
            "inet",
            "capcheck",
        )
    finally:
        await run(["ip", "netns", "del", scratch], check=False)
    return report


async def _try(report: CapabilityReport, problem: str, *argv: str) -> bool:
    try:
        await run(argv, timeout=20)
    except (CommandError, OSError) as exc:
        report.missing.append(f"{problem}: {exc}")
        return False
    return True
