"""What every section of bench/run shares: statistics, timed child processes, the simulator
and the daemon as processes, the installed agent, the baseline agent, a counting metadata front.

Only public interfaces of hafloatd: the ``hafloatd`` command (``run``, ``simulator``,
``install-agent``), the control socket (``hafloatd.control.client``), the files it installs.
Every process started here is registered and stopped by its PID (``Procs.stop_all``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from hafloatd.control.client import request_sync

REPO = Path(__file__).resolve().parents[2]
BASELINE_DIR = REPO / "bench" / "baseline"
BASELINE_AGENT = BASELINE_DIR / "floatip"
BASELINE_ASSIGN = BASELINE_DIR / "assign-ip"
HAFLOATD = str(Path(sys.executable).with_name("hafloatd"))
PYTHON = sys.executable  # the venv's interpreter: it has requests, for the baseline
RESERVED_IP = "203.0.113.10"
TOKEN = "bench-" + os.urandom(8).hex()
DROPLETS = (1001, 1002)
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class BenchError(Exception):
    """A section could not run; the message says what failed."""


# --- statistics ---------------------------------------------------------------------------


@dataclass
class Stats:
    n: int
    min: float
    median: float
    p90: float
    max: float

    def cells(self, fmt: str = "{:.2f}") -> list[str]:
        return [fmt.format(v) for v in (self.min, self.median, self.p90, self.max)]

    def to_json(self) -> dict[str, float]:
        return {
            "n": self.n,
            "min": self.min,
            "median": self.median,
            "p90": self.p90,
            "max": self.max,
        }


def stats(values: Sequence[float]) -> Stats | None:
    """min / median / p90 (nearest rank) / max, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-9 * len(ordered) // 10))  # ceil(0.9 n)
    return Stats(
        len(ordered), ordered[0], statistics.median(ordered), ordered[rank - 1], ordered[-1]
    )


# --- processes ----------------------------------------------------------------------------


