"""The OCF agent (launcher ``ocf/hafloat``, module ``ocf/hafloat_agent.py``), run as a process
with the environment Pacemaker gives it.

The daemon's side of the control protocol is played by ``FakeDaemon``, a tiny Unix-socket
server in the test that records each request line and answers a scripted reply: these tests
pin the agent's half of the protocol and its OCF semantics. The real daemon is exercised
with the agent in the integration tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import socketserver
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import pytest

import hafloatd

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "ocf" / "hafloat"
AGENT_MODULE = REPO / "ocf" / "hafloat_agent.py"
RA_DATADIR = Path("/usr/share/resource-agents")
IP = "203.0.113.10"
RUN_TIMEOUT_S = 15.0
WAIT_S = 5.0

Reply = bytes | Callable[[dict[str, Any]], bytes | None] | None


# --- the protocol peer ----------------------------------------------------------------------


class FakeDaemon:
    """A scripted control-socket peer: records requests, answers ``reply``.

    ``reply`` is the bytes to send, ``None`` to close without answering, or a callable
    taking the request and returning either. ``hang`` keeps the connection open without an
    answer until the test ends.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.reply: Reply = b'{"ok":true,"ocf":0,"reason":""}\n'
        self.hang = False
        self.requests: list[dict[str, Any]] = []
        self.raw_requests: list[bytes] = []
        self.received = threading.Event()
        self.stopping = threading.Event()
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(70000)
                daemon.raw_requests.append(line)
                request = json.loads(line)
                daemon.requests.append(request)
                daemon.received.set()
                if daemon.hang:
                    daemon.stopping.wait(WAIT_S * 4)
                    return
                reply = daemon.reply(request) if callable(daemon.reply) else daemon.reply
                if reply is not None:
                    self.wfile.write(reply)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(path, Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def start(self) -> FakeDaemon:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT_S)

    def answer(self, ocf: int, reason: str = "", **extra: Any) -> None:
        payload = {"ok": ocf == 0, "ocf": ocf, "reason": reason, **extra}
        self.reply = json.dumps(payload, separators=(",", ":")).encode() + b"\n"

    @property
    def last(self) -> dict[str, Any]:
        assert self.requests, "the agent sent no request"
        return self.requests[-1]


