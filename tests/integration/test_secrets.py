"""Secrets and privileges (issue 9, item 7): the real daemon and the real OCF agent, as
processes, against the simulator.

One scenario exercises every path that turns text into output at debug level: starts, stops,
monitors and probes, validate, status, control-socket errors, API failures whose answers echo
the token back (an edge proxy could: the simulator never does on its own), a start caught
while it waits on a slow action, a reload. Then a distinctive token is searched for, whole
and by a fragment, in everything the daemon and the agent showed: the daemon's log, /metrics,
every control-socket reply, ``hafloatd status`` and ``--json``, the agent's exit reasons, the
agent's and the daemon's ``/proc/<pid>/cmdline`` and ``environ`` (the token comes from a
file, so it is in neither).

Then the privileges: a token file open to others, or owned by someone else, stops the daemon
(exit 78) with the exact command that fixes it; a peer that is not allowed on the control
socket (the agent and ``hafloatd status`` run as ``nobody``) is refused and told why.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hafloatd.lab.nodes import AGENT, DaemonNode, make_node
from hafloatd.lab.sim import Simulator
from tests.sim_fixtures import IP_NYC, MakeSimulator, default_scenario

IP = IP_NYC
ME = 1001
# Distinctive, and shaped like a DigitalOcean token (printable ASCII, no spaces).
CANARY = "dop_v1_" + "5ecre7" * 10 + "canary42"
FRAGMENT = CANARY[7:27]  # a cut excerpt must not carry it either
HAFLOATD = str(Path(sys.executable).with_name("hafloatd"))
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.needs_root


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: token files owned by others, clients run as nobody")
    try:
        pwd.getpwnam("nobody")
        grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("needs the user nobody and the group nogroup")


def leaks(text: str | bytes) -> list[str]:
    """Which forms of the token ``text`` contains (``[]``: none)."""
    data = text.encode() if isinstance(text, str) else text
    return [form for form in (CANARY, FRAGMENT) if form.encode() in data]


@pytest.fixture
async def sim(make_simulator: MakeSimulator) -> Simulator:
    return await make_simulator(default_scenario(tokens=(CANARY,)))


@pytest.fixture
async def nodes() -> AsyncIterator[list[DaemonNode]]:
    started: list[DaemonNode] = []
    yield started
    for node in started:
        await node.stop()


def token_file_node(
    sim: Simulator,
    nobody_dir: Path,
    nodes: list[DaemonNode],
    *,
    token_mode: int = 0o600,
    source: str = "file",
) -> tuple[DaemonNode, Path]:
    """Droplet 1001's daemon reading the token from a file (``api.token_file``, or a systemd
    credential in ``$CREDENTIALS_DIRECTORY``), logging at debug level; its socket (0660,
    group nogroup) reachable by ``nobody``, whom only the peer check refuses."""
    (nobody_dir / "node1" / "credentials").mkdir(mode=0o700, parents=True)
    (nobody_dir / "node1").chmod(0o755)
    name = "credentials/do-token" if source == "credential" else "do-token"
    token_file = nobody_dir / "node1" / name
    token_file.write_text(CANARY + "\n")
    token_file.chmod(token_mode)
    api: dict[str, Any] = {"token_source": source}
    if source == "file":
        api["token_file"] = str(token_file)
    node = make_node(
        sim,
        "node1",
        ME,
        nobody_dir,
        extra={"api": api, "control": {"group": "nogroup"}, "logging": {"level": "debug"}},
    )
    del node.env["HAFLOATD_DO_TOKEN"]
    if source == "credential":
        node.env["CREDENTIALS_DIRECTORY"] = str(token_file.parent)
    nodes.append(node)
    return node, token_file


async def ask(node: DaemonNode, payload: dict[str, Any] | bytes) -> str:
    """One raw exchange on the control socket; the reply line as received."""
    reader, writer = await asyncio.open_unix_connection(node.socket_path)
    try:
        line = payload if isinstance(payload, bytes) else json.dumps(payload).encode() + b"\n"
        writer.write(line)
        await writer.drain()
        async with asyncio.timeout(10):
            return (await reader.readline()).decode()
    finally:
        writer.close()
        await writer.wait_closed()


def proc_files(pid: int) -> dict[str, bytes]:
    return {
        f"/proc/{pid}/{name}": Path(f"/proc/{pid}/{name}").read_bytes()
        for name in ("cmdline", "environ")
    }


def agent_children() -> list[int]:
    """PIDs of this test process's children running the OCF agent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and str(AGENT).encode() in cmdline:
            found.append(int(entry.name))
    return found


