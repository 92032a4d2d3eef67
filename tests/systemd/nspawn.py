"""A booted systemd (Debian 12's, 252) in ``systemd-nspawn``, on a host whose PID 1 is not systemd.

``Container(root, name).boot()`` starts ``systemd-nspawn -b`` on an unpacked root and waits
for ``systemctl is-system-running``; ``run`` executes a command inside (``nsenter`` into every
namespace of the container's PID 1); ``shutdown`` powers it off, by PID, and removes what it
left on the host. The boot options, and why:

- ``--private-network``: loopback only; the container reaches nothing, nothing reaches it;
- ``--register=no --keep-unit``: no host D-Bus or machined (nspawn otherwise wants both);
  nspawn then puts the container's cgroups under its own cgroup, so it is started in a
  cgroup of its own (``/<name>`` in the host's ``name=systemd`` and cgroup2 hierarchies),
  which ``shutdown`` removes: two runs on one host never share ``/payload``;
- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``: cgroup v2 only inside, as on a Debian 12 droplet;
- ``--capability=CAP_BPF --system-call-filter=bpf``: with them the inner systemd enforces
  ``DevicePolicy=`` and ``IPAddressDeny=`` (BPF cgroup programs); without them it silently
  does not. (No cgroup controller reaches the container: the host binds them to v1.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The host hierarchies nspawn uses: name=systemd (v1) and the cgroup2 one.
CGROUP_HIERARCHIES = ("systemd", "unified")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT_S = 60.0
POWEROFF_TIMEOUT_S = 20.0
# The root (~300 MB) and what the tests add (a venv, journals) fit with room to spare.
ROOT_TMPFS_OPTIONS = "size=2g,mode=0755"


class ContainerError(Exception):
    """The container did not boot, or a command inside it failed; says what and shows output."""


def missing_host_capabilities() -> list[str]:
    """What this host lacks to boot the container (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (systemd-nspawn, nsenter and cgroups need it)")
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
        ("git", "git"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install --no-install-recommends {package})")
    for hierarchy in CGROUP_HIERARCHIES:
        if not (CGROUP_ROOT / hierarchy / "cgroup.procs").is_file():
            missing.append(f"the host's {hierarchy} cgroup hierarchy at {CGROUP_ROOT / hierarchy}")
    return missing


class Container:
    """One booted container; ``shutdown`` always leaves the host as it was."""

    def __init__(self, root: Path, name: str, log: Path) -> None:
        self.root = root
        self.name = name
        self.log = log
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it
        self.root_mounted = False

    def mount_root(self) -> None:
        """An empty tmpfs at ``root`` for the container's files: unpacking the root there takes
        0.4 s instead of 10-15 s on this disk, and removing it is an unmount."""
        self.root.mkdir(parents=True)
        _run_host(["mount", "-t", "tmpfs", "-o", ROOT_TMPFS_OPTIONS, "tmpfs", str(self.root)])
        self.root_mounted = True

    def boot(self) -> float:
        """Start it and wait until systemd says running (or degraded); returns seconds taken."""
        began = time.monotonic()
        (self.root / "etc/hostname").write_text(self.name + "\n")
        cgroups = [CGROUP_ROOT / h / self.name for h in CGROUP_HIERARCHIES]
        for cgroup in cgroups:
            cgroup.mkdir()
        # The shell moves itself into the container's own cgroups, then becomes nspawn.
        enter = " && ".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))}" for c in cgroups)
        argv = [
            "systemd-nspawn", "--quiet", "--directory", str(self.root), "--boot",
            "--machine", self.name, "--register=no", "--keep-unit", "--private-network",
            "--capability=CAP_BPF", "--system-call-filter=bpf", "--console=passive",
        ]  # fmt: skip
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        with open(self.log, "wb") as out:
            self.nspawn = subprocess.Popen(
                ["sh", "-c", f'{enter} && exec "$@"', "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.leader = self._wait_for_leader(began + BOOT_TIMEOUT_S)
        deadline = began + BOOT_TIMEOUT_S
        while self.run("test", "-S", "/run/systemd/private", check=False).returncode != 0:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ContainerError(f"systemd's private bus never appeared\n{self.tail()}")
            time.sleep(0.1)
        state = self.run(
            "systemctl", "is-system-running", "--wait", check=False, timeout_s=BOOT_TIMEOUT_S
        ).stdout.strip()
        if state not in ("running", "degraded"):
            failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
            raise ContainerError(f"system state {state!r} after boot:\n{failed}")
        return time.monotonic() - began

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout_s: float = 30.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container, as root, with a clean environment."""
        command = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}", *argv]
        try:
            done = subprocess.run(
                command,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ContainerError(f"{shlex.join(argv)}: no result after {timeout_s} s") from exc
        if check and done.returncode != 0:
            raise ContainerError(
                f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def sh(
        self, script: str, *, check: bool = True, timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """A shell script inside (``bash -euo pipefail``)."""
        return self.run("bash", "-euo", "pipefail", "-c", script, check=check, timeout_s=timeout_s)

    def shutdown(self) -> list[str]:
        """Power off (SIGTERM to nspawn = a clean poweroff; a second one: at once; then
        SIGKILL), unmount the root, remove its cgroups on the host; returns what is left."""
        left: list[str] = []
        proc = self.nspawn
        if proc is not None and proc.poll() is None:
            for sig, wait_s in (
                (signal.SIGTERM, POWEROFF_TIMEOUT_S),
                (signal.SIGTERM, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    left.append(f"systemd-nspawn pid {proc.pid} ignored {sig.name}")
            if proc.poll() is None:
                left.append(f"systemd-nspawn pid {proc.pid} still running")
        for hierarchy in CGROUP_HIERARCHIES:
            left += _remove_cgroup(CGROUP_ROOT / hierarchy / self.name)
        if self.root_mounted:
            try:
                _run_host(["umount", str(self.root)])
                self.root_mounted = False
            except ContainerError as exc:
                left.append(str(exc))
        propagate = Path("/run/systemd/nspawn/propagate") / self.name
        if propagate.is_dir():
            try:
                propagate.rmdir()
            except OSError as exc:
                left.append(f"{propagate}: {exc}")
        return left

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_for_leader(self, deadline: float) -> int:
        """The container's systemd: nspawn's child named ``systemd``."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            self._check_alive()
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and _parent_and_name(entry) == (self.nspawn.pid, "systemd"):
                    return int(entry.name)
            time.sleep(0.1)
        raise ContainerError(f"no systemd under nspawn pid {self.nspawn.pid}\n{self.tail()}")

    def _check_alive(self) -> None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise ContainerError(
                f"systemd-nspawn exited {self.nspawn.returncode} while booting:\n{self.tail()}"
            )


def _run_host(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ContainerError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


def _parent_and_name(proc_dir: Path) -> tuple[int, str] | None:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return ppid, name


def _remove_cgroup(top: Path) -> list[str]:
    """Remove a cgroup tree, deepest first; what is still populated is reported, not killed."""
    if not top.is_dir():
        return []
    left = []
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            directory.rmdir()
        except OSError as exc:
            left.append(f"cgroup {directory}: {exc.strerror}")
    try:
        top.rmdir()
    except OSError as exc:
        procs_file = top / "cgroup.procs"
        procs = procs_file.read_text().split() if procs_file.exists() else []
        left.append(f"cgroup {top}: {exc.strerror} (pids {' '.join(procs) or 'none'})")
    return left
