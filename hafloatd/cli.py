"""Command line: ``hafloatd run|check-config|status|simulator|lab|install-agent``.

Each subcommand lives in the module that owns its job; that module exposes
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only when their
subcommand runs, so ``hafloatd check-config`` does not pay for aiohttp.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hafloatd import __version__

# subcommand -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hafloatd.daemon", "run the daemon in the foreground (systemd Type=notify)"),
    "check-config": ("hafloatd.config_cli", "validate a configuration file"),
    "status": ("hafloatd.status", "show the daemon's state per reserved IP"),
    "simulator": ("hafloatd.lab.sim.cli", "run the DigitalOcean simulator"),
    "lab": ("hafloatd.lab.drills.cli", "run the failover lab: a real two-node Pacemaker cluster"),
    "install-agent": ("hafloatd.install", "install the OCF agent, unit and example config"),
}

# Set for ``run`` before aiohttp is first imported, to keep the daemon's resident size down
# (docs/benchmarks.md, footprint): frozenlist's compiled extension is C++ and maps libstdc++
# (about 1.1 MB resident) for the few signal lists aiohttp builds at start-up; frozenlist's
# documented switch selects its pure-Python build, which does the same job. An explicit
# setting in the environment wins.
DAEMON_ENVIRONMENT: dict[str, str] = {"FROZENLIST_NO_EXTENSIONS": "1"}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hafloatd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hafloatd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in args_list if a in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            if name == "run":
                for key, value in DAEMON_ENVIRONMENT.items():
                    os.environ.setdefault(key, value)
            module = _load(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_main=module.main)
    args = parser.parse_args(args_list)
    try:
        result: int = args._main(args)
    except KeyboardInterrupt:
        return 130
    return result


def _load(module_name: str) -> argparse.Namespace:
    module = importlib.import_module(module_name)
    return argparse.Namespace(add_arguments=module.add_arguments, main=module.main)


if __name__ == "__main__":
    sys.exit(main())
