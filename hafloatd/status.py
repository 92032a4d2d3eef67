"""``hafloatd status``: the daemon's state per reserved IP, as a table or JSON.

Exits 0 when the daemon answered with its state. When it cannot be reached, or answers with
a refusal (this user is not allowed, too many connections, shutting down), it prints one line
on stderr saying why and what to do, and exits 1; ``--json`` still prints the reply.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hafloatd.control.client import DEFAULT_SOCKET, request_sync
from hafloatd.errors import OCF_ERR_PERM, ControlError
from hafloatd.logs import one_line

PHASES = ("received", "post_sent", "api_accepted", "action_completed", "holder_confirmed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="control socket path")
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the daemon")


def main(args: argparse.Namespace) -> int:
    try:
        reply = request_sync(
            args.socket, {"op": "status", "deadline_ms": int(args.timeout * 1000)}, args.timeout
        )
    except ControlError as exc:
        print(f"hafloatd status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    if reply.get("ok") is not True:
        print(f"hafloatd status: {refusal(reply, args.socket)}", file=sys.stderr)
        return 1
    if not args.json:
        print(render(reply))
    return 0


def refusal(reply: Mapping[str, Any], socket_path: str) -> str:
    """One line for a reply that is not the daemon's state: why, and what to do about it."""
    reason = one_line(reply.get("reason") or "no reason given")
    if reply.get("ocf") == OCF_ERR_PERM:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return (
            f"hafloatd on {socket_path} refused user {name} (uid {uid}): {reason}; run as root, "
            f"or add {name} to control.allowed_users and reload (systemctl reload hafloatd)"
        )
    return f"hafloatd on {socket_path} did not give its status (ocf {reply.get('ocf')}): {reason}"


def render(status: Mapping[str, Any]) -> str:
    """A human-readable report: daemon line, API and API budget lines, health line, one table
    row per IP."""
    droplet = status.get("droplet") or {}
    api = status.get("api") or {}
    health = status.get("health")
    lines = [
        f"hafloatd {status.get('version', '?')}  pid {status.get('pid', '?')}  "
        f"up {_duration(status.get('uptime_s'))}  droplet {droplet.get('id')} "
        f"({droplet.get('hostname')}, {droplet.get('region')})",
        f"api {api.get('base_url')} [{api.get('path_family')}]  token "
        f"{_token_state(api.get('token_valid'))} via {api.get('token_source')}  "
        f"rate-limit {_or_dash(api.get('ratelimit_remaining'))}/"
        f"{_or_dash(api.get('ratelimit_limit'))} remaining",
        f"api budget {_or_dash(api.get('requests_last_hour'))} requests in the last hour "
        f"(budget {_or_dash(api.get('hourly_budget'))}/hour idle)  connections opened "
        f"{_or_dash(api.get('connections_opened'))}",
        "health " + _health(health),
        "",
    ]
    rows: list[Sequence[str]] = [("IP", "ROLE", "HOLDER", "HEALTH", "LAST FAILOVER", "LAST ERROR")]
    for ip in status.get("ips") or []:
        held = {True: "here", False: "elsewhere", None: "unknown"}.get(ip.get("held_here"), "?")
        holder = f"{held} ({ip.get('holder_droplet_id') or '-'}, {ip.get('holder_source')})"
        rows.append(
            (
                str(ip.get("ip")),
                str(ip.get("role")),
                holder,
                str(ip.get("health")),
                _timeline(ip.get("last_failover")),
                str(ip.get("last_error") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for ip in status.get("ips") or []:
        lines.extend(f"  {ip.get('ip')}: {note}" for note in _notes(ip))
    return "\n".join(lines)


def _notes(ip: Mapping[str, Any]) -> list[str]:
    """What the table cannot show: a role not on disk, notification, an IP in flux."""
    notes = []
    if ip.get("role_persisted") is False:
        notes.append(
            f"ROLE NOT PERSISTED (a restart would forget it): {ip.get('role_persist_error')}"
        )
    if ip.get("holder_locked"):
        notes.append("an action is moving the IP (locked): holder unknown until it ends")
    elif ip.get("held_here") is None and ip.get("holder_why"):
        notes.append(f"holder unknown: {ip.get('holder_why')}")
    if ip.get("in_flight"):
        notes.append(f"{ip.get('in_flight')} in progress")
    notification = ip.get("failure_notification")
    if notification:
        notes.append(f"failure notification {notification}")
    return notes


def _timeline(timeline: Mapping[str, Any] | None) -> str:
    if not timeline:
        return "-"
    start = timeline.get("received")
    if not isinstance(start, int | float):
        return "-"
    marks = []
    for phase in PHASES[1:]:
        at = timeline.get(phase)
        if isinstance(at, int | float):
            marks.append(f"{phase}+{(at - start) * 1000:.0f}ms")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))
    outcome = timeline.get("outcome", "?")
    return f"{when} {outcome} " + " ".join(marks)


def _health(health: Mapping[str, Any] | None) -> str:
    if not health:
        return "not configured"
    parts = [str(health.get("state", "?"))]
    for key in ("url", "consecutive_ok", "consecutive_fail", "last_error"):
        if health.get(key) not in (None, ""):
            parts.append(f"{key}={health[key]}")
    return " ".join(parts)


def _token_state(valid: object) -> str:
    if valid is True:
        return "valid"
    return "REFUSED" if valid is False else "unchecked"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
