"""hafloatd installed and run under the container's systemd, as docs/operations.md says.

``Installed`` does the documented install (a venv under /opt/hafloatd from the wheels,
``hafloatd install-agent --all``, ``systemd-sysusers``, the config and the root-only token
file), starts the DigitalOcean simulator and a web backend inside as transient units on the
container's loopback, and gives the tests one-liners over what systemd and the daemon say.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from tests.systemd.nspawn import Container

UNIT = "hafloatd.service"
IP = "203.0.113.10"
SECOND_IP = "203.0.113.20"  # added by a reload
DROPLET_ID = 1001  # this node; 1002 is the peer that holds the IPs at first
VENV = "/opt/hafloatd/venv"
HAFLOATD = f"{VENV}/bin/hafloatd"
CONFIG = "/etc/hafloatd/hafloatd.yaml"
TOKEN_FILE = "/etc/hafloatd/do-token"
CREDENTIAL = "/run/credentials/hafloatd.service/do-token"
RUN_DIR = "/run/hafloatd"
STATE_DIR = "/var/lib/hafloatd"
SOCKET = f"{RUN_DIR}/control.sock"
AGENT = "/usr/lib/ocf/resource.d/hafloatd/hafloat"
# Loopback of the container's own network namespace: nothing else listens there.
SIM_API_PORT, SIM_METADATA_PORT, BACKEND_PORT, METRICS_PORT = 18080, 18101, 18081, 19310
# systemd/hafloatd.service
RESTART_SEC = 2.0
WATCHDOG_SEC = 10.0

T = TypeVar("T")


def config_yaml(*ips: str, extra: str = "") -> str:
    listed = "".join(f"  - {ip}\n" for ip in ips)
    return (
        f"ips:\n{listed}"
        f"api:\n  base_url: http://127.0.0.1:{SIM_API_PORT}\n"
        f"metadata:\n  base_url: http://127.0.0.1:{SIM_METADATA_PORT}/metadata/v1\n"
        f"metrics:\n  listen: 127.0.0.1:{METRICS_PORT}\n"
        f"health:\n  url: http://127.0.0.1:{BACKEND_PORT}/\n"
        "  interval: 1s\n  timeout: 500ms\n  rise: 1\n  fall: 2\n"
        f"{extra}"
    )


GOOD_CONFIG = config_yaml(IP)
# Valid YAML, invalid config: check-config names the key (health.fall).
BAD_CONFIG = GOOD_CONFIG.replace("fall: 2", "fall: -1")


class Installed:
    """hafloatd inside ``container``, talking to a simulator that knows ``token`` only."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.token = "dop_v1_" + secrets.token_hex(32)  # this session's, in no file but two

    # -- install and the lab around it ---------------------------------------------------

    def install(self) -> None:
        """docs/operations.md steps 1-2 and docs/systemd.md, offline from the wheelhouse."""
        self.c.sh(
            f"python3 -m venv {VENV}\n"
            f"{VENV}/bin/pip install -q --no-index --find-links /opt/hafloatd/wheels hafloatd\n"
            f"{HAFLOATD} install-agent --all\n"
            "systemd-sysusers /etc/sysusers.d/hafloatd.conf\n"
            "install -d -m 0750 -o root -g haclient /etc/hafloatd\n"
            f"install -m 600 -o root -g root /dev/null {TOKEN_FILE}\n",
            timeout_s=180,
        )
        # The token goes through stdin, never argv.
        self.c.run("sh", "-c", f"cat > {TOKEN_FILE}", input_text=self.token)
        self.write_config(GOOD_CONFIG)
        self.c.run(HAFLOATD, "check-config", CONFIG)
        self.c.run("systemctl", "daemon-reload")
        self.c.run("systemctl", "enable", "--quiet", UNIT)

    def start_lab(self) -> None:
        """The DigitalOcean simulator and a web backend, as transient units on loopback."""
        scenario = (
            f"tokens: [{self.token}]\n"
            "action_delay: 0.5\n"
            f"host: 127.0.0.1\napi_port: {SIM_API_PORT}\n"
            "droplets:\n"
            f"  - {{id: {DROPLET_ID}, name: node1, region: nyc3, "
            f"backend: 127.0.0.1:{BACKEND_PORT}, metadata_port: {SIM_METADATA_PORT}}}\n"
            "  - {id: 1002, name: node2, region: nyc3, backend: 127.0.0.1:18082}\n"
            "reserved_ips:\n"
            f"  - {{ip: {IP}, region: nyc3, droplet_id: 1002}}\n"
            f"  - {{ip: {SECOND_IP}, region: nyc3}}\n"
        )
        self.c.run(
            "sh", "-c", "umask 077 && cat > /opt/hafloatd/scenario.yaml", input_text=scenario
        )
        self.c.sh(
            "mkdir -p /srv/www && echo ok > /srv/www/index.html\n"
            "systemd-run -q --unit=do-sim -p Type=exec "
            f"{HAFLOATD} simulator --scenario /opt/hafloatd/scenario.yaml\n"
            "systemd-run -q --unit=backend -p Type=exec "
            f"python3 -m http.server {BACKEND_PORT} --bind 127.0.0.1 --directory /srv/www\n"
        )
        try:
            for port in (SIM_API_PORT, SIM_METADATA_PORT, BACKEND_PORT):
                wait_for(partial(self.listening, port), 20, f"something listening on :{port}")
        except AssertionError as exc:
            logs = self.c.run("journalctl", "-u", "do-sim", "-u", "backend", "--no-pager").stdout
            raise AssertionError(f"{exc}\n{logs}") from None

    def listening(self, port: int) -> bool:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
        return self.c.run("python3", "-c", code, check=False).returncode == 0

    # -- files -------------------------------------------------------------------------------

    def write_config(self, text: str) -> None:
        """Replace the config atomically, root:haclient 0640 as the docs say."""
        self.c.run(
            "sh",
            "-c",
            f"umask 077 && cat > {CONFIG}.new && chown root:haclient {CONFIG}.new && "
            f"chmod 0640 {CONFIG}.new && mv {CONFIG}.new {CONFIG}",
            input_text=text,
        )

    # -- what systemd says ---------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout_s: float = 60.0) -> int:
        return self.c.run("systemctl", *args, check=check, timeout_s=timeout_s).returncode

    def props(self, *names: str) -> dict[str, str]:
        out = self.c.run("systemctl", "show", UNIT, *(f"--property={n}" for n in names)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, name: str) -> str:
        return self.props(name)[name]

    def main_pid(self) -> int:
        return int(self.prop("MainPID"))

    def state(self) -> str:
        p = self.props("ActiveState", "SubState")
        return f"{p['ActiveState']}/{p['SubState']}"

    def journal_cursor(self) -> str:
        out = self.c.run("journalctl", "--show-cursor", "-n", "0", "--quiet").stdout
        return out.split("-- cursor: ", 1)[1].strip()

    def journal(self, after: str, *, unit: bool = True) -> str:
        """What the journal got after ``after`` (a cursor): this unit's and systemd's lines
        about it (``-u``), message text only."""
        args = ["journalctl", "--no-pager", "-o", "cat", f"--after-cursor={after}"]
        return self.c.run(*args, *(["-u", UNIT] if unit else [])).stdout

    def wait_running(self, *, other_than: int = 0, timeout_s: float = 30.0) -> int:
        """active/running with a main PID other than ``other_than``; returns that PID."""

        def new_pid() -> int | None:
            p = self.props("ActiveState", "SubState", "MainPID")
            pid = int(p["MainPID"])
            running = (p["ActiveState"], p["SubState"]) == ("active", "running")
            return pid if running and pid not in (0, other_than) else None

        return wait_for(new_pid, timeout_s, f"{UNIT} running with a new main PID")

    def restore(self) -> None:
        """Back to the baseline the tests start from: the good config, running, not failed."""
        self.write_config(GOOD_CONFIG)
        if self.state() != "active/running":
            self.systemctl("reset-failed", UNIT, check=False)
            self.systemctl("start", UNIT)
        elif [e["ip"] for e in self.status()["ips"]] != [IP]:
            self.systemctl("restart", UNIT)

    # -- what the daemon says -------------------------------------------------------------

    def ocf(self, action: str, ip: str = IP) -> tuple[int, str]:
        """The OCF agent as Pacemaker runs it (root, OCF_* environment); (exit, output)."""
        done = self.c.run(
            "env",
            "OCF_ROOT=/usr/lib/ocf",
            f"OCF_RESKEY_ip={ip}",
            "OCF_RESOURCE_INSTANCE=FloatIP",
            "OCF_RESKEY_CRM_meta_timeout=20000",
            AGENT,
            action,
            check=False,
        )
        return done.returncode, (done.stdout + done.stderr).strip()

    def status(self) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.c.run(HAFLOATD, "status", "--json").stdout)
        return reply

    def holder(self, ip: str = IP) -> int | None:
        """The droplet the simulator says holds ``ip``."""
        state = self._sim_get("/_sim/state")
        holder: int | None = state["reserved_ips"][ip]["holder"]
        return holder

    def assigns(self, ip: str = IP) -> int:
        """Assign POSTs the simulator has received for ``ip`` so far."""
        posts: int = self._sim_get("/_sim/counters")["posts_per_ip"].get(ip, 0)
        return posts

    def move_ip(self, droplet_id: int | None, ip: str = IP) -> None:
        """Point ``ip`` at ``droplet_id`` behind the daemon's back (the simulator's admin)."""
        self._sim("PUT", f"/_sim/reserved_ips/{ip}/holder", {"droplet_id": droplet_id})

    def _sim_get(self, path: str) -> Any:
        return self._sim("GET", path)

    def _sim(self, method: str, path: str, body: object = None) -> Any:
        """The simulator's /_sim admin endpoints, from inside (they listen on its loopback)."""
        code = (
            "import json, sys, urllib.request\n"
            f"url = 'http://127.0.0.1:{SIM_API_PORT}' + sys.argv[1]\n"
            "data = sys.argv[3].encode() if sys.argv[3] != 'null' else None\n"
            "req = urllib.request.Request(url, data=data, method=sys.argv[2],"
            " headers={'Content-Type': 'application/json'})\n"
            "sys.stdout.write(urllib.request.urlopen(req, timeout=5).read().decode())\n"
        )
        out = self.c.run("python3", "-c", code, path, method, json.dumps(body)).stdout
        return json.loads(out)

    def proc_status(self, pid: int) -> dict[str, str]:
        """/proc/PID/status as a mapping (the kernel's word on uid, caps, seccomp)."""
        text = self.c.run("cat", f"/proc/{pid}/status").stdout
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def started(unit: Installed) -> None:
    """The OCF start, as Pacemaker would; the IP points here afterwards."""
    rc, out = unit.ocf("start")
    assert rc == 0, out
    assert unit.holder() == DROPLET_ID


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def exposure(security_output: str) -> float:
    """The overall exposure from ``systemd-analyze security``'s last line."""
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security_output)
    assert found, f"no overall exposure in:\n{security_output[-500:]}"
    return float(found.group(1))
