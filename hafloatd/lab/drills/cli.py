"""``hafloatd lab``: build a real two-node Pacemaker cluster, drill failovers, report.

Where namespaces or Pacemaker are unavailable it runs the agent-only drill (the OCF agent
executed the way Pacemaker would, no cluster) and its first line says so. Ctrl-C (or
SIGTERM) tears everything down: ``asyncio.run`` cancels the main task and the cluster's
``finally`` blocks run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hafloatd.lab import drill as agent_only
from hafloatd.lab.cluster import (
    CapabilityReport,
    Cluster,
    ClusterError,
    ClusterSpec,
    HealthSpec,
    NetworkSpec,
    check_capabilities,
)
from hafloatd.lab.drills.report import summary_table, timeline_text, to_json
from hafloatd.lab.drills.runner import DRILLS, DrillRunner
from hafloatd.lab.drills.svg import render_svg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drills",
        default=",".join(DRILLS),
        help=f"comma-separated drills to run (default: {','.join(DRILLS)})",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the drills N times")
    parser.add_argument(
        "--token-ms",
        type=int,
        default=1000,
        help="Corosync totem token timeout in ms (default 1000)",
    )
    parser.add_argument(
        "--action-delay",
        type=float,
        default=1.0,
        help="seconds the simulated DigitalOcean takes per assign (default 1.0)",
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=2.0,
        help="hafloatd health probe interval in seconds (default 2)",
    )
    parser.add_argument(
        "--health-fall", type=int, default=3, help="failed probes before health is down (default 3)"
    )
    parser.add_argument(
        "--notify-failures",
        action="store_true",
        help="set pacemaker.notify_failures: crm_resource --fail on health down",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    parser.add_argument("--svg", metavar="PATH", help="draw the timelines as an SVG file")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the lab directory (configs, Pacemaker/Corosync/hafloatd logs)",
    )
    parser.add_argument(
        "--net-prefix", default="hafl", help="prefix of the namespaces and links (default hafl)"
    )
    parser.add_argument(
        "--subnet", default="10.99.0.0/24", help="the lab's private subnet (default 10.99.0.0/24)"
    )
    parser.add_argument(
        "--agent-only",
        action="store_true",
        help="run the agent-only drill (no Pacemaker) even where a cluster could run",
    )
    parser.add_argument(
        "--tls", action="store_true", help="agent-only drill: serve the simulated API over TLS"
    )


def main(args: argparse.Namespace) -> int:
    drills = [d.strip() for d in args.drills.split(",") if d.strip()]
    unknown = [d for d in drills if d not in DRILLS]
    problems = [f"unknown drill {d!r} (choose from {', '.join(DRILLS)})" for d in unknown]
    if args.rounds < 1:
        problems.append("--rounds must be >= 1")
    if args.action_delay < 0:
        problems.append("--action-delay must be >= 0")
    if args.health_interval <= 0 or args.health_fall < 1:
        problems.append("--health-interval must be > 0 and --health-fall >= 1")
    if problems:
        print("hafloatd lab: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        return asyncio.run(_interruptible(_main(args, drills)))
    except (ClusterError, agent_only.LabError) as exc:
        print(f"hafloatd lab: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"hafloatd lab: interrupted ({signal.Signals(signum).name}); everything it "
              "started was stopped and its namespaces deleted", file=sys.stderr)  # fmt: skip
        return 128 + signum


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


async def _interruptible(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main``; SIGINT, SIGTERM or SIGHUP cancels it, so every ``finally`` (the
    cluster's teardown) runs inside the loop. Installed whatever the inherited disposition:
    a shell starting the lab in the background leaves SIGINT ignored, but the lab's
    namespaces must go whenever it is told to stop."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await main
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def _main(args: argparse.Namespace, drills: list[str]) -> int:
    report = await check_capabilities()
    fallback = agent_only_reason(report, args.agent_only)
    if fallback is not None:
        say(
            f"hafloatd lab: agent-only drill, NO Pacemaker cluster ({fallback}): "
            "the OCF agent is executed directly, the way Pacemaker would run it"
        )
        return await agent_only.run_lab(
            args.action_delay, args.rounds, args.tls, args.keep, json_path=args.json
        )
    health = HealthSpec(
        interval_s=args.health_interval,
        timeout_s=min(1.0, args.health_interval / 2),
        fall=args.health_fall,
    )
    spec = ClusterSpec(
        network=NetworkSpec(prefix=args.net_prefix, subnet=args.subnet),
        health=health,
        notify_failures=args.notify_failures,
        token_ms=args.token_ms,
        action_delay=args.action_delay,
    )
    settings = (
        f"Corosync token {spec.token_ms} ms, health every {health.interval_s:g} s, "
        f"fall {health.fall}, notify_failures {'on' if spec.notify_failures else 'off'}, "
        f"simulated DigitalOcean action {spec.action_delay:g} s"
    )
    say(f"hafloatd lab: a real two-node Corosync + Pacemaker cluster ({settings})")
    for note in report.notes:
        say(f"note: {note}")
    began = time.monotonic()
    cluster = Cluster(spec, progress=lambda m: say(f"  {m}"), keep=args.keep)
    try:
        await cluster.start()
        describe = await cluster.crm("pcs", "resource", "describe", "ocf:hafloatd:hafloat")
        say("$ pcs resource describe ocf:hafloatd:hafloat")
        say("\n".join("  " + line for line in describe.stdout.strip().splitlines()))
        host, port = cluster.proxy_address()
        say(f"client: GET http://{host}:{port}/ (the reserved IP {cluster.ip}) every 50 ms")
        results = await DrillRunner(cluster, lambda m: say(f"  {m}")).run(drills, args.rounds)
    finally:
        left = await cluster.stop()
        if left:
            say(f"WARNING: teardown left {left}")
        if args.keep:
            say(f"lab directory kept: {cluster.workdir}")
    say("")
    for result in results:
        say(timeline_text(result))
        say("")
    say(summary_table(results))
    say(f"({settings}; lab took {time.monotonic() - began:.0f} s)")
    context = {
        "settings": {
            "token_ms": spec.token_ms,
            "health_interval_s": health.interval_s,
            "health_fall": health.fall,
            "notify_failures": spec.notify_failures,
            "action_delay_s": spec.action_delay,
            "monitor_interval_s": spec.resource.monitor_interval_s,
        }
    }
    if args.json:
        text = json.dumps(to_json(results, context), indent=2)
        if args.json == "-":
            print(text)
        else:
            await asyncio.to_thread(Path(args.json).write_text, text + "\n")
            say(f"JSON written to {args.json}")
    if args.svg:
        svg = render_svg(results, f"hafloatd lab: {settings}")
        await asyncio.to_thread(Path(args.svg).write_text, svg)
        say(f"SVG written to {args.svg}")
    return 0 if all(r.ok for r in results) else 1


def agent_only_reason(report: CapabilityReport, asked: bool) -> str | None:
    """Why the lab runs the agent-only drill instead of a cluster (None: it does not)."""
    if asked:
        return "--agent-only"
    return None if report.ok else report.explain()


def say(text: str) -> None:
    print(text, flush=True)
