"""Helpers shared by the DoApiClient tests (no tests here).

``api_client(sim, **api_changes)`` opens a DoApiClient on the simulator with a fresh metrics
registry and fast polling; tests assert on what the simulator recorded (``sim.exchanges``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from hafloatd.config import ApiConfig
from hafloatd.doapi import DoApiClient
from hafloatd.lab.sim import Simulator
from hafloatd.metrics import Metrics
from hafloatd.token import ApiToken
from tests.sim_fixtures import DEFAULT_TOKEN

FAST_API = {
    "action_poll_interval": 0.02,
    "connect_timeout": 1.0,
    "request_timeout": 2.0,
}


def api_config(sim: Simulator, **changes: Any) -> ApiConfig:
    values: dict[str, Any] = {"base_url": sim.api_url, **FAST_API}
    if sim.ca_file is not None:
        values["ca_file"] = sim.ca_file
    values.update(changes)
    return ApiConfig(**values)


@asynccontextmanager
async def api_client(
    sim: Simulator, *, token: str = DEFAULT_TOKEN, metrics: Metrics | None = None, **changes: Any
) -> AsyncIterator[DoApiClient]:
    config = api_config(sim, **changes)
    client = DoApiClient(config, ApiToken(token), metrics=metrics or Metrics(CollectorRegistry()))
    async with client:
        yield client


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A metric sample, 0.0 when the series does not exist yet."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def replace_config(config: ApiConfig, **changes: Any) -> ApiConfig:
    return dataclasses.replace(config, **changes)
