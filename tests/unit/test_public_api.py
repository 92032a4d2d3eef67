"""The names other parts (the daemon, the lab, users' scripts) rely on, pinned so a refactor
cannot drop one silently."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from hafloatd import errors
from hafloatd.doapi import DoApiClient
from hafloatd.lab.sim import FaultInjector, Simulator

PUBLIC = {
    "hafloatd.config": [
        "Config", "ApiConfig", "MetadataConfig", "ControlConfig", "MetricsConfig", "IpConfig",
        "HealthConfig", "PacemakerConfig", "LoggingConfig", "load_config", "parse_config",
        "parse_duration",
    ],
    "hafloatd.doapi": ["DoApiClient", "ReservedIp", "Action", "AssignResult", "RateLimit"],
    "hafloatd.metadata": ["MetadataClient", "DropletIdentity", "ReservedIpView"],
    "hafloatd.token": ["ApiToken", "LoadedToken", "load_token"],
    "hafloatd.controller": ["IpController", "Role", "RoleStore", "OpResult", "FailoverTimeline"],
    "hafloatd.probe": ["HealthProbe", "HealthState"],
    "hafloatd.control.protocol": ["ControlRequest", "ControlReply", "parse_request"],
    "hafloatd.control.server": ["ControlServer"],
    "hafloatd.control.client": ["request", "request_sync"],
    "hafloatd.metrics": ["Metrics"],
    "hafloatd.sdnotify": ["SdNotifier"],
    "hafloatd.daemon": ["Daemon", "run", "loop_factory"],
    "hafloatd.deadline": ["Deadline"],
    "hafloatd.lab.sim": [
        "Simulator", "SimScenario", "SimDroplet", "SimReservedIp", "SimAction", "SimApiError",
        "Exchange", "Fault", "FaultError", "FaultInjector", "ScenarioError",
        "scenario_from_mapping",
    ],
    "hafloatd.lab.cluster": [
        "Cluster", "ClusterSpec", "ClusterNode", "ClusterStatus", "NetworkSpec", "ResourceSpec",
        "HealthSpec", "check_capabilities", "CapabilityError", "ClusterError",
    ],
}  # fmt: skip

# What tests (the controller's model-based test among them) drive the simulator with.
SIMULATOR_METHODS = [
    "start", "stop", "holder", "locked", "holder_history", "holder_at", "force_holder",
    "move_out_of_band", "set_metadata_lag", "metadata_view", "actions", "wait_idle",
    "wait_holder", "finish_stuck_actions", "requests", "posts", "expect_invalid_requests",
]  # fmt: skip
FAULT_METHODS = [
    "latency", "server_errors", "rate_limit_storm", "drop_connections", "errored_actions",
    "stuck_actions", "slow_actions", "metadata_down", "metadata_slow", "metadata_empty",
    "metadata_error", "metadata_garbage", "remove", "clear",
]  # fmt: skip

DO_CLIENT_METHODS = [
    "start", "close", "get_reserved_ip", "assign", "unassign", "get_action", "wait_action",
    "keep_warm",
]  # fmt: skip


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_module_exposes_its_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in PUBLIC[module_name] if not hasattr(module, name)]
    assert missing == []


def test_do_client_methods_are_coroutines() -> None:
    for name in DO_CLIENT_METHODS:
        assert inspect.iscoroutinefunction(getattr(DoApiClient, name)), name


def test_simulator_and_fault_injector_offer_what_tests_drive() -> None:
    assert [m for m in SIMULATOR_METHODS if not callable(getattr(Simulator, m, None))] == []
    assert [m for m in FAULT_METHODS if not callable(getattr(FaultInjector, m, None))] == []
    assert isinstance(Simulator.metadata_lag_s, property)


def test_every_error_maps_to_an_ocf_exit_code() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.HafloatdError)
    ]
    assert len(classes) >= 12
    for cls in classes:
        assert cls.ocf_code in range(8), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree"


# --- DESIGN §10: the lab imports nothing from the daemon's side ------------------------------
# A fake that shares code with what it tests hides the bugs both would share. The lab may import
# itself (hafloatd.lab.*), the package root (hafloatd, for __version__) and the shared leaves
# below; everything else in hafloatd is the daemon's side (doapi, metadata, controller, holder,
# roles, config, token, control, daemon, dispatch, probe, errors...), so the rule is an
# allowlist: a new daemon module is covered without editing this test.

PACKAGE_ROOT = Path(importlib.import_module("hafloatd").__file__ or "").parent
LAB_ALLOWED = ("hafloatd", "hafloatd.__version__")
# Shared leaves: dependency-free helpers (standard library only, nothing from hafloatd) that
# hold none of the behaviour the lab judges (no DigitalOcean, metadata, Pacemaker or holder
# logic), so sharing them cannot hide a bug the simulator is there to catch.
#   hafloatd.fsutil: the atomic file writer; the cluster harness writes each node's files with
#   it (lab/cluster/nodefiles.py). test_shared_leaves_import_nothing_from_hafloatd keeps it a leaf.
LAB_SHARED_LEAVES = ("hafloatd.fsutil",)
LAB_PACKAGE = "hafloatd.lab"


def module_name_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module_name: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of everything ``source`` (the text of ``module_name``) imports.

    Covers ``import a.b``, ``from a import b`` (both ``a`` and ``a.b``: b may be a module),
    relative imports resolved against the module's package, imports under ``if TYPE_CHECKING``
    or inside functions, and ``importlib.import_module("…")`` / ``__import__("…")`` with a
    literal name.
    """
    package = module_name if is_package else module_name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            base = importlib.util.resolve_name(relative, package) if node.level else relative
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                target = first.value
                names.add(
                    importlib.util.resolve_name(target, package)
                    if target.startswith(".")
                    else target
                )
    return names


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def daemon_side_imports(names: set[str]) -> list[str]:
    """The names that reach into hafloatd outside the lab (sorted)."""
    return sorted(
        name
        for name in names
        if (name == "hafloatd" or name.startswith("hafloatd."))
        and name not in LAB_ALLOWED
        and not _within(name, LAB_PACKAGE)
        and not any(_within(name, leaf) for leaf in LAB_SHARED_LEAVES)
    )


