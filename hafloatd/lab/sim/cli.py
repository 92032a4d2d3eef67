"""``hafloatd simulator``: run the DigitalOcean simulator in the foreground.

The scenario comes from ``--scenario FILE`` (YAML, see docs/simulator.md) and/or flags; flags
win. Without either, a two-node demo runs (droplets 1001/1002 in nyc3, reserved IP
203.0.113.10 unassigned, token ``test-token``). One line per listener is printed on stdout
(``api URL``, ``ca PATH``, ``metadata ID NAME URL``, ``proxy IP HOST:PORT``), then ``ready``;
``--json`` prints one JSON object instead. Runs until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hafloatd.lab.sim.scenario import (
    ScenarioError,
    SimDroplet,
    SimReservedIp,
    SimScenario,
    scenario_from_mapping,
)
from hafloatd.lab.sim.simulator import Simulator
from hafloatd.lab.sim.tls import TlsUnavailable

log = logging.getLogger("hafloatd.lab.sim.cli")

EXIT_USAGE = 2
DEMO_SCENARIO: dict[str, Any] = {
    "droplets": [
        {"id": 1001, "name": "node1", "region": "nyc3"},
        {"id": 1002, "name": "node2", "region": "nyc3"},
    ],
    "reserved_ips": [{"ip": "203.0.113.10", "region": "nyc3"}],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", type=Path, metavar="FILE", help="YAML scenario file")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--api-port", type=int, metavar="PORT", help="API port (default: any)")
    parser.add_argument(
        "--token", action="append", metavar="TOKEN", help="accepted API token (repeatable)"
    )
    parser.add_argument(
        "--read-only-token", action="append", metavar="TOKEN", help="token refused on POST (403)"
    )
    parser.add_argument(
        "--droplet",
        action="append",
        metavar="ID:NAME:REGION[:HOST:PORT]",
        help="a droplet, optionally with the backend its traffic goes to (repeatable)",
    )
    parser.add_argument(
        "--reserved-ip",
        action="append",
        metavar="IP:REGION[:HOLDER_ID]",
        help="a reserved IP and its holder at start (repeatable)",
    )
    parser.add_argument("--action-delay", type=float, metavar="SECONDS")
    parser.add_argument("--rate-limit-per-minute", type=int, metavar="N")
    parser.add_argument("--rate-limit-per-hour", type=int, metavar="N")
    parser.add_argument("--metadata-lag", type=float, metavar="SECONDS")
    parser.add_argument("--tls", action="store_true", default=None, help="serve the API over TLS")
    parser.add_argument("--json", action="store_true", help="print the listeners as one JSON line")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        scenario = build_scenario(args)
    except (ScenarioError, OSError, yaml.YAMLError) as exc:
        print(f"hafloatd simulator: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(scenario, as_json=bool(args.json)))
    except TlsUnavailable as exc:
        print(f"hafloatd simulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. a fixed port already in use
        print(f"hafloatd simulator: cannot listen: {_one_line(exc)}", file=sys.stderr)
        return 1


def build_scenario(args: argparse.Namespace) -> SimScenario:
    """The scenario file (or the demo) with command-line flags applied on top."""
    data: dict[str, Any]
    if args.scenario is not None:
        loaded = yaml.safe_load(args.scenario.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ScenarioError(f"{args.scenario}: expected a YAML mapping at the top level")
        data = loaded
    elif args.droplet or args.reserved_ip:
        data = {}
    else:
        data = dict(DEMO_SCENARIO)
    flags = {
        "host": args.host,
        "api_port": args.api_port,
        "action_delay": args.action_delay,
        "rate_limit_per_minute": args.rate_limit_per_minute,
        "rate_limit_per_hour": args.rate_limit_per_hour,
        "metadata_lag_s": args.metadata_lag,
        "tls": args.tls,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.token:
        data["tokens"] = list(args.token)
    if args.read_only_token:
        data["read_only_tokens"] = list(args.read_only_token)
    scenario = scenario_from_mapping(data)
    droplets = tuple(_parse_droplet(text) for text in args.droplet or ())
    reserved = tuple(_parse_reserved_ip(text) for text in args.reserved_ip or ())
    if droplets or reserved:
        # replace() re-runs the cross-checks (holders, regions, duplicates).
        scenario = dataclasses.replace(
            scenario,
            droplets=scenario.droplets + droplets,
            reserved_ips=scenario.reserved_ips + reserved,
        )
    return scenario


async def serve(scenario: SimScenario, *, as_json: bool = False) -> int:
    """Run until SIGINT/SIGTERM; print the listeners once ready."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Simulator(scenario) as sim:
            if as_json:
                print(json.dumps(_listeners_json(sim)), flush=True)
            else:
                for what, where in sim.listeners():
                    print(f"{what} {where}", flush=True)
                print(f"admin {sim.api_url}/_sim/state", flush=True)
                print("ready", flush=True)
            await stop.wait()
            log.info("event=stopping reason=signal")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def _listeners_json(sim: Simulator) -> dict[str, Any]:
    return {
        "api_url": sim.api_url,
        "ca_file": sim.ca_file,
        "metadata": {str(d.id): sim.metadata_url(d.id) for d in sim.scenario.droplets},
        "proxies": {
            r.ip: "{}:{}".format(*sim.proxy_address(r.ip)) for r in sim.scenario.reserved_ips
        },
    }


def _parse_droplet(text: str) -> SimDroplet:
    parts = text.split(":", 3)
    if len(parts) < 3 or not parts[0].isdigit():
        raise ScenarioError(f"--droplet {text!r}: expected ID:NAME:REGION[:HOST:PORT]")
    backend = parts[3] if len(parts) == 4 else None
    return SimDroplet(id=int(parts[0]), name=parts[1], region=parts[2], backend=backend)


def _parse_reserved_ip(text: str) -> SimReservedIp:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
        raise ScenarioError(f"--reserved-ip {text!r}: expected IP:REGION[:HOLDER_ID]")
    holder = int(parts[2]) if len(parts) == 3 else None
    return SimReservedIp(ip=parts[0], region=parts[1], droplet_id=holder)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up; plain asyncio otherwise)
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
