"""One lab node: its namespaces, its directories and the services running inside it.

A node is a network namespace (made by ``network.py``) plus private mount, pid, uts and ipc
namespaces whose PID 1 is ``node_init.py``. Services are started inside it with ``nsenter``
in the order systemd would start them on a droplet: the web server, ``hafloatd run`` (ready
before the cluster stack), Corosync, Pacemaker. Each is known by its host PID, so it can be
stopped, killed or restarted by PID; SIGKILL of the node's PID 1 is a crash that takes every
one of them with it. The daemon's stderr is read through a pipe and each line stamped with
the wall time it arrived (as journald would), for the lab's timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hafloatd.lab.cluster.procs import (
    CLEAN_ENV,
    ClusterError,
    Completed,
    kill_and_reap,
    pid_namespace,
    run,
    send_signal,
    wait_child,
    wait_gone,
)
from hafloatd.lab.nodes import NGINX, NotifySocket

NODE_INIT = Path(__file__).with_name("node_init.py")
STAND_IN_WEB = Path(__file__).with_name("standin_web.py")
SYSTEM_PYTHON = "/usr/bin/python3"
WEB_PORT = 80

# Per-node directories bind-mounted over the host's (source name, mount point, owner).
BIND_MOUNTS: tuple[tuple[str, str], ...] = (
    ("etc-corosync", "/etc/corosync"),
    ("lib-corosync", "/var/lib/corosync"),
    ("lib-pacemaker", "/var/lib/pacemaker"),
    ("log-corosync", "/var/log/corosync"),
    ("log-pacemaker", "/var/log/pacemaker"),
)


@dataclass
class Service:
    """A process running inside a node: ``launcher`` is the host's ``nsenter`` process,
    ``pid`` the service itself (host PID)."""

    name: str
    launcher: asyncio.subprocess.Process
    pid: int
    reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.launcher.returncode is None

    async def wait(self) -> int:
        return await self.launcher.wait()


@dataclass
class StampedLine:
    at: float  # unix time the line arrived
    text: str


@dataclass
class ClusterNode:
    index: int
    name: str
    droplet_id: int
    netns: str
    address: str
    workdir: Path
    init: asyncio.subprocess.Process | None = None
    init_pid: int | None = None
    pid_ns: str | None = None
    services: dict[str, Service] = field(default_factory=dict)
    daemon_log: list[StampedLine] = field(default_factory=list)
    notify: NotifySocket | None = None
    web_kind: str = ""

    # --- layout ---------------------------------------------------------------------------

    @property
    def hafloatd_dir(self) -> Path:
        return self.workdir / "hafloatd"

    @property
    def config_path(self) -> Path:
        return self.hafloatd_dir / "hafloatd.yaml"

    @property
    def token_path(self) -> Path:
        return self.hafloatd_dir / "do-token"

    @property
    def page(self) -> str:
        """What this node's web server answers: the droplet it stands for."""
        return f"{self.name} droplet {self.droplet_id}"

    @property
    def backend(self) -> str:
        return f"{self.address}:{WEB_PORT}"

    @property
    def pacemaker_log(self) -> Path:
        return self.workdir / "log-pacemaker" / "pacemaker.log"

    @property
    def corosync_log(self) -> Path:
        return self.workdir / "log-corosync" / "corosync.log"

    def root_path(self, path: str) -> str:
        """A path inside the node's mount namespace, as the host reaches it."""
        if self.init_pid is None:
            raise ClusterError(f"{self.name} is not running")
        return f"/proc/{self.init_pid}/root{path}"

    def make_dirs(self) -> None:
        """Create the per-node directories (synchronous: called through to_thread)."""
        for source, _ in BIND_MOUNTS:
            (self.workdir / source).mkdir(parents=True, exist_ok=True)
        for sub in ("cib", "pengine", "blackbox", "cores"):
            (self.workdir / "lib-pacemaker" / sub).mkdir(exist_ok=True)
        (self.workdir / "log-pacemaker" / "bundles").mkdir(exist_ok=True)
        self.hafloatd_dir.mkdir(mode=0o700, exist_ok=True)
        (self.workdir / "web").mkdir(exist_ok=True)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.init is not None and self.init.returncode is None

    async def boot(self) -> None:
        """Start the node's PID 1 (fresh /run and /dev/shm, per-node directories mounted)."""
        if self.up:
            raise ClusterError(f"{self.name} is already up")
        binds = [f"{self.workdir / src}:{dst}" for src, dst in BIND_MOUNTS]
        self.init = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            SYSTEM_PYTHON,
            "-I",
            str(NODE_INIT),
            self.name,
            *binds,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(CLEAN_ENV),
        )
        assert self.init.stdout is not None and self.init.stderr is not None
        try:
            line = await asyncio.wait_for(self.init.stdout.readline(), 15)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            err = b""
            if self.init.returncode is not None or not line:
                with contextlib.suppress(TimeoutError):
                    err = await asyncio.wait_for(self.init.stderr.read(), 2)
            await self.crash()
            raise ClusterError(f"{self.name}: node init failed: {err.decode(errors='replace')}")
        self.init_pid = await wait_child(self.init.pid)
        self.pid_ns = await asyncio.to_thread(pid_namespace, self.init_pid)

    async def crash(self, timeout: float = 15.0) -> None:
        """SIGKILL the node's PID 1: the kernel kills everything inside (a power loss).

        Then wait for ``unshare`` and each ``nsenter`` to exit on their own: the kernel
        finishes tearing a pid namespace down only once every one of its processes has been
        reaped by its parent, and those parents are these host processes.
        """
        if self.init_pid is not None:
            send_signal(self.init_pid, signal.SIGKILL)
        launchers = [s.launcher for s in self.services.values()]
        if self.init is not None:
            launchers.append(self.init)
        for proc in launchers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout)
            await kill_and_reap(proc)  # only if it did not exit (PID 1 never started...)
        for service in self.services.values():
            if service.reader is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(service.reader, 5)
        self.services.clear()
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        self.init = None
        self.init_pid = None

    # --- running things inside ------------------------------------------------------------

    def nsenter(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        if self.init_pid is None:
            raise ClusterError(f"{self.name} is not running")
        variables = [f"{k}={v}" for k, v in (env if env is not None else CLEAN_ENV).items()]
        return [
            "nsenter",
            "-t",
            str(self.init_pid),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            # The init's root, not the mount namespace's: on a host where the lab runs in a
            # chroot (a fresh root, a build container) the two differ, and the node's files
            # are under the chroot.
            "--root",
            "--wd=/",
            "env",
            "-i",
            *variables,
            *argv,
        ]

    async def exec(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run a command inside the node (all its namespaces, a clean environment)."""
        return await run(self.nsenter(argv, env), timeout=timeout, check=check)

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        output: Path | None = None,
        stamp_lines: bool = False,
    ) -> Service:
        """Start a long-lived service inside the node; its output goes to ``output`` (or is
        read and stamped line by line)."""
        old = self.services.get(name)
        if old is not None and old.running:
            raise ClusterError(f"{name} is already running on {self.name} (pid {old.pid})")
        sink: int | IO[bytes] = asyncio.subprocess.DEVNULL
        handle: IO[bytes] | None = None
        if stamp_lines:
            sink = asyncio.subprocess.PIPE
        elif output is not None:
            handle = await asyncio.to_thread(output.open, "ab")
            sink = handle
        try:
            launcher = await asyncio.create_subprocess_exec(
                *self.nsenter(argv, env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            if handle is not None:
                handle.close()
        try:
            pid = await wait_child(launcher.pid)
        except BaseException:
            await kill_and_reap(launcher)
            raise
        service = Service(name, launcher, pid)
        if stamp_lines:
            service.reader = asyncio.create_task(self._stamp(launcher), name=f"{self.name}-{name}")
        self.services[name] = service
        return service

    async def _stamp(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.daemon_log.append(StampedLine(time.time(), line.decode(errors="replace").rstrip()))

    async def signal_service(self, name: str, signum: int) -> Service:
        service = self.services.get(name)
        if service is None or not service.running:
            raise ClusterError(f"{name} is not running on {self.name}")
        send_signal(service.pid, signum)
        return service

    async def stop_service(
        self, name: str, signum: int = signal.SIGTERM, timeout: float = 15.0
    ) -> None:
        """Stop a service by its PID (SIGKILL after ``timeout``) and wait until it is gone."""
        service = self.services.get(name)
        if service is None or not service.running:
            return
        send_signal(service.pid, signum)
        if not await wait_gone(service.pid, timeout):
            send_signal(service.pid, signal.SIGKILL)
        await kill_and_reap(service.launcher, timeout)
        if service.reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.reader, 5)

    # --- the services of a droplet --------------------------------------------------------

    async def start_web(self) -> None:
        """Debian's nginx on port 80 serving ``page``; the stand-in only where nginx is
        missing (``web_kind`` says which ran)."""
        web = self.workdir / "web"
        if os.access(NGINX, os.X_OK):
            conf = web / "nginx.conf"
            await asyncio.to_thread(conf.write_text, nginx_conf(web, self.page))
            await self.spawn(
                "web",
                [NGINX, "-p", str(web), "-c", str(conf), "-g", "daemon off;"],
                output=web / "nginx.out",
            )
            self.web_kind = "nginx"
        else:
            await self.spawn(
                "web",
                [SYSTEM_PYTHON, "-I", str(STAND_IN_WEB), "0.0.0.0", str(WEB_PORT), self.page],
                output=web / "stand-in.out",
            )
            self.web_kind = "stand-in web server (nginx is not installed)"
        await self.exec(
            [SYSTEM_PYTHON, "-I", str(STAND_IN_WEB), "--wait", "127.0.0.1", str(WEB_PORT)],
            timeout=15,
        )

    async def start_hafloatd(self, wait_ready: bool = True, timeout: float = 30.0) -> Service:
        """``hafloatd run`` inside the node, as its systemd unit would start it."""
        notify_path = self.hafloatd_dir / "notify.sock"
        if self.notify is not None:
            self.notify.close()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(notify_path.unlink)
        self.notify = NotifySocket.bind(str(notify_path))
        env = {**CLEAN_ENV, "NOTIFY_SOCKET": str(notify_path)}
        service = await self.spawn(
            "hafloatd",
            [sys.executable, "-m", "hafloatd.cli", "run", "--config", str(self.config_path)],
            env=env,
            stamp_lines=True,
        )
        if wait_ready:
            await self.wait_hafloatd_ready(timeout)
        return service

    async def wait_hafloatd_ready(self, timeout: float = 30.0) -> None:
        service, notify = self.services.get("hafloatd"), self.notify
        if service is None or notify is None:
            raise ClusterError(f"hafloatd is not running on {self.name}")
        ready = asyncio.ensure_future(notify.wait_for("READY=1", timeout))
        exited = asyncio.ensure_future(service.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            ready.cancel()
            tail = "\n".join(line.text for line in self.daemon_log[-10:])
            raise ClusterError(f"hafloatd on {self.name} exited {exited.result()}:\n{tail}")
        exited.cancel()
        ready.result()

    async def start_cluster_stack(self) -> None:
        """Corosync, then Pacemaker, with a clean environment (agents inherit pacemakerd's)."""
        await self.spawn("corosync", ["corosync", "-f"], output=self.workdir / "corosync.out")
        async with asyncio.timeout(20):
            while (await self.exec(["corosync-cfgtool", "-s"], check=False)).rc != 0:
                if not self.services["corosync"].running:
                    raise ClusterError(f"corosync on {self.name} exited; see {self.corosync_log}")
                await asyncio.sleep(0.05)
        await self.spawn("pacemakerd", ["pacemakerd"], output=self.workdir / "pacemakerd.out")

    def daemon_events(self, event: str, since: float = 0.0) -> list[StampedLine]:
        """Stamped daemon log lines carrying ``event`` (``event=NAME`` or a bare ``NAME``)."""
        keys = (f"event={event} ", f" {event} ")
        return [
            line
            for line in self.daemon_log
            if line.at >= since and any(k in line.text + " " for k in keys)
        ]


def nginx_conf(prefix: Path, page: str) -> str:
    """One worker, no file access (the page is answered by nginx itself), port 80."""
    temp = prefix / "tmp"
    return (
        "worker_processes 1;\n"
        "error_log stderr warn;\n"
        f"pid {prefix}/nginx.pid;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "  access_log off;\n"
        + "".join(
            f"  {kind}_temp_path {temp};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  server {{ listen {WEB_PORT};\n"
        f"    location / {{ default_type text/plain; return 200 '{page}\\n'; }} }}\n"
        "}\n"
    )
