"""Benchmark: what one `monitor` of the OCF agent costs, beside its floors and the recipe.

Installs the agent as `hafloatd install-agent --root` lays it out (the launcher in
resource.d/hafloatd/, the module and its bytecode, compiled by the agent's interpreter, in
lib/hafloatd/) under a temporary root, then runs `hafloat monitor` N times (default 200)
exactly as Pacemaker would (its shebang, a Pacemaker-like environment, a recurring-monitor
interval) against a minimal reply server on a Unix socket, and in the same run, interleaved
round-robin (each round starting one row later) so drift and position hit every row
alike:

- ``python3 -I -S -c pass`` with the agent's own interpreter: the floor for any Python agent;
- ``/bin/sh -c true``: the floor for any agent at all;
- the seed recipe's monitor shape (``bench/recipe_floatip_monitor.sh``: bash, ocf-shellfuncs,
  two ``curl``s to a metadata stand-in on 127.0.0.1), when curl is installed.

Wall time is spawn -> reaped, measured by this process; CPU is the child's user + system time
from ``os.wait4``. Prints median and p90 of each, and the target check: the agent's median
(wall and CPU) within 0.5 ms of the interpreter floor measured in the same run
(../shared/BENCHMARKS.md). Loopback only; every child is reaped by its PID.

    .venv/bin/python bench/ocf_monitor.py [-n 200] [--idle-ms 5] [--agent PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "bench" / "recipe_floatip_monitor.sh"
RESERVED_IP = "203.0.113.10"
# monitor <= interpreter floor + 0.5 ms median, wall and CPU (../shared/BENCHMARKS.md)
TARGET_OVER_FLOOR_MS = 0.5
REPLY = b'{"ok":true,"ocf":0,"reason":"","role":"started","holder_is_self":true}\n'


@dataclass
class Row:
    """One command measured N times."""

    name: str
    argv: list[str]
    env: dict[str, str]
    expect_rc: int = 0
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def run_once(self, cwd: str) -> None:
        started = time.perf_counter()
        pid = _spawn_in(self.argv, self.env, cwd)
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - started
        rc = os.waitstatus_to_exitcode(status)
        if rc != self.expect_rc:
            raise SystemExit(f"{self.name}: exit code {rc}, expected {self.expect_rc}")
        self.wall_ms.append(elapsed * 1000.0)
        self.cpu_ms.append((usage.ru_utime + usage.ru_stime) * 1000.0)


def _spawn_in(argv: list[str], env: dict[str, str], cwd: str) -> int:
    # Python 3.11's posix_spawn cannot chdir in the child: change ours around the spawn
    # (the server threads never use the cwd). Output goes to /dev/null, as under Pacemaker
    # it goes to a pipe nobody reads until exit.
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    finally:
        os.chdir(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=200, help="runs per row (200)")
    parser.add_argument(
        "--idle-ms", type=float, default=5.0, help="idle time between two runs, ms (5)"
    )
    parser.add_argument(
        "--agent", type=Path, default=None, help="agent to measure (default: install one)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="hafloat-bench-") as tmp,
        reply_server(os.path.join(tmp, "c.sock")) as (sock_path, requests),
        metadata_server() as metadata_url,
    ):
        agent = args.agent or _install_agent(Path(tmp) / "root")
        interpreter = _shebang_interpreter(agent)
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        ocf_env = {
            **base_env,
            "OCF_ROOT": "/usr/lib/ocf",
            "OCF_RA_VERSION_MAJOR": "1",
            "OCF_RA_VERSION_MINOR": "1",
            "OCF_RESOURCE_INSTANCE": "FloatIP",
            "OCF_RESOURCE_TYPE": "hafloat",
            "OCF_RESOURCE_PROVIDER": "hafloatd",
            "OCF_RESKEY_CRM_meta_timeout": "20000",
            "OCF_RESKEY_CRM_meta_interval": "10000",
            "OCF_RESKEY_CRM_meta_on_node": "node1",
            "OCF_RESKEY_CRM_meta_name": "monitor",
            "OCF_RESKEY_crm_feature_set": "3.16.2",
            "__OCF_ACTION": "monitor",
        }
        rows = [
            Row(
                "hafloat monitor",
                [str(agent), "monitor"],
                {**ocf_env, "OCF_RESKEY_ip": RESERVED_IP, "OCF_RESKEY_socket": sock_path},
            ),
            Row(
                "hafloat start (answered at once)",
                [str(agent), "start"],
                {
                    **ocf_env,
                    "OCF_RESKEY_ip": RESERVED_IP,
                    "OCF_RESKEY_socket": sock_path,
                    "OCF_RESKEY_CRM_meta_interval": "0",
                    "OCF_RESKEY_CRM_meta_name": "start",
                    "__OCF_ACTION": "start",
                },
            ),
            Row(f"{interpreter} -I -S -c pass", [interpreter, "-I", "-S", "-c", "pass"], base_env),
            Row("/bin/sh -c true", ["/bin/sh", "-c", "true"], base_env),
        ]
        notes: list[str] = []
        curl = shutil.which("curl")
        if curl:
            rows.append(
                Row(
                    "recipe floatip monitor (bash + 2 curl)",
                    ["/bin/bash", str(RECIPE), "monitor"],
                    {**ocf_env, "METADATA_URL": metadata_url},
                )
            )
        else:
            notes.append("recipe baseline skipped: curl is not installed")

        for row in rows:  # warm the page cache and the servers
            row.run_once(tmp)
            row.wall_ms.clear()
            row.cpu_ms.clear()
        requests.clear()
        for round_no in range(args.runs):
            # rotate who goes first: the row after the heavy recipe runs on colder caches
            shift = round_no % len(rows)
            for row in rows[shift:] + rows[:shift]:
                row.run_once(tmp)
                if args.idle_ms > 0:
                    time.sleep(args.idle_ms / 1000.0)
        ops = sorted(str(r.get("op")) for r in requests)
        if ops != ["monitor"] * args.runs + ["start"] * args.runs:
            raise SystemExit(
                f"reply server saw {len(requests)} requests, expected {args.runs} monitor and "
                f"{args.runs} start"
            )

    floor = rows[2]
    result: dict[str, object] = {
        "runs": args.runs,
        "idle_ms": args.idle_ms,
        "cpus": os.cpu_count(),
        "rows": [
            {
                "name": row.name,
                "wall_median_ms": _pct(row.wall_ms, 50),
                "wall_p90_ms": _pct(row.wall_ms, 90),
                "cpu_median_ms": _pct(row.cpu_ms, 50),
                "cpu_p90_ms": _pct(row.cpu_ms, 90),
            }
            for row in rows
        ],
        "notes": notes,
    }
    result["agent"] = str(agent)
    target: dict[str, object] = {"over_floor_ms": TARGET_OVER_FLOOR_MS}
    result["target"] = target
    for key, row in (("monitor", rows[0]), ("start", rows[1])):
        over_wall = _pct(row.wall_ms, 50) - _pct(floor.wall_ms, 50)
        over_cpu = _pct(row.cpu_ms, 50) - _pct(floor.cpu_ms, 50)
        target[key] = {
            "over_floor_wall_ms": round(over_wall, 3),
            "over_floor_cpu_ms": round(over_cpu, 3),
            "met": over_wall <= TARGET_OVER_FLOOR_MS and over_cpu <= TARGET_OVER_FLOOR_MS,
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result, rows)
    return 0


def _print_table(result: dict[str, object], rows: list[Row]) -> None:
    print(
        f"monitor cost, N={result['runs']} per row, interleaved, "
        f"{result['idle_ms']} ms idle, {result['cpus']} CPUs; ms"
    )
    width = max(len(row.name) for row in rows)
    print(f"{'command':<{width}}  {'wall p50':>8}  {'wall p90':>8}  {'cpu p50':>8}  {'cpu p90':>8}")
    for row in rows:
        print(
            f"{row.name:<{width}}  {_pct(row.wall_ms, 50):8.2f}  {_pct(row.wall_ms, 90):8.2f}"
            f"  {_pct(row.cpu_ms, 50):8.2f}  {_pct(row.cpu_ms, 90):8.2f}"
        )
    target = result["target"]
    assert isinstance(target, dict)
    print(f"agent: {result['agent']}")
    for key in ("monitor", "start"):
        over = target[key]
        assert isinstance(over, dict)
        print(
            f"{key} over the interpreter floor: {over['over_floor_wall_ms']:+.2f} ms wall, "
            f"{over['over_floor_cpu_ms']:+.2f} ms CPU median (target: at most "
            f"+{TARGET_OVER_FLOOR_MS} ms each): {'met' if over['met'] else 'NOT met'}"
        )
    notes = result["notes"]
    assert isinstance(notes, list)
    for note in notes:
        print(f"note: {note}")


def _pct(values: list[float], percentile: int) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percentile / 100 * (len(ordered) - 1))))
    return round(ordered[index], 3)


def _install_agent(root: Path) -> Path:
    """The agent as install-agent lays it out under ``root``: launcher, module, bytecode."""
    from hafloatd import install  # noqa: PLC0415 - only when no --agent is given

    plan = install.make_plan(
        root=root,
        source=install.packaged_files(),
        unit=False,
        config_example=False,
        hafloatd_bin=None,
    )
    _lines, warnings = install.apply_plan(plan, dry_run=False)
    for warning in (*plan.warnings, *warnings):
        print(f"warning: {warning}", file=sys.stderr)
    return root / install.AGENT_DEST


def _shebang_interpreter(agent: Path) -> str:
    first = agent.read_text(encoding="utf-8").splitlines()[0]
    if not first.startswith("#!"):
        raise SystemExit(f"{agent}: no shebang line")
    return first[2:].split()[0]


@contextmanager
def reply_server(path: str) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A minimal control-socket peer: records each request, answers 'running'."""
    requests: list[dict[str, object]] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    requests.append(json.loads(data.split(b"\n", 1)[0]))
                    conn.sendall(REPLY)

    thread = threading.Thread(target=serve, name="reply-server", daemon=True)
    thread.start()
    try:
        yield path, requests
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5.0)


class _MetadataHandler(BaseHTTPRequestHandler):
    """The two metadata paths the recipe reads, answering 'an IP is active here'."""

    answers = {
        "/metadata/v1/reserved_ip/ipv4/active": b"true",
        "/metadata/v1/reserved_ip/ipv4/ip_address": RESERVED_IP.encode(),
    }

    def do_GET(self) -> None:
        body = self.answers.get(self.path)
        self.send_response(200 if body is not None else 404)
        body = body if body is not None else b"not found"
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def metadata_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetadataHandler)
    thread = threading.Thread(target=server.serve_forever, name="metadata", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metadata/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)


if __name__ == "__main__":
    sys.exit(main())