async def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=env, timeout=20, check=False
    )


@pytest.mark.parametrize("source", ["file", "credential"])
async def test_the_token_appears_nowhere(
    sim: Simulator, nobody_dir: Path, nodes: list[DaemonNode], source: str
) -> None:
    node, token_file = token_file_node(sim, nobody_dir, nodes, source=source)
    await node.start()
    assert node.pid is not None
    shown: dict[str, str | bytes] = {}  # where -> what was shown there

    def keep(where: str, text: str | bytes) -> None:
        shown[f"{where} #{len(shown)}"] = text

    async def agent(action: str, **kwargs: Any) -> int:
        result = await node.agent(action, **kwargs)
        keep(f"agent {action} stderr", result.stderr)
        keep(f"agent {action} stdout", result.stdout)
        return result.rc

    # The normal paths.
    assert await agent("start") == 0
    assert await agent("monitor", interval_ms=10000) == 0
    assert await agent("monitor") == 0
    assert await agent("validate-all") == 0
    for op in ("status", "monitor", "validate"):
        keep(f"reply {op}", await ask(node, {"op": op, "ip": IP, "deadline_ms": 3000}))
    # The control socket's own error replies.
    for bad in (
        b"{not json\n",
        b'{"op": "launch", "ip": "203.0.113.10"}\n',
        b'{"op": "start"}\n',
        b'{"op": "start", "ip": "203.0.113.99", "deadline_ms": 3000}\n',
        b"\xff\xfe\n",
    ):
        keep("reply error", await ask(node, bad))  # fmt: skip
    assert await agent("stop") == 0

    # API failures whose answers echo the token: a 401 (final) and a 503 storm (retried
    # until the deadline), both with the token in DigitalOcean's "message".
    sim.force_holder(IP, 1002)
    sim.faults.server_errors(None, status=401, message=f"token {CANARY} is not valid")
    assert await agent("start", timeout_ms=3000) == 4
    reply = await ask(node, {"op": "start", "ip": IP, "deadline_ms": 2000})
    assert json.loads(reply)["ocf"] == 4 and "timeline" in json.loads(reply)
    keep("reply start", reply)
    keep("reply stop", await ask(node, {"op": "stop", "ip": IP, "deadline_ms": 2000}))
    sim.faults.clear()
    sim.faults.server_errors(None, status=503, message=f"upstream rejected Bearer {CANARY}")
    assert await agent("start", timeout_ms=2000) == 1
    keep("reply status after errors", await ask(node, {"op": "status", "deadline_ms": 3000}))
    sim.faults.clear()

    # A start caught while it waits on a slow action: the agent's /proc as it runs.
    sim.faults.slow_actions(2.0)
    starting = asyncio.create_task(node.agent("start", timeout_ms=8000))
    async with asyncio.timeout(5):
        while not sim.locked(IP):
            await asyncio.sleep(0.02)
    [agent_pid] = agent_children()
    agent_proc = proc_files(agent_pid)
    for where, data in agent_proc.items():
        keep(f"agent {where}", data)
    assert b"OCF_RESKEY_ip=203.0.113.10" in agent_proc[f"/proc/{agent_pid}/environ"]
    result = await starting
    assert result.rc == 0, result.stderr
    keep("agent start stderr", result.stderr)
    assert sim.holder(IP) == ME

    # A reload, then what an operator looks at.
    await node.signal(signal.SIGHUP)
    assert node.notify is not None
    await node.notify.wait_for("READY=1")
    for argv in (["status"], ["status", "--json"]):
        cli = await run_cli(HAFLOATD, *argv, "--socket", node.socket_path)
        assert cli.returncode == 0, cli.stderr
        keep(f"hafloatd {' '.join(argv)}", cli.stdout + cli.stderr)
    keep("reply status", await ask(node, {"op": "status", "deadline_ms": 3000}))
    async with aiohttp.ClientSession() as http, http.get(node.metrics_url) as response:
        keep("/metrics", await response.text())
    for where, data in proc_files(node.pid).items():
        keep(f"daemon {where}", data)
    assert await node.stop() == 0
    log = node.log()
    keep("daemon log", log)

    # The scenario reached what it meant to: debug lines, the echoes, the token in use.
    assert "level=debug" in log
    assert f"event=token_loaded source={source}:{token_file}" in log
    assert "event=api_answer_contained_token" in log
    assert any(e.request_headers.get("Authorization") == f"Bearer {CANARY}" for e in sim.exchanges)
    # The simulator never echoes a token on its own (only the faults above told it to).
    for exchange in sim.exchanges:
        if exchange.fault != "server_error":
            assert leaks(exchange.response_body) == [], exchange.path
            assert leaks(json.dumps(dict(exchange.response_headers or {}))) == []
    found = {where: leaks(text) for where, text in shown.items() if leaks(text)}
    assert found == {}
    print(f"ROW secrets ({source}): {len(shown)} outputs searched, token found in {len(found)}")


