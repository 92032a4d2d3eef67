"""Moving one reserved IP with the API, and the one rule that confirms where it went.

A move is confirmed only by an answer obtained **after the move's POST was accepted**:

* the action ``completed`` (an ``errored`` action fails the move, whatever else is seen);
* or, when the action cannot be looked up (404, e.g. BYOIP), a GET of the IP that is not
  ``locked`` and names the wanted droplet (``DoApiClient.wait_action``'s fallback);
* or an *edge* in this droplet's metadata: "not here" seen after acceptance, then "here" asked
  at least ``metadata.max_lag`` after acceptance. A "here" that was already there before the
  POST is a level, not an edge, and confirms nothing; and as the metadata may show the holder
  as of ``max_lag`` ago, an earlier "here" may be the echo of an older assignment (the IP
  was here, left, and the POST found it elsewhere), which the model-based test found.

The API client's own 422/unknown-fate handling ("already assigned", checked by a GET after the
POST) follows the same rule. A move that stops being followed before its action ended
(deadline, API failure, a stop cancelling the start) leaves the IP *in flux*, as a ``locked``
answer would: the next start looks before it POSTs. ``Mover.lookup`` waits out a ``locked``
IP: an IP that an action is moving is *in flux*, never "held" or "not held".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.doapi.models import ReservedIp
from hafloatd.errors import ActionFailed, DeadlineExceeded
from hafloatd.metadata import MetadataClient
from hafloatd.metrics import FAILOVER_PHASES

# While an action runs, the local metadata service is asked this often whether the IP is here;
# it is on the droplet's own link, has no rate limit, and answers in well under a millisecond.
CONFIRM_POLL_S = 0.05
METADATA_ASK_TIMEOUT_S = 1.0

# observe(droplet_id, locked, asked_at, source): feeds HolderTruth.
ApiObserver = Callable[[int | None, bool, float, str], None]


@dataclass
class FailoverTimeline:
    """Wall-clock stamps (Unix seconds) of one start's phases; None where not reached."""

    received: float
    post_sent: float | None = None
    api_accepted: float | None = None
    action_completed: float | None = None
    holder_confirmed: float | None = None
    confirmed_by: str | None = None
    outcome: str = "in_progress"
    action_id: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        phases: dict[str, object] = {"received": self.received}
        for phase in FAILOVER_PHASES:
            phases[phase] = getattr(self, phase)
        phases.update(
            confirmed_by=self.confirmed_by,
            outcome=self.outcome,
            action_id=self.action_id,
            error=self.error,
        )
        return phases


@dataclass(frozen=True)
class Confirmation:
    """How a move was confirmed: ``by`` is action, api (a GET after the POST) or metadata."""

    by: str
    action_id: int | None
    phase_monotonic: dict[str, float]


class Mover:
    """API moves of one IP, each followed to a confirmation by the rule above."""

    def __init__(
        self,
        ip: str,
        my_droplet_id: int,
        *,
        api: DoApiClient,
        metadata: MetadataClient,
        metadata_max_lag_s: float,
        observe_api: ApiObserver,
    ) -> None:
        self.ip = ip
        self.my_droplet_id = my_droplet_id
        self.api = api
        self.metadata = metadata
        self.metadata_max_lag_s = metadata_max_lag_s
        self._observe_api = observe_api

    async def lookup(self, deadline: Deadline) -> ReservedIp:
        """The holder per the API, once no action is pending on the IP (locked = in flux)."""
        asked_at = time.monotonic()
        current = await self.api.wait_unlocked(self.ip, deadline)
        self._observe_api(current.droplet_id, False, asked_at, "api")
        return current

    async def assign_here(self, deadline: Deadline, timeline: FailoverTimeline) -> Confirmation:
        """POST one assign to this droplet and follow it to a confirmation."""
        phases: dict[str, float] = {}

        def on_event(phase: str) -> None:
            phases[phase] = time.monotonic()
            setattr(timeline, phase, time.time())

        result = await self.api.assign(self.ip, self.my_droplet_id, deadline, on_event=on_event)
        accepted_at = phases.get("api_accepted", time.monotonic())
        if result.action is None:
            # No action to follow: a GET after the POST found the IP here, unlocked.
            self._observe_api(self.my_droplet_id, False, accepted_at, "api")
            return Confirmation("api", None, phases)
        timeline.action_id = result.action.id
        try:
            by = await self._confirm(result.action.id, accepted_at, deadline)
        except ActionFailed:
            raise  # it ended: the IP did not move
        except BaseException:
            # Our accepted action had not ended when we stopped following it (deadline,
            # API failure, cancelled by a stop): the IP is in flux until an answer says
            # otherwise, so no view from before it may send the next start's POST blind.
            self._observe_api(None, True, time.monotonic(), "api")
            raise
        phases["action_completed"] = confirmed_at = time.monotonic()
        timeline.action_completed = time.time()
        # As of the confirmation (not the POST): metadata polls answered while the action ran
        # rightly said "not here" and must not outvote it.
        self._observe_api(self.my_droplet_id, False, confirmed_at, by)
        return Confirmation(by, result.action.id, phases)

    async def unassign_if_here(self, deadline: Deadline) -> int | None:
        """Unassign the IP if it points here; the holder found (None if it was unassigned)."""
        current = await self.lookup(deadline)
        if current.droplet_id != self.my_droplet_id:
            return current.droplet_id
        asked_at = time.monotonic()
        action = await self.api.unassign(self.ip, deadline)
        if action is not None:
            await self.api.wait_action(action.id, deadline, ip=self.ip, expected_droplet_id=None)
        self._observe_api(None, False, asked_at, "api")
        return self.my_droplet_id

    async def _confirm(self, action_id: int, accepted_at: float, deadline: Deadline) -> str:
        """Race the action's completion against a metadata edge; an errored action raises."""

        async def by_action() -> str:
            await self.api.wait_action(
                action_id, deadline, ip=self.ip, expected_droplet_id=self.my_droplet_id
            )
            return "action"

        async def by_metadata_edge() -> str:
            seen_not_here = False
            while True:
                asked_at = time.monotonic()
                asked = Deadline.after(deadline.cap(METADATA_ASK_TIMEOUT_S))
                held = await self.metadata.holds(self.ip, asked)
                if held is False:
                    seen_not_here = True
                elif held and seen_not_here and asked_at - accepted_at >= self.metadata_max_lag_s:
                    return "metadata"
                await asyncio.sleep(deadline.cap(CONFIRM_POLL_S))

        action_task = asyncio.create_task(by_action(), name=f"wait-action-{self.ip}")
        edge_task = asyncio.create_task(by_metadata_edge(), name=f"wait-metadata-{self.ip}")
        try:
            done, _pending = await asyncio.wait(
                {action_task, edge_task},
                timeout=deadline.remaining(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if action_task in done:
                return action_task.result()  # raises ActionFailed when it errored
            if edge_task in done:
                return edge_task.result()
            raise DeadlineExceeded(
                f"deadline exceeded waiting for action {action_id} on {self.ip} to complete"
            )
        finally:
            for task in (action_task, edge_task):
                task.cancel()
            await asyncio.gather(action_task, edge_task, return_exceptions=True)
