"""``hafloatd check-config``: validate a configuration file without starting anything.

Exit 0 and a short summary for a valid file; exit 2 and one ``PATH: key.path: problem`` line
per problem otherwise. A valid file whose idle API cadence exceeds ``api.hourly_budget`` gets
a ``PATH: WARNING: ...`` line on stderr (with ``-q`` too) and still exits 0. It never reads
the API token and never touches the network, so it is safe in ``ExecStartPre=``/
``ExecReload=`` and in CI; it does not import aiohttp.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from hafloatd.config import (
    DEFAULT_PATH,
    TOKEN_ENV_VAR,
    TOKEN_LIMIT_PER_HOUR,
    Config,
    budget_warnings,
    format_duration,
    idle_requests_per_hour,
    load_config,
)
from hafloatd.errors import ConfigError

EXIT_OK = 0
EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=DEFAULT_PATH,
        metavar="PATH",
        help=f"configuration file (default {DEFAULT_PATH})",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing when the file is valid"
    )


def main(args: argparse.Namespace) -> int:
    path: str = args.path
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    for warning in budget_warnings(config):
        print(f"{path}: WARNING: {warning}", file=sys.stderr)
    if not args.quiet:
        print_summary(config, path, sys.stdout)
    return EXIT_OK


def print_summary(config: Config, path: str, out: TextIO) -> None:
    """What the daemon would run with, in a few lines; never the token itself."""
    for line in summary_lines(config, path):
        print(line, file=out)


def summary_lines(config: Config, path: str) -> list[str]:
    api, control, metrics, health = config.api, config.control, config.metrics, config.health
    ips = ", ".join(f"{ip.address} (on_stop={ip.on_stop})" for ip in config.ips)
    lines = [
        f"{path}: OK",
        f"  ips:       {ips}",
        f"  api:       {api.base_url} (path family {api.path_family})",
        f"  budget:    {_budget(config)}",
        f"  token:     {_token_source(config)}",
        f"  control:   {control.socket_path} (mode {control.mode:04o}, group "
        f"{control.group or '-'}, users {_names(control.allowed_users)}, groups "
        f"{_names(control.allowed_groups)})",
        f"  metrics:   {metrics.listen if metrics.listen is not None else 'disabled'}",
    ]
    if health is None:
        lines.append("  health:    no health probe")
    else:
        statuses = ",".join(str(status) for status in health.expected_statuses)
        body = f", body contains {health.body_contains!r}" if health.body_contains else ""
        lines.append(
            f"  health:    {health.url} every {format_duration(health.interval)}, timeout "
            f"{format_duration(health.timeout)}, rise {health.rise}, fall {health.fall}, "
            f"expect {statuses}{body}"
        )
    notify = "on" if config.pacemaker.notify_failures else "off"
    lines.append(f"  pacemaker: notify_failures {notify}")
    lines.append(f"  state_dir: {config.state_dir}")
    return lines


def _budget(config: Config) -> str:
    """The idle cadence against ``api.hourly_budget`` and the token's hourly limit."""
    api = config.api
    idle = idle_requests_per_hour(api, len(config.ips))
    return (
        f"about {idle:.0f} API requests/hour idle (holder check every "
        f"{format_duration(api.holder_check_interval)}, keep-warm after "
        f"{format_duration(api.keepalive_interval)} quiet), budget {api.hourly_budget}/hour, "
        f"{100 * idle / TOKEN_LIMIT_PER_HOUR:.1f}% of {TOKEN_LIMIT_PER_HOUR:,}/hour per token"
    )


def _token_source(config: Config) -> str:
    """The kind of token source, as configured; the token is neither read nor shown."""
    api = config.api
    credential = "systemd credential do-token"
    match api.token_source:
        case "credential":
            return credential
        case "file":
            return f"file {api.token_file}"
        case "env":
            return f"${TOKEN_ENV_VAR}"
    chain = [credential, *([f"file {api.token_file}"] if api.token_file else [])]
    return "auto: " + ", then ".join([*chain, f"${TOKEN_ENV_VAR}"])


def _names(entries: tuple[str | int, ...]) -> str:
    return ",".join(str(entry) for entry in entries) or "-"