# -- privileges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "owner", "fix"),
    [
        (0o644, "root", "run chmod 600 {path}"),
        (0o640, "root", "run chmod 600 {path}"),
        (0o600, "nobody", "run chown root:root {path}"),
        (0o604, "nobody", "run chown root:root {path} && chmod 600 {path}"),
    ],
    ids=["0644", "0640", "owned by nobody", "0604 owned by nobody"],
)
async def test_an_unsafe_token_file_stops_the_daemon_with_the_command_that_fixes_it(
    sim: Simulator, nobody_dir: Path, nodes: list[DaemonNode], mode: int, owner: str, fix: str
) -> None:
    node, token_file = token_file_node(sim, nobody_dir, nodes, token_mode=mode)
    account = pwd.getpwnam(owner)
    os.chown(token_file, account.pw_uid, account.pw_gid)
    await node.start(wait_ready=False)
    assert node.proc is not None
    assert await asyncio.wait_for(node.proc.wait(), 15) == 78  # EX_CONFIG: systemd gives up
    [line] = [line for line in node.log().splitlines() if "startup_failed" in line]
    command = fix.format(path=token_file)
    assert line.rstrip('"').endswith(command), line
    assert f"api.token_file: {token_file}" in line
    assert leaks(node.log()) == []
    # The command, run as told, is the whole fix.
    await asyncio.to_thread(subprocess.run, command.removeprefix("run "), shell=True, check=True)
    await node.stop()
    await node.start()
    assert (await node.agent("monitor")).rc == 7


def run_as(user: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` (uid, gid and groups, as su would), to completion."""
    account = pwd.getpwnam(user)
    return subprocess.run(
        argv,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=os.getgrouplist(user, account.pw_gid),
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


async def test_a_peer_that_is_not_allowed_is_refused_and_told_why(
    sim: Simulator, nobody_dir: Path, nodes: list[DaemonNode]
) -> None:
    node, _token_file = token_file_node(sim, nobody_dir, nodes)
    await node.start()
    uid = pwd.getpwnam("nobody").pw_uid
    ocf_env = {
        "PATH": "/usr/bin:/bin",
        "OCF_ROOT": "/usr/lib/ocf",
        "OCF_RESOURCE_INSTANCE": "FloatIP",
        "OCF_RESKEY_ip": IP,
        "OCF_RESKEY_socket": node.socket_path,
        "OCF_RESKEY_CRM_meta_timeout": "3000",
    }
    for action, interval in (("start", None), ("monitor", "10000")):
        env = dict(ocf_env)
        if interval:
            env["OCF_RESKEY_CRM_meta_interval"] = interval
        agent = await asyncio.to_thread(run_as, "nobody", [str(AGENT), action], env)
        assert agent.returncode == 4, agent.stderr  # OCF_ERR_PERM
        assert agent.stderr.strip() == f"ocf-exit-reason:peer uid={uid} not allowed"
    status = await asyncio.to_thread(
        run_as,
        "nobody",
        [HAFLOATD, "status", "--socket", node.socket_path],
        {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert status.returncode == 1 and status.stdout == ""
    assert status.stderr.strip() == (
        f"hafloatd status: hafloatd on {node.socket_path} refused user nobody (uid {uid}): "
        f"peer uid={uid} not allowed; run as root, or add nobody to control.allowed_users and "
        "reload (systemctl reload hafloatd)"
    )
    assert sim.posts(IP) == []  # nothing a refused peer asked for was done
    denied = [line for line in node.log().splitlines() if "event=control_peer_denied" in line]
    assert len(denied) == 3 and all(f" uid={uid} " in line for line in denied), denied
