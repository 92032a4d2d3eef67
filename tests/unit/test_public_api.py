"""The names other parts (the daemon, the lab, users' scripts) rely on, pinned so a refactor
cannot drop one silently."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from hafloatd import errors
from hafloatd.doapi import DoApiClient

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
    "hafloatd.control": ["ControlServer", "ControlRequest", "ControlReply", "parse_request"],
    "hafloatd.control_client": ["request", "request_sync"],
    "hafloatd.metrics": ["Metrics"],
    "hafloatd.sdnotify": ["SdNotifier"],
    "hafloatd.daemon": ["Daemon", "run", "loop_factory"],
    "hafloatd.deadline": ["Deadline"],
    "hafloatd.lab.simulator": [
        "Simulator", "SimScenario", "SimDroplet", "SimReservedIp",
    ],
    "hafloatd.lab.cluster": [
        "Cluster", "ClusterSpec", "ClusterNode", "ClusterStatus", "NetworkSpec", "ResourceSpec",
        "HealthSpec", "check_capabilities", "CapabilityError", "ClusterError",
    ],
}  # fmt: skip

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


def test_lab_imports_nothing_from_the_daemon_side() -> None:
    """DESIGN §10: a fake that shares code with what it tests hides the bugs both share."""
    lab = Path(importlib.import_module("hafloatd.lab").__file__ or "").parent
    forbidden = {"doapi", "metadata", "controller", "config", "token", "control", "daemon"}
    paths = sorted(lab.rglob("*.py"))
    assert any(p.parent.name == "cluster" for p in paths)  # the cluster harness is checked too
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "hafloatd" and len(parts) > 1 and parts[1] != "lab":
                    assert parts[1] not in forbidden, f"{path.name} imports {node.module}"