class StatefulDaemon:
    """Answers like the daemon's controller would: a role per IP, started or stopped."""

    def __init__(self) -> None:
        self.role = "stopped"

    def __call__(self, request: dict[str, Any]) -> bytes:
        op = request["op"]
        if op == "start":
            self.role = "started"
        elif op == "stop":
            self.role = "stopped"
        if op == "monitor" and self.role != "started":
            return b'{"ok":false,"ocf":7,"reason":"role stopped"}\n'
        return b'{"ok":true,"ocf":0,"reason":"","role":"%s"}\n' % self.role.encode()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can be too deep for sun_path (107 bytes); /tmp/hfa-XXXX is not.
    directory = Path(tempfile.mkdtemp(prefix="hfa-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(str(short_dir / "control.sock")).start()
    try:
        yield fake
    finally:
        fake.stop()


# --- running the agent ----------------------------------------------------------------------


def pacemaker_env(socket_path: str | None, **overrides: str | None) -> dict[str, str]:
    """The environment pacemaker-execd gives an agent (a recurring monitor's, by default)."""
    env: dict[str, str | None] = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "OCF_ROOT": "/usr/lib/ocf",
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "1",
        "OCF_RESOURCE_INSTANCE": "FloatIP",
        "OCF_RESOURCE_TYPE": "hafloat",
        "OCF_RESOURCE_PROVIDER": "hafloatd",
        "OCF_RESKEY_crm_feature_set": "3.16.2",
        "OCF_RESKEY_CRM_meta_on_node": "node1",
        "OCF_RESKEY_CRM_meta_on_node_uuid": "1",
        "OCF_RESKEY_CRM_meta_timeout": "20000",
        "OCF_RESKEY_CRM_meta_interval": "10000",
        "OCF_RESKEY_ip": IP,
        "OCF_RESKEY_socket": socket_path,
    }
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def run_agent(
    action: str | None, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(AGENT)] if action is None else [str(AGENT), action]
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd or "/",
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def start_agent(action: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(AGENT), action],
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def load_agent_module() -> ModuleType:
    """The agent module, imported in this process (its import has no side effects)."""
    spec = importlib.util.spec_from_file_location("hafloat_agent_under_test", AGENT_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_reasons(stderr: str) -> list[str]:
    return [line.split(":", 1)[1] for line in stderr.splitlines() if line.startswith("ocf-exit-")]


# --- meta-data, usage, dispatch --------------------------------------------------------------


def test_agent_file_is_world_readable_executable_python_with_isolated_shebang() -> None:
    assert AGENT.stat().st_mode & 0o777 == 0o755
    assert AGENT_MODULE.stat().st_mode & 0o444 == 0o444
    assert AGENT.read_text(encoding="utf-8").splitlines()[0] == "#!/usr/bin/python3 -IS"
    for path in (AGENT, AGENT_MODULE):
        text = path.read_text(encoding="utf-8")
        assert "import hafloatd" not in text and "from hafloatd" not in text


def test_agent_version_is_the_packages_version() -> None:
    # One version: hafloatd.__version__ (setup.cfg reads it); the standalone agent repeats it.
    module = load_agent_module()
    assert hafloatd.__version__ == module.AGENT_VERSION
    root = ElementTree.fromstring(run_agent("meta-data", {}).stdout)
    assert root.get("version") == hafloatd.__version__


@pytest.mark.parametrize("timeout_ms", [2, 599, 600, 1000, 3000, 20000, 86_400_000])
def test_agent_budget_ends_after_the_daemons_deadline_and_before_pacemakers_timeout(
    timeout_ms: int,
) -> None:
    deadline_ms, budget_s = load_agent_module().split_timeout(timeout_ms)
    assert 0 <= deadline_ms <= budget_s * 1000 < timeout_ms


def test_meta_data_is_valid_against_ra_api_dtd() -> None:
    if not (RA_DATADIR / "ra-api-1.dtd").is_file() or not shutil.which("xmllint"):
        pytest.skip("resource-agents' ra-api-1.dtd or xmllint not installed")
    result = run_agent("meta-data", {})
    assert result.returncode == 0
    # As ocf-tester does it: the DOCTYPE names "ra-api-1.dtd", resolved from its directory.
    lint = subprocess.run(
        ["xmllint", "--noout", "--valid", "-"],
        input=result.stdout,
        cwd=RA_DATADIR,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert lint.returncode == 0, lint.stderr
    assert '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">' in result.stdout


def test_meta_data_is_valid_against_metadata_rng(tmp_path: Path) -> None:
    if not (RA_DATADIR / "metadata.rng").is_file() or not shutil.which("xmllint"):
        pytest.skip("resource-agents' metadata.rng or xmllint not installed")
    xml = tmp_path / "hafloat.xml"
    xml.write_text(run_agent("meta-data", {}).stdout, encoding="utf-8")
    lint = subprocess.run(
        ["xmllint", "--noout", "--relaxng", str(RA_DATADIR / "metadata.rng"), str(xml)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert lint.returncode == 0, lint.stderr


def test_meta_data_declares_ip_socket_and_action_timeouts_but_no_token() -> None:
    root = ElementTree.fromstring(run_agent("meta-data", {}).stdout)
    assert root.get("name") == "hafloat"
    params = {p.get("name"): p for p in root.iter("parameter")}
    assert set(params) == {"ip", "socket"}
    assert params["ip"].get("required") == "1"
    content = params["socket"].find("content")
    assert content is not None and content.get("default") == "/run/hafloatd/control.sock"
    actions = {a.get("name"): a.attrib for a in root.iter("action")}
    assert {"start", "stop", "monitor", "validate-all", "meta-data"} <= set(actions)
    assert actions["start"]["timeout"] == "20s"
    assert actions["stop"]["timeout"] == "20s"
    assert actions["monitor"]["interval"] == "10s"
    assert actions["monitor"]["timeout"] == "20s"
    longdesc = root.findtext("longdesc") or ""
    assert "pcs resource create FloatIP ocf:hafloatd:hafloat ip=203.0.113.10" in longdesc
    assert "credential" in longdesc


def test_meta_data_needs_no_daemon_and_no_environment() -> None:
    result = run_agent("meta-data", {})
    assert result.returncode == 0
    assert result.stderr == ""


def test_meta_data_runs_as_nobody_like_ocf_tester_does() -> None:
    if os.geteuid() != 0 or not shutil.which("su"):
        pytest.skip("needs root to switch to nobody")
    closed = [d for d in AGENT.parents if not d.stat().st_mode & stat.S_IXOTH]
    if closed:
        pytest.skip(f"nobody cannot reach this checkout ({closed[0]} is not world-searchable)")
    result = subprocess.run(
        ["su", "nobody", "-s", "/bin/sh", "-c", f"{AGENT} meta-data"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "<resource-agent" in result.stdout


@pytest.mark.parametrize("action", ["usage", "help"])
def test_usage_lists_the_actions_and_succeeds(action: str) -> None:
    result = run_agent(action, {})
    assert result.returncode == 0
    assert "start|stop|monitor|validate-all|meta-data" in result.stdout
    assert "OCF_RESKEY_ip" in result.stdout


@pytest.mark.parametrize("action", ["reload", "notify", "promote", "migrate_to", "status"])
def test_unknown_action_is_unimplemented_with_usage(action: str, daemon: FakeDaemon) -> None:
    result = run_agent(action, pacemaker_env(daemon.path))
    assert result.returncode == 3
    assert "usage:" in result.stderr
    assert exit_reasons(result.stderr) == [f"action '{action}' is not implemented by hafloat"]
    assert daemon.requests == []


def test_no_action_is_err_args_with_usage() -> None:
    result = run_agent(None, {})
    assert result.returncode == 2
    assert "usage:" in result.stderr


# --- parameters -----------------------------------------------------------------------------

BAD_IPS = [
    "",
    "203.0.113",
    "203.0.113.10.1",
    "203.0.113.256",
    "203.0.113.010",
    "203.0.113.-1",
    "203.0.113.1O",
    "203.0.113.10 ",
    "::1",
    "localhost",
    "0.1.2.3",
    "127.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
]


@pytest.mark.parametrize("bad_ip", BAD_IPS)
@pytest.mark.parametrize("action", ["start", "monitor", "validate-all"])
def test_invalid_ip_is_err_configured_without_asking_the_daemon(
    action: str, bad_ip: str, daemon: FakeDaemon
) -> None:
    result = run_agent(action, pacemaker_env(daemon.path, OCF_RESKEY_ip=bad_ip or None))
    assert result.returncode == 6
    [reason] = exit_reasons(result.stderr)
    assert "parameter ip" in reason
    assert daemon.requests == []


def test_probe_with_invalid_ip_is_err_configured(daemon: FakeDaemon) -> None:
    # Decided (docs/ocf-agent.md): the value is wrong on every node, so the fatal code shows
    # the misconfiguration at once instead of "not running" followed by a failed start.
    env = pacemaker_env(daemon.path, OCF_RESKEY_ip="203.0.113", OCF_RESKEY_CRM_meta_interval=None)
    assert run_agent("monitor", env).returncode == 6


def test_stop_with_invalid_ip_succeeds_without_asking_the_daemon(daemon: FakeDaemon) -> None:
    result = run_agent("stop", pacemaker_env(daemon.path, OCF_RESKEY_ip=None))
    assert result.returncode == 0
    assert exit_reasons(result.stderr) == []
    assert "assumed stopped" in result.stderr
    assert daemon.requests == []


@pytest.mark.parametrize("bad_socket", ["relative/control.sock", "/" + "x" * 120])
def test_relative_or_overlong_socket_path_is_err_configured(bad_socket: str) -> None:
    result = run_agent("start", pacemaker_env(bad_socket))
    assert result.returncode == 6
    assert "parameter socket" in exit_reasons(result.stderr)[0]


def test_socket_defaults_to_run_hafloatd_control_sock() -> None:
    result = run_agent("start", pacemaker_env(None, OCF_RESKEY_CRM_meta_timeout="1000"))
    if Path("/run/hafloatd/control.sock").exists():
        pytest.skip("a real hafloatd is listening on the default socket")
    assert result.returncode == 1
    assert "/run/hafloatd/control.sock unreachable" in exit_reasons(result.stderr)[0]


# --- the request ----------------------------------------------------------------------------


def test_start_sends_one_request_line_with_op_ip_deadline_resource_and_node(
    daemon: FakeDaemon,
) -> None:
    result = run_agent("start", pacemaker_env(daemon.path, OCF_RESKEY_CRM_meta_interval=None))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert daemon.requests == [
        {
            "op": "start",
            "ip": IP,
            "deadline_ms": 18000,
            "probe": False,
            "resource": "FloatIP",
            "node": "node1",
        }
    ]
    assert daemon.raw_requests[0].endswith(b"}\n") and daemon.raw_requests[0].count(b"\n") == 1


@pytest.mark.parametrize(
    ("timeout_ms", "deadline_ms"),
    [
        ("20000", 18000),  # 10 % margin
        ("60000", 54000),
        ("3000", 2500),  # 500 ms minimum margin
        ("1000", 500),
        ("600", 300),  # never less than half the timeout
        (None, 18000),  # unset: the meta-data default (20 s)
        ("0", 18000),
        ("soon", 18000),
        ("36000000", 3600000),  # capped at the daemon's maximum
    ],
)
def test_deadline_sent_is_the_operation_timeout_minus_a_safety_margin(
    timeout_ms: str | None, deadline_ms: int, daemon: FakeDaemon
) -> None:
    env = pacemaker_env(daemon.path, OCF_RESKEY_CRM_meta_timeout=timeout_ms)
    assert run_agent("start", env).returncode == 0
    assert daemon.last["deadline_ms"] == deadline_ms


@pytest.mark.parametrize(
    ("interval", "probe"), [(None, True), ("0", True), ("10000", False), ("2000", False)]
)
def test_monitor_without_interval_is_sent_as_a_probe(
    interval: str | None, probe: bool, daemon: FakeDaemon
) -> None:
    env = pacemaker_env(daemon.path, OCF_RESKEY_CRM_meta_interval=interval)
    assert run_agent("monitor", env).returncode == 0
    assert daemon.last["op"] == "monitor"
    assert daemon.last["probe"] is probe


@pytest.mark.parametrize(
    ("action", "op"), [("start", "start"), ("stop", "stop"), ("validate-all", "validate")]
)
def test_each_action_maps_to_its_protocol_op_and_is_never_a_probe(
    action: str, op: str, daemon: FakeDaemon
) -> None:
    env = pacemaker_env(daemon.path, OCF_RESKEY_CRM_meta_interval=None)
    assert run_agent(action, env).returncode == 0
    assert daemon.last["op"] == op
    assert daemon.last["probe"] is False


def test_resource_and_node_are_null_when_pacemaker_does_not_set_them(daemon: FakeDaemon) -> None:
    env = pacemaker_env(daemon.path, OCF_RESOURCE_INSTANCE=None, OCF_RESKEY_CRM_meta_on_node=None)
    assert run_agent("start", env).returncode == 0
    assert daemon.last["resource"] is None
    assert daemon.last["node"] is None


def test_resource_and_node_names_are_json_escaped(daemon: FakeDaemon) -> None:
    env = pacemaker_env(
        daemon.path, OCF_RESOURCE_INSTANCE='Float"IP\\1\t', OCF_RESKEY_CRM_meta_on_node="nödé"
    )
    assert run_agent("start", env).returncode == 0
    assert daemon.last["resource"] == 'Float"IP\\1\t'
    assert daemon.last["node"] == "nödé"


# --- the reply ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 5, 6, 7])
def test_monitor_exits_with_the_daemons_ocf_code(code: int, daemon: FakeDaemon) -> None:
    daemon.answer(code, "" if code == 0 else f"because {code}")
    result = run_agent("monitor", pacemaker_env(daemon.path))
    assert result.returncode == code
    assert exit_reasons(result.stderr) == ([] if code == 0 else [f"because {code}"])


def test_failed_start_reports_the_daemons_reason_as_exit_reason(daemon: FakeDaemon) -> None:
    daemon.answer(1, "assign 203.0.113.10 to droplet 1001: action 42 errored")
    result = run_agent("start", pacemaker_env(daemon.path))
    assert result.returncode == 1
    assert (
        result.stderr == "ocf-exit-reason:assign 203.0.113.10 to droplet 1001: action 42 errored\n"
    )


def test_exit_reason_uses_pacemakers_prefix_when_given(daemon: FakeDaemon) -> None:
    daemon.answer(1, "holder is droplet 1002")
    env = pacemaker_env(daemon.path, OCF_EXIT_REASON_PREFIX="ocf-exit-reason-x:")
    assert run_agent("monitor", env).stderr == "ocf-exit-reason-x:holder is droplet 1002\n"


def test_multiline_reason_is_reported_on_one_line(daemon: FakeDaemon) -> None:
    daemon.answer(1, "first line\nsecond   line")
    result = run_agent("monitor", pacemaker_env(daemon.path))
    assert exit_reasons(result.stderr) == ["first line second line"]


def test_reply_with_escapes_nested_fields_and_floats_is_understood(daemon: FakeDaemon) -> None:
    daemon.reply = (
        json.dumps(
            {
                "ok": False,
                "ocf": 1,
                "reason": 'IP points at droplet 1002 \u2014 "elsewhere", not here',
                "holder": {"droplet_id": 1002, "seen": [1.5, None, True]},
                "role": "started",
            }
        ).encode()
        + b"\n"
    )
    result = run_agent("monitor", pacemaker_env(daemon.path))
    assert result.returncode == 1
    assert exit_reasons(result.stderr) == ['IP points at droplet 1002 \u2014 "elsewhere", not here']


def test_reply_with_spaces_and_a_comma_in_the_reason_is_understood(daemon: FakeDaemon) -> None:
    daemon.reply = b'{ "ok": false, "ocf": 1, "reason": "health failed 3 times, holder ok" }\n'
    result = run_agent("monitor", pacemaker_env(daemon.path))
    assert result.returncode == 1
    assert exit_reasons(result.stderr) == ["health failed 3 times, holder ok"]


def test_reply_closed_without_newline_is_still_understood(daemon: FakeDaemon) -> None:
    daemon.reply = b'{"ok":false,"ocf":7,"reason":""}'
    assert run_agent("monitor", pacemaker_env(daemon.path)).returncode == 7


def test_not_running_answer_to_stop_is_success(daemon: FakeDaemon) -> None:
    daemon.answer(7, "role stopped")
    result = run_agent("stop", pacemaker_env(daemon.path))
    assert result.returncode == 0
    assert exit_reasons(result.stderr) == []


def test_not_running_answer_to_start_is_a_failure(daemon: FakeDaemon) -> None:
    daemon.answer(7)
    result = run_agent("start", pacemaker_env(daemon.path))
    assert result.returncode == 1
    assert exit_reasons(result.stderr) == ["hafloatd answered 'not running' to op=start"]


GARBLED = [
    pytest.param(b"not json at all\n", id="not-json"),
    pytest.param(b'{"ok":true}\n', id="no-ocf"),
    pytest.param(b'{"ok":true,"ocf":12}\n', id="ocf-out-of-range"),
    pytest.param(b'{"ok":true,"ocf":"0"}\n', id="ocf-a-string"),
    pytest.param(b'{"ok":true,"ocf":true}\n', id="ocf-a-boolean"),
    pytest.param(b'{"ok":true,"ocf":0.0}\n', id="ocf-a-float"),
    pytest.param(b'{"ok":true,"ocf":01}\n', id="leading-zero"),
    pytest.param(b"[0]\n", id="an-array"),
    pytest.param(b'{"ok":true,"ocf":0} trailing\n', id="trailing-garbage"),
    pytest.param(b"\n", id="empty-line"),
    pytest.param(None, id="closed-without-reply"),
    pytest.param(b'{"ocf":0,"x":"\xff"}\n', id="not-utf8"),
    pytest.param(b'{"ocf":0,"x":' + b"[" * 5000 + b"]" * 5000 + b"}\n", id="deeply-nested"),
]


@pytest.mark.parametrize("reply", GARBLED)
@pytest.mark.parametrize("action", ["start", "monitor", "validate-all"])
def test_garbled_reply_is_a_generic_error_with_reason(
    action: str, reply: bytes | None, daemon: FakeDaemon
) -> None:
    daemon.reply = reply
    result = run_agent(action, pacemaker_env(daemon.path))
    assert result.returncode == 1, (result.returncode, result.stderr)
    [reason] = exit_reasons(result.stderr)
    assert f"hafloatd on {daemon.path}:" in reason
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("reply", GARBLED)
def test_garbled_reply_to_stop_still_succeeds(reply: bytes | None, daemon: FakeDaemon) -> None:
    daemon.reply = reply
    result = run_agent("stop", pacemaker_env(daemon.path))
    assert result.returncode == 0
    assert "assumed stopped" in result.stderr
    assert exit_reasons(result.stderr) == []


def test_overlong_reply_is_refused(daemon: FakeDaemon) -> None:
    daemon.reply = b'{"ocf":0,"reason":"' + b"x" * 70000 + b'"}\n'
    result = run_agent("monitor", pacemaker_env(daemon.path))
    assert result.returncode == 1
    assert "longer than 65536 bytes" in exit_reasons(result.stderr)[0]


# --- the daemon unreachable ------------------------------------------------------------------

UNREACHABLE_OUTCOMES = [
    # action, OCF_RESKEY_CRM_meta_interval, exit code
    pytest.param("monitor", None, 7, id="probe-not-running"),
    pytest.param("monitor", "0", 7, id="probe-interval-0-not-running"),
    pytest.param("stop", None, 0, id="stop-assumed-stopped"),
    pytest.param("monitor", "10000", 1, id="recurring-monitor-fails"),
    pytest.param("start", None, 1, id="start-fails"),
    pytest.param("validate-all", None, 5, id="validate-not-installed"),
]


def _check_unreachable_outcome(
    result: subprocess.CompletedProcess[str], socket_path: str, expected: int
) -> None:
    assert result.returncode == expected, result.stderr
    assert "Traceback" not in result.stderr
    reasons = exit_reasons(result.stderr)
    if expected in (0, 7):
        # stop and probe succeed in their own terms; the cause still reaches the log
        assert reasons == []
        assert f"hafloatd control socket {socket_path} unreachable" in result.stderr
    else:
        [reason] = reasons
        assert reason.startswith(f"hafloatd control socket {socket_path} unreachable: ")
        assert reason.endswith("(is hafloatd running? systemctl status hafloatd)")


@pytest.mark.parametrize(("action", "interval", "expected"), UNREACHABLE_OUTCOMES)
def test_missing_socket_outcome_depends_on_the_action(
    action: str, interval: str | None, expected: int, short_dir: Path
) -> None:
    socket_path = str(short_dir / "absent.sock")
    env = pacemaker_env(
        socket_path, OCF_RESKEY_CRM_meta_interval=interval, OCF_RESKEY_CRM_meta_timeout="1000"
    )
    result = run_agent(action, env)
    _check_unreachable_outcome(result, socket_path, expected)
    assert "No such file or directory" in result.stderr
    if action != "stop":  # it waited for a daemon to appear, and says so
        assert "waited" in result.stderr and "for the daemon" in result.stderr


@pytest.mark.parametrize(("action", "interval", "expected"), UNREACHABLE_OUTCOMES)
def test_stale_socket_file_refusing_connections_outcome_depends_on_the_action(
    action: str, interval: str | None, expected: int, short_dir: Path
) -> None:
    socket_path = str(short_dir / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)  # bound, never listening: what a crashed daemon leaves behind
    env = pacemaker_env(
        socket_path, OCF_RESKEY_CRM_meta_interval=interval, OCF_RESKEY_CRM_meta_timeout="1000"
    )
    try:
        result = run_agent(action, env)
    finally:
        stale.close()
    _check_unreachable_outcome(result, socket_path, expected)
    assert "Connection refused" in result.stderr


@pytest.mark.parametrize(("action", "interval", "expected"), UNREACHABLE_OUTCOMES)
def test_daemon_that_never_answers_times_out_within_pacemakers_timeout(
    action: str, interval: str | None, expected: int, daemon: FakeDaemon
) -> None:
    daemon.hang = True
    env = pacemaker_env(
        daemon.path, OCF_RESKEY_CRM_meta_interval=interval, OCF_RESKEY_CRM_meta_timeout="1000"
    )
    result = run_agent(action, env)
    assert daemon.received.is_set()
    assert daemon.last["deadline_ms"] == 500
    _check_unreachable_outcome(result, daemon.path, expected)
    # it gave up by itself, after its budget: the deadline plus half the margin (0.75 s),
    # which the split_timeout test above keeps under Pacemaker's timeout
    assert f"no answer to op={daemon.last['op']} within 0.8s" in result.stderr


@pytest.mark.parametrize("action", ["start", "monitor", "validate-all"])
def test_an_answer_sent_at_the_daemons_deadline_is_still_heard(
    action: str, daemon: FakeDaemon
) -> None:
    def answer_at_the_deadline(request: dict[str, Any]) -> bytes:
        daemon.stopping.wait(request["deadline_ms"] / 1000 - 0.05)
        return b'{"ok":true,"ocf":0,"reason":""}\n'

    daemon.reply = answer_at_the_deadline
    env = pacemaker_env(daemon.path, OCF_RESKEY_CRM_meta_timeout="1000")
    result = run_agent(action, env)
    assert result.returncode == 0, result.stderr
    assert daemon.last["deadline_ms"] == 500


# --- a daemon restarting: waiting for it, and stop records ----------------------------------


@pytest.mark.parametrize(
    ("action", "interval"),
    [("monitor", "10000"), ("monitor", None), ("start", None), ("validate-all", None)],
)
@pytest.mark.parametrize("gap", ["missing", "refusing"])
def test_action_waits_for_a_daemon_that_comes_back_within_its_deadline(
    action: str, interval: str | None, gap: str, short_dir: Path
) -> None:
    # systemd restarts a killed daemon in ~2 s: the socket is missing (or still there,
    # refusing connections) meanwhile. An operation falling into that gap waits it out.
    socket_path = str(short_dir / "control.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if gap == "refusing":
        stale.bind(socket_path)
    env = pacemaker_env(socket_path, OCF_RESKEY_CRM_meta_interval=interval)
    agent = start_agent(action, env)
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # still waiting, not failed
            agent.wait(0.5)
        stale.close()
        Path(socket_path).unlink(missing_ok=True)
        fake = FakeDaemon(socket_path).start()
        try:
            _, stderr = agent.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            fake.stop()
    finally:
        stale.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, stderr
    assert stderr == ""
    # what was left of its deadline went to the daemon
    assert 0 < fake.last["deadline_ms"] < 18000
    assert fake.last["op"] == DAEMON_OPS[action]


DAEMON_OPS = {"start": "start", "stop": "stop", "monitor": "monitor", "validate-all": "validate"}


def stop_record(directory: Path) -> dict[str, Any]:
    return json.loads((directory / f"stopped-{IP}").read_text(encoding="ascii"))


def test_stop_without_a_daemon_leaves_a_stop_record_in_the_socket_directory(
    short_dir: Path,
) -> None:
    before = time.time()
    env = pacemaker_env(str(short_dir / "control.sock"), OCF_RESKEY_CRM_meta_interval=None)
    result = run_agent("stop", env)
    assert result.returncode == 0
    assert exit_reasons(result.stderr) == []
    assert f"stop recorded in {short_dir}/stopped-{IP}" in result.stderr
    record = stop_record(short_dir)
    assert record == {
        "ip": IP,
        "stopped_at": record["stopped_at"],
        "resource": "FloatIP",
        "node": "node1",
    }
    assert before <= record["stopped_at"] <= time.time()
    path = short_dir / f"stopped-{IP}"
    assert path.read_bytes().count(b"\n") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # whatever Pacemaker's umask
    assert sorted(p.name for p in short_dir.iterdir()) == [f"stopped-{IP}"]  # no temporary


def test_stop_record_is_owned_like_the_socket_directory(short_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    nobody = 65534
    os.chown(short_dir, nobody, nobody)  # the daemon's user owns its socket directory
    result = run_agent("stop", pacemaker_env(str(short_dir / "control.sock")))
    assert result.returncode == 0
    owner = (short_dir / f"stopped-{IP}").stat()
    assert (owner.st_uid, owner.st_gid) == (nobody, nobody)


def test_stop_without_a_socket_directory_writes_no_record(short_dir: Path) -> None:
    # no directory: no daemon ran since boot (/run is a tmpfs), so nothing can be revived
    result = run_agent("stop", pacemaker_env(str(short_dir / "absent" / "control.sock")))
    assert result.returncode == 0
    assert "assumed stopped" in result.stderr
    assert "no stop record" in result.stderr
    assert not (short_dir / "absent").exists()


def test_stop_record_that_cannot_be_written_does_not_fail_stop(short_dir: Path) -> None:
    (short_dir / f"stopped-{IP}").mkdir()  # the rename over it fails
    result = run_agent("stop", pacemaker_env(str(short_dir / "control.sock")))
    assert result.returncode == 0
    assert exit_reasons(result.stderr) == []
    assert "no stop record" in result.stderr
    assert sorted(p.name for p in short_dir.iterdir()) == [f"stopped-{IP}"]  # no temporary


def test_stop_is_sent_again_after_recording_it_and_the_record_goes_once_delivered(
    daemon: FakeDaemon, short_dir: Path
) -> None:
    # The first connection gets no answer (a daemon not ready, a garbled exchange), so the
    # stop is recorded; the second attempt reaches the daemon, and the record is moot.
    answers = iter([None, b'{"ok":true,"ocf":0,"reason":""}\n'])
    daemon.reply = lambda _request: next(answers)
    result = run_agent("stop", pacemaker_env(daemon.path))
    assert result.returncode == 0
    assert [request["op"] for request in daemon.requests] == ["stop", "stop"]
    assert "delivered on a second attempt" in result.stderr
    assert not (short_dir / f"stopped-{IP}").exists()


def test_stop_does_not_wait_for_a_daemon(short_dir: Path) -> None:
    socket_path = str(short_dir / "control.sock")
    env = pacemaker_env(socket_path, OCF_RESKEY_CRM_meta_timeout="600000")
    agent = start_agent("stop", env)
    try:
        # with a 10-minute timeout, a stop that waited would still be waiting
        assert agent.wait(RUN_TIMEOUT_S) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert (short_dir / f"stopped-{IP}").exists()


# --- cost -----------------------------------------------------------------------------------


def test_monitor_imports_no_module_beyond_the_interpreters_own(daemon: FakeDaemon) -> None:
    # Python modules on the hot path would cost milliseconds per monitor (see
    # docs/ocf-agent.md): only the agent's own module and the interpreter's C modules.
    interpreter = AGENT.read_text(encoding="utf-8").splitlines()[0][2:].split()[0]
    env = pacemaker_env(daemon.path)
    baseline = subprocess.run(
        [interpreter, "-I", "-S", "-X", "importtime", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    result = subprocess.run(
        [interpreter, "-I", "-S", "-X", "importtime", str(AGENT), "monitor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0

    def imported(stderr: str) -> set[str]:
        return {
            line.rsplit("|", 1)[1].strip()
            for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line and "imported package" not in line
        }

    extra = imported(result.stderr) - imported(baseline.stderr)
    assert extra <= {"hafloat_agent", "_socket", "_json"}, extra


# --- ocf-tester -----------------------------------------------------------------------------


def test_ocf_tester_passes_against_a_daemon_that_keeps_a_role(daemon: FakeDaemon) -> None:
    tester = shutil.which("ocf-tester") or "/usr/sbin/ocf-tester"
    if not Path(tester).is_file() or os.geteuid() != 0:
        pytest.skip("ocf-tester (resource-agents) and root are needed")
    daemon.reply = StatefulDaemon()
    result = subprocess.run(
        [tester, "-n", "FloatIP", "-o", f"ip={IP}", "-o", f"socket={daemon.path}", str(AGENT)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout
    ops = [request["op"] for request in daemon.requests]
    assert {"validate", "monitor", "start", "stop"} <= set(ops)
