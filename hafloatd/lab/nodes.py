"""Lab nodes: the real daemon and the real OCF agent run as processes against the simulator.

Used by ``hafloatd lab`` and by the integration tests. Everything is asynchronous so the
simulator (in the same event loop) keeps answering while a daemon or agent process runs.
Every process started here is stopped by its PID. Like the rest of ``lab/``, this imports
nothing from the daemon's side: it writes YAML and talks to processes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from hafloatd.lab.ports import free_port

REPO = Path(__file__).resolve().parents[2]  # the source tree (editable install)
AGENT = REPO / "ocf" / "hafloat"
TOKEN = "test-token"  # noqa: S105 - the simulator's default test token, not a secret


class NotifySocket:
    """A real sd_notify datagram socket, read as each message arrives (as systemd does), so a
    long-lived daemon never finds it full; keeps the last ``KEPT`` messages."""

    KEPT = 1000

    def __init__(self, path: str, sock: socket.socket) -> None:
        self.path = path
        self.sock = sock
        self.messages: collections.deque[str] = collections.deque(maxlen=self.KEPT)
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self.read_pending)

    @classmethod
    def bind(cls, path: str) -> NotifySocket:
        """Bind ``path`` and read it on the running event loop until ``close``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            sock.setblocking(False)
            return cls(path, sock)
        except BaseException:
            sock.close()
            raise

    def read_pending(self) -> None:
        """Take in every message that has arrived (the event loop calls this as they do)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                self.messages.append(self.sock.recv(65536).decode(errors="replace"))
        self._arrived.set()

    async def wait_for(self, needle: str, timeout: float = 15.0) -> str:
        """Wait for a message containing ``needle`` (searching ones already received first);
        the message found is taken out."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages:
                    if needle in message:
                        self.messages.remove(message)
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    def close(self) -> None:
        if self.sock.fileno() >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


@dataclass
class DaemonNode:
    """One simulated droplet's hafloatd process."""

    name: str
    droplet_id: int
    workdir: Path
    config: dict[str, Any]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    notify: NotifySocket | None = None
    log_path: Path | None = None
    terminating: bool = False

    @property
    def config_path(self) -> Path:
        return self.workdir / "hafloatd.yaml"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def socket_path(self) -> str:
        return str(self.config["control"]["socket_path"])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config['metrics']['listen']}/metrics"

    def write_config(self, config: Mapping[str, Any] | None = None) -> None:
        if config is not None:
            self.config = dict(config)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    async def start(self, wait_ready: bool = True) -> None:
        self.write_config()
        notify_path = str(self.workdir / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        self.notify = NotifySocket.bind(notify_path)
        self.log_path = self.workdir / "daemon.log"
        log_file = self.log_path.open("ab")
        env = {**self.env, "NOTIFY_SOCKET": notify_path}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hafloatd.cli",
            "run",
            "--config",
            str(self.config_path),
            env=env,
            stdout=log_file,
            stderr=log_file,
            cwd=str(self.workdir),
        )
        log_file.close()
        if wait_ready:
            await self.wait_ready()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.notify is not None and self.proc is not None
        ready = asyncio.ensure_future(self.notify.wait_for("READY=1", timeout))
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            ready.cancel()
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log()}")
        exited.cancel()
        ready.result()

    async def agent(self, action: str, **kwargs: Any) -> AgentResult:
        """Execute ``ocf/hafloat ACTION`` as Pacemaker would, against this node's daemon."""
        kwargs.setdefault("node", self.name)
        return await run_agent(action, socket_path=self.socket_path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    async def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.terminating = True

    async def kill(self) -> int | None:
        """``kill -9``: the process ends where it is and nothing of its shutdown runs (a crash).
        Its files stay as they were (socket, role files): ``start()`` runs it again on them."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        return self._ended(proc)

    async def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            if not self.terminating:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return self._ended(proc)

    def _ended(self, proc: asyncio.subprocess.Process) -> int | None:
        """Forget the process that ended (its notify socket too); its exit status."""
        self.proc = None
        self.terminating = False
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return proc.returncode


def node_config(
    sim: Any,
    droplet_id: int,
    workdir: Path,
    *,
    ips: list[dict[str, Any]] | None = None,
    health_url: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "state_dir": str(workdir / "run"),
        "api": {
            "base_url": sim.api_url,
            "token_source": "env",
            "request_timeout": "2s",
            "connect_timeout": "1s",
            "action_poll_interval": "50ms",
            "keepalive_interval": "5m",
            "holder_check_interval": "30s",
        },
        "metadata": {
            "base_url": sim.metadata_url(droplet_id),
            "cache_file": str(workdir / "lib" / "metadata.json"),
            "timeout": "1s",
            "poll_interval": "200ms",
        },
        "control": {
            "socket_path": str(workdir / "run" / "control.sock"),
            "group": None,
            "allowed_users": ["root"],
        },
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "ips": ips or [{"address": "203.0.113.10"}],
    }
    if sim.ca_file:
        config["api"]["ca_file"] = sim.ca_file
    if health_url:
        config["health"] = {
            "url": health_url,
            "interval": "100ms",
            "timeout": "80ms",
            "rise": 2,
            "fall": 2,
        }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def make_node(sim: Any, name: str, droplet_id: int, base: Path, **kwargs: Any) -> DaemonNode:
    workdir = base / name
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HAFLOATD_DO_TOKEN": TOKEN,
        "PYTHONPATH": str(REPO),
        "LANG": "C.UTF-8",
    }
    return DaemonNode(
        name, droplet_id, workdir, node_config(sim, droplet_id, workdir, **kwargs), env
    )


@dataclass
class AgentResult:
    rc: int
    stdout: str
    stderr: str
    wall_s: float = 0.0

    @property
    def exit_reason(self) -> str:
        for line in self.stderr.splitlines():
            if line.startswith("ocf-exit-reason:"):
                return line.split(":", 1)[1]
        return ""


async def run_agent(
    action: str,
    *,
    ip: str | None = "203.0.113.10",
    socket_path: str | None = None,
    timeout_ms: int = 20000,
    interval_ms: int | None = None,
    resource: str = "FloatIP",
    node: str = "node1",
    extra_env: Mapping[str, str] | None = None,
    wall_timeout: float = 60.0,
) -> AgentResult:
    """Execute ``ocf/hafloat ACTION`` with the environment Pacemaker gives an agent."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "OCF_ROOT": "/usr/lib/ocf",
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "1",
        "OCF_RESOURCE_INSTANCE": resource,
        "OCF_RESOURCE_TYPE": "hafloat",
        "OCF_RESOURCE_PROVIDER": "hafloatd",
        "OCF_RESKEY_CRM_meta_timeout": str(timeout_ms),
        "OCF_RESKEY_CRM_meta_on_node": node,
    }
    if ip is not None:
        env["OCF_RESKEY_ip"] = ip
    if socket_path is not None:
        env["OCF_RESKEY_socket"] = socket_path
    if interval_ms is not None:
        env["OCF_RESKEY_CRM_meta_interval"] = str(interval_ms)
    env.update(extra_env or {})
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(AGENT),
        action,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), wall_timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return AgentResult(proc.returncode, out.decode(), err.decode(), time.monotonic() - began)


