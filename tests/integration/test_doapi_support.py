"""Helpers shared by the DoApiClient tests (no tests here).

``api_client(sim, **api_changes)`` opens a DoApiClient on the simulator with a fresh metrics
registry and fast polling; tests assert on what the simulator recorded (``sim.exchanges``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.doapi.transport import MIN_ATTEMPT_S
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


class WaitWatch:
    """What a client under a deadline did, in order: each time it read what was left of the
    deadline, and each wait (``asyncio.sleep`` called from hafloatd) it started. Shows that no
    wait was started that the deadline had no room for, judged against the client's own last
    reading before it: no clock is compared with a bound here, so a busy machine cannot fail
    it. (A reading taken before a request is older than the wait's start, so this catches a
    missing check after most failures, not all: the tests using it run several.)
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, float]] = []
        self._task = asyncio.current_task()
        events, task, real_sleep = self.events, self._task, asyncio.sleep

        async def sleep(delay: float, *args: Any) -> Any:
            # The client's own waits: not aiohttp's, nor other tasks'.
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if asyncio.current_task() is task and caller.startswith("hafloatd.") and delay > 0:
                events.append(("wait", delay))
            return await real_sleep(delay, *args)

        monkeypatch.setattr(asyncio, "sleep", sleep)

        class Watched(Deadline):
            def remaining(self) -> float:
                left = super().remaining()
                events.append(("remaining", left))
                return left

        self._deadline_class = Watched

    def deadline(self, seconds: float) -> Deadline:
        """A deadline whose readings are recorded; pass it to the client."""
        return self._deadline_class.after(seconds)

    @property
    def waits(self) -> list[float]:
        return [value for kind, value in self.events if kind == "wait"]

    def waits_past_the_deadline(self) -> list[tuple[float, float | None]]:
        """(wait, what the client had just read as left) for each wait that, with the least
        time an attempt needs after it (MIN_ATTEMPT_S), did not fit in that reading."""
        bad: list[tuple[float, float | None]] = []
        left: float | None = None
        for kind, value in self.events:
            if kind == "remaining":
                left = value
            elif left is None or value + MIN_ATTEMPT_S > left:
                bad.append((value, left))
        return bad