@dataclass
class Procs:
    """Every long-running process the bench starts, stopped by PID at the end."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        with contextlib.suppress(ValueError):
            self.running.remove(proc)
        return int(proc.returncode)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


@dataclass
class Timed:
    """One child run: CLOCK_MONOTONIC just before the spawn and just after it was reaped."""

    started: float
    ended: float
    rc: int
    cpu_ms: float

    @property
    def wall_ms(self) -> float:
        return (self.ended - self.started) * 1000.0


def run_timed(
    argv: Sequence[str], env: Mapping[str, str], *, output: str = os.devnull, cwd: str = "/"
) -> Timed:
    """posix_spawn + wait4: wall from just before the spawn to the reap, CPU from rusage."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        started = time.monotonic()
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
        )
    finally:
        os.chdir(previous)
    _, status, usage = os.wait4(pid, 0)
    ended = time.monotonic()
    return Timed(
        started,
        ended,
        os.waitstatus_to_exitcode(status),
        (usage.ru_utime + usage.ru_stime) * 1000.0,
    )


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block (this thread, and what it spawns) in network namespace ``name``."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise BenchError(f"setns({name}): {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise BenchError(f"setns back: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(own)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for PID {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fds_to_ports(pid: int, ports: set[int]) -> int:
    """Open fds of ``pid`` that are TCP connections to one of ``ports`` (on any address): the
    connections an HTTP client keeps pooled, bounded by its pool's size."""
    remote: dict[str, int] = {}  # socket inode -> remote port
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                remote[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and remote.get(target[8:-1]) in ports:
                count += 1
    return count


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- the simulator as a process -----------------------------------------------------------


class SimProcess:
    """``hafloatd simulator`` with droplets 1001/1002 and the reserved IP held by 1001."""

    def __init__(
        self,
        procs: Procs,
        workdir: Path,
        *,
        tls: bool = False,
        host: str = "127.0.0.1",
        action_delay: float = 0.0,
        netns: str | None = None,
    ) -> None:
        argv = [
            HAFLOATD,
            "simulator",
            "--json",
            "--log-level",
            "warning",
            "--host",
            host,
            "--token",
            TOKEN,
            "--action-delay",
            f"{action_delay:g}",
            "--reserved-ip",
            f"{RESERVED_IP}:nyc3:1001",
        ]
        for number, droplet in enumerate(DROPLETS, 1):
            argv += ["--droplet", f"{droplet}:node{number}:nyc3"]
        if tls:
            argv.append("--tls")
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.procs = procs
        log = (workdir / f"sim-{os.urandom(3).hex()}.log").open("ab")
        self.proc = procs.start(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the simulator exited {self.proc.wait()}: see {log.name}")
        info = json.loads(line)
        self.api_url: str = info["api_url"]
        self.ca_file: str | None = info.get("ca_file")
        self.metadata: dict[int, str] = {int(k): v for k, v in info["metadata"].items()}

    def stop(self) -> None:
        self.procs.stop(self.proc)

    def _admin(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.api_url}/_sim/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        context = None
        if self.ca_file:
            import ssl  # noqa: PLC0415

            context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(req, timeout=timeout, context=context) as reply:
            return json.loads(reply.read() or b"null")

    def exchanges(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self._admin("GET", f"exchanges?since={since}")["exchanges"])

    def last_seq(self) -> int:
        found = self.exchanges(0)
        return int(found[-1]["seq"]) if found else 0

    def wait_idle(self, timeout: float = 20.0) -> None:
        self._admin("POST", f"wait-idle?timeout={timeout:g}", timeout=timeout + 5)

    def set_holder(self, droplet_id: int | None) -> None:
        self._admin("PUT", f"reserved_ips/{RESERVED_IP}/holder", {"droplet_id": droplet_id})

    def state(self) -> dict[str, Any]:
        return dict(self._admin("GET", "state"))


# --- the daemon as a process --------------------------------------------------------------


def daemon_config(
    workdir: Path,
    sim: SimProcess,
    droplet_id: int,
    *,
    metadata_url: str | None = None,
    health_url: str | None = None,
    health_interval: str = "2s",
    metrics: bool = True,
    holder_check_interval: str | None = None,
) -> dict[str, Any]:
    """A droplet's hafloatd.yaml: production defaults except the endpoints, paths and access
    (and ``api.holder_check_interval`` when given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "do-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    api: dict[str, Any] = {
        "base_url": sim.api_url,
        "token_source": "file",
        "token_file": str(token_file),
    }
    if sim.ca_file:
        api["ca_file"] = sim.ca_file
    if holder_check_interval:
        api["holder_check_interval"] = holder_check_interval
    config: dict[str, Any] = {
        "ips": [{"address": RESERVED_IP}],
        "api": api,
        "metadata": {
            "base_url": metadata_url or sim.metadata[droplet_id],
            "cache_file": str(workdir / "metadata.json"),
        },
        "control": {
            "socket_path": str(workdir / "run" / "control.sock"),
            "group": None,
            "allowed_users": ["root"],
        },
        "metrics": {"listen": "127.0.0.1:0" if metrics else None},
        "state_dir": str(workdir / "run"),
    }
    if health_url:
        config["health"] = {
            "url": health_url,
            "interval": health_interval,
            "timeout": "500ms" if health_interval == "1s" else "1s",
        }
    return config


class Daemon:
    """``hafloatd run`` as systemd would run it (Type=notify): ready when it says READY=1."""

    def __init__(
        self, procs: Procs, workdir: Path, config: dict[str, Any], name: str = "hafloatd"
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "hafloatd.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.socket_path = str(config["control"]["socket_path"])
        self.log_path = workdir / f"{name}.log"
        notify_path = str(workdir / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        env = {"PATH": PATH, "LANG": "C.UTF-8", "NOTIFY_SOCKET": notify_path}
        log = self.log_path.open("ab")
        self.procs = procs
        self.proc = procs.start(
            [HAFLOATD, "run", "--config", str(self.config_path)],
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=str(workdir),
        )
        log.close()
        try:
            deadline = time.monotonic() + 30
            while True:
                notify.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
                try:
                    if b"READY=1" in notify.recv(4096):
                        break
                except TimeoutError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.procs.stop(self.proc)
                    raise BenchError(
                        f"hafloatd did not become ready: {self.log_path.read_text()[-2000:]}"
                    )
        finally:
            notify.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.procs.stop(self.proc)

    def request(self, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return request_sync(self.socket_path, payload, timeout)

    def ip_status(self) -> dict[str, Any]:
        reply = self.request({"op": "status", "deadline_ms": 5000})
        for entry in reply.get("ips", []):
            if entry.get("ip") == RESERVED_IP:
                return dict(entry)
        raise BenchError(f"no status for {RESERVED_IP}: {reply}")


# --- agents -------------------------------------------------------------------------------


def install_agent(root: Path) -> Path:
    """``hafloatd install-agent --root ROOT``: launcher, module and its bytecode."""
    done = subprocess.run(
        [HAFLOATD, "install-agent", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root"},
    )
    if done.returncode != 0:
        raise BenchError(f"hafloatd install-agent failed: {done.stderr}")
    agent = root / "usr/lib/ocf/resource.d/hafloatd/hafloat"
    if not agent.is_file():
        raise BenchError(f"install-agent did not lay out {agent}")
    return agent


def ocf_env(action: str, interval_ms: int = 0, node: str = "node2") -> dict[str, str]:
    """The environment Pacemaker's executor gives an agent (no parameters yet)."""
    return {
        "PATH": PATH,
        "LANG": "C.UTF-8",
        "OCF_ROOT": "/usr/lib/ocf",
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "1",
        "OCF_RESOURCE_INSTANCE": "FloatIP",
        "OCF_RESKEY_CRM_meta_timeout": "20000",
        "OCF_RESKEY_CRM_meta_interval": str(interval_ms),
        "OCF_RESKEY_CRM_meta_on_node": node,
        "OCF_RESKEY_CRM_meta_name": action,
        "OCF_RESKEY_crm_feature_set": "3.16.2",
        "__OCF_ACTION": action,
    }


def hafloat_env(action: str, socket_path: str, interval_ms: int = 0) -> dict[str, str]:
    return {
        **ocf_env(action, interval_ms),
        "OCF_RESOURCE_TYPE": "hafloat",
        "OCF_RESOURCE_PROVIDER": "hafloatd",
        "OCF_RESKEY_ip": RESERVED_IP,
        "OCF_RESKEY_socket": socket_path,
    }


def baseline_env(
    action: str,
    metadata_url: str,
    api_url: str,
    ca_bundle: str | None = None,
    interval_ms: int = 0,
) -> dict[str, str]:
    env = {
        **ocf_env(action, interval_ms),
        "OCF_RESOURCE_TYPE": "floatip",
        "OCF_RESOURCE_PROVIDER": "hafloatd-baseline",
        "OCF_RESKEY_floating_ip": RESERVED_IP,
        "OCF_RESKEY_do_token": TOKEN,
        "FLOATIP_METADATA_URL": metadata_url,
        "FLOATIP_API_URL": api_url,
        "FLOATIP_PYTHON": PYTHON,
    }
    if ca_bundle:
        env["FLOATIP_CA_BUNDLE"] = ca_bundle
    return env


def ca_bundle_with(ca_file: str, path: Path) -> str:
    """requests' own CA bundle plus the simulator's CA: the baseline loads a full bundle, as
    the recipe did against the real API."""
    import certifi  # noqa: PLC0415

    path.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + Path(ca_file).read_bytes())
    return str(path)


def interpreter_of(agent: Path) -> str:
    first = agent.read_text().splitlines()[0]
    return first[2:].split()[0]


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n, path=PATH) is None]
    if missing:
        raise BenchError(f"missing on this machine: {', '.join(missing)}")


# --- a counting front for the metadata service --------------------------------------------


class MetadataFront:
    """Answers the metadata service's paths from a cache filled from the real one on first
    use (the state does not change while it serves), and counts every request by the TCP
    connection it came on: a keep-alive connection held by the daemon is told apart from the
    new ones an agent opens."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.cache: dict[str, tuple[int, bytes]] = {}
        self.requests: list[tuple[float, tuple[str, int]]] = []  # (monotonic, peer)
        self.first_seen: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                now = time.monotonic()
                with front.lock:
                    front.requests.append((now, self.client_address))
                    front.first_seen.setdefault(self.client_address, now)
                status, body = front.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metadata/v1"

    def answer(self, path: str) -> tuple[int, bytes]:
        cached = self.cache.get(path)
        if cached is not None:
            return cached
        base = self.upstream.rsplit("/metadata/v1", 1)[0]
        try:
            with urllib.request.urlopen(base + path, timeout=5) as reply:
                found = (int(reply.status), reply.read())
        except urllib.error.HTTPError as exc:
            found = (exc.code, exc.read())
        self.cache[path] = found
        return found

    def new_connection_requests(self, start: float, end: float) -> int:
        """Requests on connections first seen in [start, end]."""
        with self.lock:
            return sum(1 for _, peer in self.requests if start <= self.first_seen[peer] <= end)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class WebStandIn:
    """The node's web server for the health probe: 200 ``ok`` on 127.0.0.1."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