def _within(name: str, module: str) -> bool:
    """``name`` is ``module`` or a name inside it (``from module import x`` gives module.x)."""
    return name == module or name.startswith(module + ".")


def test_lab_imports_nothing_from_the_daemon_side() -> None:
    """DESIGN §10, over every module under hafloatd/lab/, subpackages included."""
    lab = PACKAGE_ROOT / "lab"
    paths = sorted(lab.rglob("*.py"))
    assert lab / "sim" / "state.py" in paths  # the walk reaches subpackages
    assert any(p.parent.name == "cluster" for p in paths)  # the cluster harness is checked too
    offenders = {}
    for path in paths:
        names = imported_names(
            path.read_text(encoding="utf-8"),
            module_name_of(path),
            is_package=path.name == "__init__.py",
        )
        found = daemon_side_imports(names)
        if found:
            offenders[str(path.relative_to(PACKAGE_ROOT.parent))] = found
    assert offenders == {}


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("hafloatd.lab.drill", "import hafloatd.doapi"),
        ("hafloatd.lab.drill", "import hafloatd.config as cfg"),
        ("hafloatd.lab.drill", "from hafloatd import config"),
        ("hafloatd.lab.drill", "from hafloatd.controller import IpController"),
        ("hafloatd.lab.drill", "from hafloatd import errors"),
        ("hafloatd.lab.drill", "from ..metadata import MetadataClient"),
        ("hafloatd.lab.drill", "from .. import probe"),
        ("hafloatd.lab.sim.state", "from ... import token"),
        ("hafloatd.lab.sim.state", "from ...control import ControlServer"),
        ("hafloatd.lab.sim.state", "if TYPE_CHECKING:\n    from hafloatd.daemon import Daemon"),
        ("hafloatd.lab.sim.state", "def f():\n    import hafloatd.holder"),
        ("hafloatd.lab.sim.state", "importlib.import_module('hafloatd.dispatch')"),
        ("hafloatd.lab.sim.state", "__import__('hafloatd.roles')"),
        ("hafloatd.lab.cluster.nodefiles", "from hafloatd import fsutil, config"),
        ("hafloatd.lab.cluster.nodefiles", "import hafloatd.fsutil_extra"),
    ],
)
def test_the_lab_import_rule_catches_every_form_of_import(module: str, source: str) -> None:
    assert daemon_side_imports(imported_names(source, module)) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("hafloatd.lab.drill", "from hafloatd import __version__"),
        ("hafloatd.lab.drill", "import hafloatd"),
        ("hafloatd.lab.drill", "from hafloatd.lab.sim import Simulator"),
        ("hafloatd.lab.drill", "from .sim import Simulator"),
        ("hafloatd.lab.sim.cli", "from .simulator import Simulator"),
        ("hafloatd.lab.sim.cli", "from ..nodes import DaemonNode"),
        ("hafloatd.lab.sim", "from . import state"),
        ("hafloatd.lab.sim.cli", "import aiohttp, yaml"),
        ("hafloatd.lab.cluster.nodefiles", "import hafloatd.fsutil"),
        ("hafloatd.lab.cluster.nodefiles", "from hafloatd import fsutil"),
        ("hafloatd.lab.cluster.nodefiles", "from hafloatd.fsutil import write_atomically"),
        ("hafloatd.lab.cluster.nodefiles", "from ...fsutil import write_atomically"),
    ],
)
def test_the_lab_import_rule_allows_the_lab_and_the_version(module: str, source: str) -> None:
    is_package = module == "hafloatd.lab.sim"
    assert daemon_side_imports(imported_names(source, module, is_package=is_package)) == []


@pytest.mark.parametrize("leaf", LAB_SHARED_LEAVES)
def test_shared_leaves_import_nothing_from_hafloatd(leaf: str) -> None:
    """What makes a shared leaf safe for the lab: it brings nothing of the daemon along."""
    path = Path(importlib.import_module(leaf).__file__ or "")
    names = imported_names(path.read_text(encoding="utf-8"), leaf)
    assert sorted(n for n in names if _within(n, "hafloatd")) == []


def test_importing_every_lab_module_loads_no_daemon_module() -> None:
    """The same rule at run time, in a fresh interpreter: catches imports built at run time."""
    lab = PACKAGE_ROOT / "lab"
    modules = sorted(module_name_of(p) for p in lab.rglob("*.py"))
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('hafloatd'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=PACKAGE_ROOT.parent,
    )
    loaded = set(result.stdout.split())
    assert f"{LAB_PACKAGE}.sim.state" in loaded
    assert daemon_side_imports(loaded) == []


def test_control_protocol_is_a_leaf_the_controller_can_import() -> None:
    """The controller builds its replies from it: it must not pull in the server (a cycle)."""
    package = Path(importlib.import_module("hafloatd.control").__file__ or "").parent
    init = ast.parse((package / "__init__.py").read_text())
    assert [type(node) for node in init.body] == [ast.Expr], "hafloatd.control re-exports nothing"
    allowed = {"hafloatd.errors", "hafloatd.deadline", "hafloatd.logs"}
    tree = ast.parse((package / "protocol.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("hafloatd") or node.module in allowed, node.module
        if isinstance(node, ast.Import):
            assert all(not alias.name.startswith("hafloatd") for alias in node.names)
