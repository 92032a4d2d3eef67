"""IpController with the real DO and metadata clients against the simulator, in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from hafloatd.config import ApiConfig, IpConfig, MetadataConfig
from hafloatd.controller import IpController
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.holder import ApiAnswer
from hafloatd.lab.sim import Simulator
from hafloatd.metadata import MetadataClient
from hafloatd.metrics import Metrics
from hafloatd.roles import Role, RoleStore
from hafloatd.token import ApiToken
from tests.sim_fixtures import MakeSimulator, default_scenario

IP = "203.0.113.10"
MakeController = Callable[..., Awaitable[IpController]]


@pytest.fixture
async def make_controller(tmp_path: Path) -> AsyncIterator[MakeController]:
    closers: list[Callable[[], Awaitable[None]]] = []

    async def factory(
        sim: Simulator, droplet_id: int = 1001, on_stop: str = "release"
    ) -> IpController:
        api_config = ApiConfig(
            base_url=sim.api_url,
            token_source="env",
            action_poll_interval=0.05,
            request_timeout=2.0,
        )
        metadata_config = MetadataConfig(
            base_url=sim.metadata_url(droplet_id),
            cache_file=str(tmp_path / f"meta-{droplet_id}.json"),
            timeout=1.0,
            poll_interval=0.2,
            max_lag=0.1,
        )
        metrics = Metrics(CollectorRegistry())
        api = DoApiClient(api_config, ApiToken("test-token"), metrics=metrics)
        await api.start()
        metadata = MetadataClient(metadata_config, metrics=metrics)
        await metadata.start()
        closers.extend([api.close, metadata.close])
        identity = await metadata.identity(Deadline.after(2))
        controller = IpController(
            IpConfig(IP, on_stop=on_stop),  # type: ignore[arg-type]
            api=api,
            api_config=api_config,
            metadata=metadata,
            metadata_config=metadata_config,
            identity=identity,
            roles=RoleStore(str(tmp_path / f"run-{droplet_id}")),
            metrics=metrics,
        )
        closers.insert(0, controller.close)
        return controller

    yield factory
    for close in closers:
        await close()


async def test_n_concurrent_starts_join_one_operation_and_send_one_post(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    results = await asyncio.gather(*(controller.start(Deadline.after(5)) for _ in range(10)))
    assert all(r.ok for r in results)
    assert len(simulator.posts(IP)) == 1
    assert simulator.holder(IP) == 1001
    assert controller.role is Role.STARTED


async def test_monitor_makes_no_api_call(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    before = len(simulator.exchanges)
    for _ in range(50):
        assert controller.monitor().ocf == 0
    assert len(simulator.exchanges) == before


async def test_start_when_already_held_posts_nothing(
    make_simulator: MakeSimulator, make_controller: MakeController
) -> None:
    sim = await make_simulator(default_scenario())
    sim.force_holder(IP, 1001)
    controller = await make_controller(sim)
    result = await controller.start(Deadline.after(5))
    assert result.ok
    assert result.data["timeline"]["outcome"] == "already_held"  # type: ignore[index]
    assert sim.posts(IP) == []


async def test_timeline_phases_are_ordered_and_metrics_observed(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    timeline = controller.timelines[-1]
    stamps = [
        timeline.received,
        timeline.post_sent,
        timeline.api_accepted,
        timeline.action_completed,
        timeline.holder_confirmed,
    ]
    assert None not in stamps
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    registry = controller.metrics.registry
    for phase in ("post_sent", "api_accepted", "action_completed", "holder_confirmed"):
        count = registry.get_sample_value(
            "hafloatd_failover_phase_seconds_count", {"ip": IP, "phase": phase}
        )
        assert count == 1.0, phase


async def test_errored_action_fails_start_with_action_id_and_leaves_role_stopped(
    simulator: Simulator, make_controller: MakeController
) -> None:
    simulator.faults.errored_actions(1)
    controller = await make_controller(simulator)
    result = await controller.start(Deadline.after(5))
    assert result.ocf == 1
    assert str(controller.timelines[-1].action_id) in result.reason
    assert controller.role is Role.STOPPED
    assert controller.monitor().ocf == 7


async def test_stuck_action_fails_start_within_the_deadline(
    simulator: Simulator, make_controller: MakeController
) -> None:
    simulator.faults.stuck_actions(1)
    controller = await make_controller(simulator)
    deadline = Deadline.after(1.0)
    result = await controller.start(deadline)
    assert result.ocf == 1
    assert "deadline exceeded" in result.reason
    assert simulator.locked(IP)  # answered while the action was still stuck
    simulator.finish_stuck_actions()


async def test_stop_during_start_cancels_it_and_stops(
    simulator: Simulator, make_controller: MakeController
) -> None:
    simulator.faults.stuck_actions(1)
    controller = await make_controller(simulator)
    start = asyncio.create_task(controller.start(Deadline.after(10)))
    async with asyncio.timeout(5):
        while not simulator.posts(IP):
            await asyncio.sleep(0.01)
    stop = await controller.stop(Deadline.after(5))
    assert stop.ok
    start_result = await start
    assert start_result.ocf == 1
    assert controller.role is Role.STOPPED
    simulator.finish_stuck_actions()


async def test_default_stop_makes_no_api_call_even_with_api_down(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    simulator.faults.server_errors(None, endpoint="*", status=503)
    before = len(simulator.exchanges)
    result = await controller.stop(Deadline.after(2))
    assert result.ok
    assert len(simulator.exchanges) == before
    assert simulator.holder(IP) == 1001


async def test_unassign_stop_unassigns_only_when_held_here(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator, on_stop="unassign")
    assert (await controller.start(Deadline.after(5))).ok
    assert (await controller.stop(Deadline.after(5))).ok
    assert simulator.holder(IP) is None

    simulator.force_holder(IP, 1002)
    assert (await controller.stop(Deadline.after(5))).ok
    assert simulator.holder(IP) == 1002


async def test_unassign_stop_succeeds_even_when_api_is_down(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator, on_stop="unassign")
    assert (await controller.start(Deadline.after(5))).ok
    simulator.faults.server_errors(None, endpoint="*", status=503)
    result = await controller.stop(Deadline.after(1))
    assert result.ok
    assert "unassign failed" in result.reason
    assert controller.role is Role.STOPPED


async def test_role_is_persisted_and_reloaded(
    simulator: Simulator, make_controller: MakeController, tmp_path: Path
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    assert RoleStore(str(tmp_path / "run-1001")).load(IP).role is Role.STARTED
    assert (await controller.stop(Deadline.after(5))).ok
    assert RoleStore(str(tmp_path / "run-1001")).load(IP).role is Role.STOPPED


async def test_stale_api_answer_cannot_roll_back_a_confirmed_start(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    asked_before_start = time.monotonic()
    assert (await controller.start(Deadline.after(5))).ok
    # A holder GET sent before the move completed, answered after it: dropped.
    controller.truth.observe_api(None, locked=False, asked_at=asked_before_start)
    assert controller.monitor().ocf == 0


async def test_an_older_metadata_answer_cannot_replace_a_newer_one(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    controller.truth.api = None  # only the metadata speaks (the API is down)
    asked_before = time.monotonic()
    controller.observe_metadata(True)
    controller.observe_metadata(False, asked_at=asked_before)  # a slow poll, answered late
    assert controller.monitor().ocf == 0


async def test_metadata_disagreement_triggers_authoritative_recheck(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    controller._last_recheck = -1e9  # let the debounce allow a check now
    simulator.force_holder(IP, 1002)
    controller.observe_metadata(False)
    async with asyncio.timeout(5):
        while "1002" not in controller.monitor().reason:  # the API named the new holder
            await asyncio.sleep(0.01)
    assert controller.monitor().ocf == 1


async def test_holder_unknown_when_both_sources_are_stale(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    long_ago = time.monotonic() - 1e6
    controller.truth.api = ApiAnswer(1001, False, long_ago, "api")
    controller.truth.metadata = None
    result = controller.monitor()
    assert result.ocf == 1
    assert "cannot confirm" in result.reason


async def test_a_locked_ip_is_in_flux_never_held(
    simulator: Simulator, make_controller: MakeController
) -> None:
    controller = await make_controller(simulator)
    assert (await controller.start(Deadline.after(5))).ok
    simulator.faults.stuck_actions(1)
    other = await make_controller(simulator, droplet_id=1002)
    moving = asyncio.create_task(other.start(Deadline.after(10)))
    async with asyncio.timeout(5):
        while not simulator.locked(IP):
            await asyncio.sleep(0.01)
    assert controller.monitor().ocf == 0
    await controller.refresh_from_api(Deadline.after(2))
    in_flux = controller.monitor()
    assert in_flux.ocf == 1  # an action is moving it: not "held" any more
    assert "locked" in in_flux.reason
    simulator.finish_stuck_actions()
    assert (await moving).ok
    await controller.refresh_from_api(Deadline.after(2))
    assert controller.monitor().ocf == 1


async def test_start_after_the_ip_moved_away_unseen_moves_it_back(
    simulator: Simulator, make_controller: MakeController
) -> None:
    """A cached "held here" a few polls behind a move away must not make start a no-op."""
    node1 = await make_controller(simulator)
    node2 = await make_controller(simulator, droplet_id=1002)
    assert (await node1.start(Deadline.after(5))).ok
    assert (await node1.stop(Deadline.after(5))).ok
    assert (await node2.start(Deadline.after(5))).ok
    assert (await node2.stop(Deadline.after(5))).ok
    # node1 has seen nothing since (no metadata poll, no holder check): its view is stale.
    result = await node1.start(Deadline.after(5))
    assert result.ok
    assert result.data["timeline"]["outcome"] == "moved"  # type: ignore[index]
    assert simulator.holder(IP) == 1001
    assert len(simulator.posts(IP)) == 3


async def test_a_slow_action_is_confirmed_by_a_metadata_edge_once_past_the_lag(
    simulator: Simulator, make_controller: MakeController
) -> None:
    """metadata.max_lag is 0.1 s here: "not here", then "here" asked 0.1 s after the POST was
    accepted, confirms the move while the action's status is slow to come back."""
    simulator.faults.latency(30.0, endpoint="get_ip_action,get_action")
    controller = await make_controller(simulator)
    result = await controller.start(Deadline.after(10))
    assert result.ok, result
    assert result.data["timeline"]["confirmed_by"] == "metadata"  # type: ignore[index]
    assert simulator.holder(IP) == 1001
