"""The daemon's runtime inside the unit's seccomp sandbox, rebuilt here without systemd.

This machine (and CI) has no systemd as PID 1, so the unit cannot simply be started. What
can go wrong at run time is the kernel-side filtering, and that part is reproducible: read
``SystemCallFilter=``, ``SystemCallErrorNumber=``, ``MemoryDenyWriteExecute=`` and
``RestrictAddressFamilies=`` from systemd/hafloatd.service, expand the syscall groups with
``systemd-analyze syscall-filter``, and install the same seccomp programs systemd 252
installs (through libseccomp, as systemd does) in a child process. Then the child imports
the daemon's C extensions (uvloop, aiohttp, PyYAML, OpenSSL) and does what the daemon does:
TLS and plain HTTP over loopback, a Unix control socket with SO_PEERCRED, sd_notify, a
subprocess (crm_resource's path), signals, threads, atomic file writes. Negative controls
prove the sandbox is really on (chown, nice, W+X mmap and netlink sockets are refused).

Mount namespaces, capabilities and users are not emulated: systemd-analyze judges those.
"""

# The runtime is imported inside functions on purpose: only after the filters are in place.
# ruff: noqa: PLC0415

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hafloatd.service"
CHILD_TIMEOUT_S = 120
WORKLOAD_TIMEOUT_S = 60

# Modules the daemon loads; importing them under MemoryDenyWriteExecute is part of the test
# (an extension needing an executable stack or text relocations fails right at import).
RUNTIME_MODULES = [
    "uvloop",
    "aiohttp",
    "aiohttp.web",
    "yaml",
    "prometheus_client",
    "ssl",
    "hafloatd.sdnotify",
    "hafloatd.daemon",
]

# libseccomp ABI (seccomp.h)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
AF_MAX = 46  # linux/socket.h in the kernels systemd 252 targets
SHM_EXEC = 0o100000


def SCMP_ACT_ERRNO(code: int) -> int:  # the C macro's name
    return 0x00050000 | (code & 0xFFFF)


# -- the test (parent side) --------------------------------------------------------------