class LoopbackWeb:
    """A droplet's web server on a loopback port: what the probe checks, what the proxy serves."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def backend(self) -> str:
        return f"127.0.0.1:{self.port}"


class StandInWeb(LoopbackWeb):
    """A real HTTP server standing in for nginx; its answers can be switched by the test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, _request: web.Request) -> web.Response:
        return web.Response(status=self.status, text=f"{self.name}\n")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def stand_in_web(name: str) -> AsyncIterator[StandInWeb]:
    server = StandInWeb(name)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


NGINX = "/usr/sbin/nginx"


class NginxWeb(LoopbackWeb):
    """Debian's real nginx as a droplet's web server: one process in the foreground, its own
    prefix, config and pid file, listening on a loopback port; stopped by its PID."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.prefix = workdir / f"nginx-{name}"
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @staticmethod
    def available() -> bool:
        return os.access(NGINX, os.X_OK)

    async def start(self) -> None:
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            "worker_processes 1;\n"
            "error_log stderr warn;\n"
            f"pid {self.prefix}/nginx.pid;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "  access_log off;\n"
            f"  client_body_temp_path {self.prefix}/tmp;\n"
            f"  proxy_temp_path {self.prefix}/tmp;\n"
            f"  fastcgi_temp_path {self.prefix}/tmp;\n"
            f"  uwsgi_temp_path {self.prefix}/tmp;\n"
            f"  scgi_temp_path {self.prefix}/tmp;\n"
            # Answered by nginx itself: its workers run as nobody and may not read the prefix.
            f"  server {{ listen 127.0.0.1:{self.port};\n"
            f"    location / {{ default_type text/plain; return 200 '{self.name}\\n'; }} }}\n"
            "}\n"
        )
        self.proc = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await self._wait_listening()

    async def _wait_listening(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise RuntimeError(f"nginx for {self.name} exited {self.proc.returncode}")
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                return

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)  # fast shutdown; the test wants it gone
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def nginx_web(name: str, workdir: Path) -> AsyncIterator[NginxWeb]:
    server = NginxWeb(name, workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
