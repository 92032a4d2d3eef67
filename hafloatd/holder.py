"""Who holds the reserved IP: one pure rule fusing the API's and the metadata's answers.

Two sources answer "does the IP point here?" (DESIGN §4):

* the **API** (``GET /v2/reserved_ips/{ip}``): authoritative, but rate limited, so asked on
  start, after actions and at the slow ``api.holder_check_interval`` cadence; a ``locked``
  answer means an action is moving the IP: *in flux*, never "held";
* the droplet's **metadata** service: free and polled every ``metadata.poll_interval``, but it
  may lag the API by up to ``metadata.max_lag`` after a move.

``HolderTruth.view(now)`` is the one place they are combined; it takes no I/O and no clock of
its own, so every rule below is unit-tested with plain numbers (``tests/unit/test_holder.py``):

1. An answer older than its source's freshness window counts for nothing; with no fresh
   answer the holder is *unknown* (monitor fails with the reason), never *held*.
2. A fresh ``locked`` API answer makes the holder unknown (in flux).
3. When both are fresh and agree, that is the answer.
4. When they disagree, the API wins while the metadata may still be lagging behind it, i.e.
   when the metadata's current value was already there before the API answered and the API
   answered less than ``max_lag`` ago. Otherwise the metadata saw something newer: "not here"
   wins at once; "here" against an API "elsewhere" is *unknown* until the API is asked again
   (``wants_api_answer``) — "held" always needs an answer that does not contradict it.
   Such a "not here" keeps vetoing the API's older "here" after it went stale (the metadata
   stopped answering): the holder is then unknown, not held.
5. Only metadata fresh: its answer (the API is down or not yet asked).

So a monitor that answers 0 means the IP pointed here within ``Freshness.bound_s``
(docs/operations.md, "How fresh is monitor's answer").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Freshness:
    """How long each source's answer counts (seconds), and how far metadata may lag."""

    api_s: float
    metadata_s: float
    metadata_lag_s: float

    @property
    def bound_s(self) -> float:
        """Longest time a monitor may still answer 0 after the IP moved away."""
        return max(self.api_s, self.metadata_s + self.metadata_lag_s)


@dataclass(frozen=True)
class ApiAnswer:
    droplet_id: int | None
    locked: bool
    at: float  # monotonic time the question was sent
    source: str


@dataclass(frozen=True)
class MetadataAnswer:
    held: bool
    at: float  # monotonic time of the latest poll with this answer
    since: float  # monotonic time of the first poll in a row with this answer


@dataclass(frozen=True)
class HolderView:
    """The current belief: ``held_here`` None means unknown; ``why`` says why, for humans."""

    held_here: bool | None
    droplet_id: int | None
    source: str
    why: str = ""

    def describe_holder(self) -> str:
        if self.droplet_id is not None:
            return f"droplet {self.droplet_id}"
        if self.source == "metadata":
            return "another droplet or none (per this droplet's metadata)"
        return "no droplet"


class HolderTruth:
    """The latest answer of each source for one IP and the rule that combines them."""

    def __init__(self, my_droplet_id: int, freshness: Freshness) -> None:
        self.my_droplet_id = my_droplet_id
        self.freshness = freshness
        self.api: ApiAnswer | None = None
        self.metadata: MetadataAnswer | None = None

    def observe_api(
        self, droplet_id: int | None, *, locked: bool, asked_at: float, source: str = "api"
    ) -> bool:
        """Record an API answer to a question sent at ``asked_at``; an answer to a question
        older than the one already recorded is dropped (False): a slow GET must not roll
        back a newer confirmation."""
        if self.api is not None and asked_at < self.api.at:
            return False
        self.api = ApiAnswer(droplet_id, locked, asked_at, source)
        return True

    def observe_metadata(self, held: bool | None, *, asked_at: float) -> bool:
        """Record one metadata poll; None (failed, empty) is no answer and changes nothing."""
        if held is None:
            return False
        previous = self.metadata
        if previous is not None and asked_at < previous.at:
            return False
        since = previous.since if previous is not None and previous.held == held else asked_at
        self.metadata = MetadataAnswer(held, asked_at, since)
        return True

    def forget(self) -> None:
        self.api = None
        self.metadata = None

    def view(self, now: float) -> HolderView:
        api = self.api if self.api and now - self.api.at <= self.freshness.api_s else None
        meta = (
            self.metadata
            if self.metadata and now - self.metadata.at <= self.freshness.metadata_s
            else None
        )
        if api is not None and api.locked:
            return HolderView(None, api.droplet_id, "api", "an action is moving the IP (locked)")
        if api is not None:
            api_held = api.droplet_id == self.my_droplet_id
            if meta is None and api_held and self._stale_metadata_contradicts(api):
                return HolderView(
                    None, api.droplet_id, "metadata", "metadata said not here after the API answer"
                )
            if meta is None or meta.held == api_held or not self._metadata_is_newer(api, meta, now):
                return HolderView(api_held, api.droplet_id, api.source)
            if not meta.held:
                return HolderView(False, None, "metadata", "metadata changed after the API answer")
            return HolderView(
                None,
                api.droplet_id,
                "metadata",
                f"metadata says here, the API said droplet {api.droplet_id}; re-checking",
            )
        if meta is not None:
            droplet_id = self.my_droplet_id if meta.held else None
            return HolderView(meta.held, droplet_id, "metadata")
        return HolderView(None, None, "unknown", "no fresh answer from the API or the metadata")

    def wants_api_answer(self, now: float) -> bool:
        """The API should be asked again: the metadata contradicts its answer."""
        api, meta = self.api, self.metadata
        if api is None or meta is None or api.locked:
            return False
        return meta.held != (api.droplet_id == self.my_droplet_id) and meta.at > api.at

    def _stale_metadata_contradicts(self, api: ApiAnswer) -> bool:
        """The last (now stale) metadata answer is a "not here" that came after the API's
        "here" and was not lag: it stays the last word until an answer newer than it."""
        meta = self.metadata
        if meta is None or meta.held:
            return False
        return meta.since > api.at or meta.at - api.at > self.freshness.metadata_lag_s

    def _metadata_is_newer(self, api: ApiAnswer, meta: MetadataAnswer, now: float) -> bool:
        """The metadata's disagreeing value appeared after the API answered, or has lasted
        longer after it than the metadata can lag."""
        return meta.since > api.at or now - api.at > self.freshness.metadata_lag_s