def test_daemon_runtime_works_inside_the_units_seccomp_sandbox() -> None:
    import pytest

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd); CI installs it")
    if _find_libseccomp() is None:
        pytest.skip("libseccomp.so.2 not found (apt-get install libseccomp2)")
    if "Seccomp:" not in Path("/proc/self/status").read_text():
        pytest.skip("this kernel has no seccomp support")
    try:
        import hafloatd.daemon  # noqa: F401
    except ImportError as exc:  # pragma: no cover - another module is broken, not the unit
        pytest.skip(f"hafloatd.daemon does not import even outside the sandbox: {exc}")

    spec = sandbox_spec(analyze)
    assert "chown" not in spec["allow"] and "setpriority" not in spec["allow"]
    with _workdir() as workdir:
        spec["workdir"] = workdir
        spec.update(_tls_files(workdir))
        spec["modules"] = RUNTIME_MODULES
        result = subprocess.run(
            [sys.executable, __file__, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["controls"] == {
        "chown": "EPERM",
        "nice": "EPERM",
        "mmap_write_exec": "EPERM",
        "mprotect_exec": "EPERM",
        "netlink_socket": "EAFNOSUPPORT",
    }
    assert report["workload"] == {
        "imports": RUNTIME_MODULES,
        "loop": "uvloop",
        "https_get": 200,
        "metrics_get": 200,
        "unix_control_reply": "pong",
        "peer_uid": os.getuid(),
        "socket_mode": "0o660",
        "sd_notify": "READY=1\nSTATUS=sandboxed\n",
        "subprocess_rc": 0,
        "sighup": True,
        "getaddrinfo": True,
        "to_thread": 42,
        "yaml": {"ips": ["203.0.113.10"]},
        "atomic_write": "role=started",
    }


def sandbox_spec(analyze: str) -> dict[str, Any]:
    """The filter settings of the shipped unit, syscall groups expanded by systemd."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    groups = _syscall_groups(analyze)
    allow: set[str] = set()
    for index, entry in enumerate(settings["SystemCallFilter"]):
        deny = entry.startswith("~")
        names = set().union(*(_expand(name, groups) for name in entry.lstrip("~").split()))
        if index == 0:
            assert not deny, "the unit's first SystemCallFilter= must be an allow list"
        allow = allow - names if deny else allow | names
    families = settings["RestrictAddressFamilies"][-1].split()
    return {
        "allow": sorted(allow),
        "errno": settings["SystemCallErrorNumber"][-1],
        "mdwe": settings["MemoryDenyWriteExecute"][-1] == "yes",
        "families": families,
    }


def _syscall_groups(analyze: str) -> dict[str, list[str]]:
    output = subprocess.run(
        [analyze, "syscall-filter"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_PAGER": ""},
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in output.splitlines():
        if raw.startswith("@"):
            current = groups.setdefault(raw.strip(), [])
        elif raw.startswith(" ") and current is not None:
            item = raw.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def _expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(_expand(member, groups) for member in groups[name]))


@contextlib.contextmanager
def _workdir() -> Iterator[str]:
    # Short path: AF_UNIX socket paths are limited to 108 bytes.
    path = tempfile.mkdtemp(prefix="hfsb-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tls_files(workdir: str) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path = os.path.join(workdir, "ca.pem")
    chain_path = os.path.join(workdir, "server.pem")
    ca.cert_pem.write_to_path(ca_path)
    cert.private_key_and_cert_chain_pem.write_to_path(chain_path)
    return {"ca_file": ca_path, "server_chain": chain_path}


# -- the sandbox (child side) ------------------------------------------------------------


def _find_libseccomp() -> str | None:
    name = ctypes.util.find_library("seccomp")
    if name:
        return name
    for candidate in ("/lib/x86_64-linux-gnu/libseccomp.so.2", "/usr/lib/libseccomp.so.2"):
        if os.path.exists(candidate):
            return candidate
    return None


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Seccomp:
    def __init__(self) -> None:
        path = _find_libseccomp()
        assert path is not None
        lib = ctypes.CDLL(path, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def program(self, default_action: int) -> int:
        ctx = self.lib.seccomp_init(default_action)
        assert ctx, "seccomp_init failed"
        return int(ctx)

    def rule(
        self, ctx: int, action: int, name: str, *conditions: tuple[int, int, int, int]
    ) -> bool:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # unknown to libseccomp, or a pseudo-syscall of another ABI
            return False
        array = (_ArgCmp * max(1, len(conditions)))(*[_ArgCmp(*c) for c in conditions])
        rc = self.lib.seccomp_rule_add_array(ctx, action, nr, len(conditions), array)
        assert rc == 0, f"seccomp_rule_add({name}) failed: {rc}"
        return True

    def load(self, ctx: int) -> None:
        rc = self.lib.seccomp_load(ctx)
        self.lib.seccomp_release(ctx)
        assert rc == 0, f"seccomp_load failed: {rc}"


def install_sandbox(spec: dict[str, Any]) -> None:
    """The three seccomp programs systemd 252 installs for these settings."""
    import socket

    seccomp = _Seccomp()
    # RestrictAddressFamilies=: socket() of any other family fails with EAFNOSUPPORT.
    allowed = {getattr(socket, name) for name in spec["families"]}
    ctx = seccomp.program(SCMP_ACT_ALLOW)
    for family in range(AF_MAX):
        if family not in allowed:
            seccomp.rule(
                ctx, SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, family, 0)
            )
    seccomp.rule(ctx, SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_GE, AF_MAX, 0))
    seccomp.load(ctx)
    # MemoryDenyWriteExecute=: no W+X mapping, no turning memory executable later.
    if spec["mdwe"]:
        import mmap

        write_exec = mmap.PROT_WRITE | mmap.PROT_EXEC
        ctx = seccomp.program(SCMP_ACT_ALLOW)
        eperm = SCMP_ACT_ERRNO(errno.EPERM)
        seccomp.rule(ctx, eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, write_exec, write_exec))
        for name in ("mprotect", "pkey_mprotect"):
            seccomp.rule(ctx, eperm, name, (2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        seccomp.rule(ctx, eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        seccomp.load(ctx)
    # SystemCallFilter= (an allow list) with SystemCallErrorNumber=: last, it forbids seccomp().
    ctx = seccomp.program(SCMP_ACT_ERRNO(getattr(errno, spec["errno"])))
    for name in spec["allow"]:
        seccomp.rule(ctx, SCMP_ACT_ALLOW, name)
    seccomp.load(ctx)


def _refused(call: Any) -> str:
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "allowed"


def negative_controls(workdir: str) -> dict[str, str]:
    import mmap
    import socket

    probe = os.path.join(workdir, "probe")
    Path(probe).write_text("x")

    def mprotect_exec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        page = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if libc.mprotect(page, 4096, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")

    return {
        "chown": _refused(lambda: os.chown(probe, -1, os.getgid())),
        "nice": _refused(lambda: os.nice(1)),
        "mmap_write_exec": _refused(
            lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        ),
        "mprotect_exec": _refused(mprotect_exec),
        "netlink_socket": _refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
    }


async def workload(spec: dict[str, Any]) -> dict[str, Any]:
    """What the daemon does at run time, each step reduced to its system calls."""
    import asyncio
    import signal
    import socket
    import ssl
    import struct

    import aiohttp
    import prometheus_client
    import yaml
    from aiohttp import web

    from hafloatd.sdnotify import SdNotifier

    workdir = spec["workdir"]
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"imports": spec["modules"], "loop": type(loop).__module__.split(".")[0]}

    # HTTPS and plain HTTP over loopback: the DO API client and the metrics endpoint.
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Gauge("hafloatd_up", "up", registry=registry).set(1)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(registry))

    app = web.Application()
    app.router.add_get("/", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(spec["server_chain"])
    tls_site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    plain_site = web.TCPSite(runner, "127.0.0.1", 0)
    await tls_site.start()
    await plain_site.start()
    tls_port = tls_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    plain_port = plain_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client_tls = ssl.create_default_context(cafile=spec["ca_file"])
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_tls), timeout=timeout
    ) as session:
        async with session.get(f"https://127.0.0.1:{tls_port}/") as response:
            out["https_get"] = response.status
        async with session.get(f"http://127.0.0.1:{plain_port}/") as response:
            out["metrics_get"] = response.status
    await runner.cleanup()

    # The control socket: a Unix stream server, mode 0660, peer credentials.
    control_path = os.path.join(workdir, "control.sock")
    peer: dict[str, int] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, peer["uid"], _ = struct.unpack("3i", creds)
        await reader.readline()
        writer.write(b"pong\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, control_path)
    os.chmod(control_path, 0o660)
    out["socket_mode"] = oct(os.stat(control_path).st_mode & 0o777)
    reader, writer = await asyncio.open_unix_connection(control_path)
    writer.write(b"ping\n")
    await writer.drain()
    out["unix_control_reply"] = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    out["peer_uid"] = peer["uid"]

    # sd_notify to a datagram socket.
    notify_path = os.path.join(workdir, "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(notify_path)
    receiver.setblocking(False)
    with SdNotifier({"NOTIFY_SOCKET": notify_path}) as notifier:
        notifier.ready("sandboxed")
        out["sd_notify"] = (await loop.sock_recv(receiver, 4096)).decode()
    receiver.close()

    # A child process (crm_resource --fail takes this path), signals, threads, DNS.
    process = await asyncio.create_subprocess_exec("/bin/true")
    out["subprocess_rc"] = await process.wait()
    hup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    os.kill(os.getpid(), signal.SIGHUP)
    await hup.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    out["sighup"] = True
    out["getaddrinfo"] = bool(await loop.getaddrinfo("127.0.0.1", 443, type=socket.SOCK_STREAM))
    out["to_thread"] = await asyncio.to_thread(lambda: 42)
    out["yaml"] = yaml.load("ips: ['203.0.113.10']\n", Loader=yaml.CSafeLoader)

    # Atomic state write: temp file, fsync, rename, as the role store does.
    final = os.path.join(workdir, "role")
    temp = final + ".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, b"role=started")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, final)
    out["atomic_write"] = Path(final).read_text()
    return out


def child_main(spec: dict[str, Any]) -> int:
    install_sandbox(spec)
    # Imported only now, so every extension module is loaded under the filters.
    import asyncio
    import importlib

    for name in spec["modules"]:
        importlib.import_module(name)
    import uvloop

    controls = negative_controls(spec["workdir"])

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(WORKLOAD_TIMEOUT_S):
            return await workload(spec)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(bounded())
    print(json.dumps({"controls": controls, "workload": result}))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(json.loads(sys.argv[1])))
