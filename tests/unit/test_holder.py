"""Holder truth (``hafloatd.holder``): the one rule fusing the API's and the metadata's answers.

Pure: every time below is a plain monotonic number; each test names the docstring rule it pins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hafloatd.holder import Freshness, HolderTruth, HolderView

ME = 1001
OTHER = 1002
# API answers count 30 s, metadata answers 2 s, metadata may lag the API by 5 s
FRESH = Freshness(api_s=30.0, metadata_s=2.0, metadata_lag_s=5.0)


def truth(freshness: Freshness = FRESH) -> HolderTruth:
    return HolderTruth(ME, freshness)


def poll_metadata(holder: HolderTruth, held: bool, times: list[float]) -> None:
    for at in times:
        assert holder.observe_metadata(held, asked_at=at)


# --- rule 1: staleness per source -----------------------------------------------------------


def test_no_answer_at_all_is_unknown() -> None:
    view = truth().view(0.0)
    assert view == HolderView(None, None, "unknown", view.why)
    assert "no fresh answer" in view.why


def test_api_answer_counts_up_to_its_freshness_window_then_unknown() -> None:
    holder = truth()
    holder.observe_api(ME, locked=False, asked_at=100.0)
    assert holder.view(100.0 + FRESH.api_s).held_here is True
    stale = holder.view(100.0 + FRESH.api_s + 0.01)
    assert stale.held_here is None
    assert stale.source == "unknown"


def test_metadata_answer_counts_up_to_its_freshness_window_then_unknown() -> None:
    holder = truth()
    holder.observe_metadata(True, asked_at=100.0)
    assert holder.view(100.0 + FRESH.metadata_s).held_here is True
    stale = holder.view(100.0 + FRESH.metadata_s + 0.01)
    assert stale.held_here is None
    assert stale.source == "unknown"


def test_a_stale_not_here_is_unknown_too_never_a_guess() -> None:
    holder = truth()
    holder.observe_api(OTHER, locked=False, asked_at=0.0)
    holder.observe_metadata(False, asked_at=0.0)
    assert holder.view(FRESH.api_s + 1).held_here is None


def test_stale_api_leaves_the_fresh_metadata_answer() -> None:
    # rule 5: the API said here long ago; the metadata, fresh, now says not here
    holder = truth()
    holder.observe_api(ME, locked=False, asked_at=0.0)
    holder.observe_metadata(False, asked_at=40.0)
    view = holder.view(40.5)
    assert view == HolderView(False, None, "metadata")


def test_stale_metadata_leaves_the_fresh_api_answer() -> None:
    # metadata said not here (and is stale); the API, asked later and fresh, says here
    holder = truth()
    holder.observe_metadata(False, asked_at=0.0)
    holder.observe_api(ME, locked=False, asked_at=10.0)
    assert holder.view(11.0) == HolderView(True, ME, "api")


def test_forget_drops_both_answers() -> None:
    holder = truth()
    holder.observe_api(ME, locked=False, asked_at=0.0)
    holder.observe_metadata(True, asked_at=0.0)
    holder.forget()
    assert holder.view(0.0).held_here is None
    # and a forgotten answer is no longer "newer" than what comes next
    assert holder.observe_api(OTHER, locked=False, asked_at=-1.0)


# --- rule 2: locked ------------------------------------------------------------------------


def test_locked_answer_naming_this_droplet_is_unknown_not_held() -> None:
    holder = truth()
    holder.observe_api(ME, locked=True, asked_at=0.0)
    view = holder.view(1.0)
    assert view.held_here is None
    assert view.droplet_id == ME
    assert "locked" in view.why


def test_locked_beats_agreeing_metadata() -> None:
    holder = truth()
    poll_metadata(holder, True, [0.0, 1.0, 2.0])
    holder.observe_api(ME, locked=True, asked_at=1.5)
    assert holder.view(2.0).held_here is None


def test_a_stale_locked_answer_no_longer_counts() -> None:
    holder = truth()
    holder.observe_api(ME, locked=True, asked_at=0.0)
    holder.observe_metadata(True, asked_at=FRESH.api_s + 1)
    assert holder.view(FRESH.api_s + 1).held_here is True


# --- rule 3: agreement ---------------------------------------------------------------------


def test_both_fresh_and_agreeing_here() -> None:
    holder = truth()
    holder.observe_metadata(True, asked_at=0.0)
    holder.observe_api(ME, locked=False, asked_at=1.0)
    assert holder.view(1.5) == HolderView(True, ME, "api")


def test_both_fresh_and_agreeing_elsewhere_names_the_holder() -> None:
    holder = truth()
    holder.observe_metadata(False, asked_at=0.0)
    holder.observe_api(OTHER, locked=False, asked_at=1.0)
    assert holder.view(1.5) == HolderView(False, OTHER, "api")


def test_api_saying_no_droplet_is_not_here() -> None:
    holder = truth()
    holder.observe_api(None, locked=False, asked_at=0.0)
    assert holder.view(0.0) == HolderView(False, None, "api")


def test_api_source_label_is_kept() -> None:
    holder = truth()
    holder.observe_api(ME, locked=False, asked_at=0.0, source="action")
    assert holder.view(0.0).source == "action"


# --- rule 4: disagreement ------------------------------------------------------------------


def test_api_wins_over_metadata_still_lagging_behind_an_assign() -> None:
    # metadata said "not here" since before the API answered "here": the metadata lags
    holder = truth()
    poll_metadata(holder, False, [0.0, 1.0, 2.0])
    holder.observe_api(ME, locked=False, asked_at=2.5)
    poll_metadata(holder, False, [3.0, 4.0])
    assert holder.view(4.0) == HolderView(True, ME, "api")


def test_api_wins_over_metadata_still_lagging_behind_a_move_away() -> None:
    holder = truth()
    poll_metadata(holder, True, [0.0, 1.0, 2.0])
    holder.observe_api(OTHER, locked=False, asked_at=2.5)
    poll_metadata(holder, True, [3.0, 4.0])
    assert holder.view(4.0) == HolderView(False, OTHER, "api")


def test_metadata_lagging_longer_than_max_lag_wins_with_not_here() -> None:
    # the same "not here" run, but it outlasted max_lag after the API answer: it is real
    holder = truth()
    holder.observe_metadata(False, asked_at=0.0)
    holder.observe_api(ME, locked=False, asked_at=1.0)
    lag_over = 1.0 + FRESH.metadata_lag_s
    holder.observe_metadata(False, asked_at=lag_over)
    assert holder.view(lag_over).held_here is True  # exactly max_lag: still tolerated
    holder.observe_metadata(False, asked_at=lag_over + 0.5)
    assert holder.view(lag_over + 0.5) == HolderView(
        False, None, "metadata", "metadata changed after the API answer"
    )


def test_newer_metadata_not_here_wins_at_once() -> None:
    # defect 14: the IP moved away out of band; the API said "here" before, the metadata
    # changed to "not here" after: "not here" wins without waiting for anything
    holder = truth()
    poll_metadata(holder, True, [0.0, 1.0])
    holder.observe_api(ME, locked=False, asked_at=1.5)
    poll_metadata(holder, False, [2.0])
    view = holder.view(2.0)
    assert view.held_here is False
    assert view.source == "metadata"
    assert view.droplet_id is None


def test_metadata_changing_at_the_api_instant_still_counts_as_lagging() -> None:
    # since == api.at is "already there when the API answered": the API wins
    holder = truth()
    holder.observe_metadata(True, asked_at=0.0)
    holder.observe_metadata(False, asked_at=1.0)
    holder.observe_api(ME, locked=False, asked_at=1.0)
    assert holder.view(1.0).held_here is True


def test_newer_metadata_here_against_api_elsewhere_is_unknown() -> None:
    holder = truth()
    poll_metadata(holder, False, [0.0, 1.0])
    holder.observe_api(OTHER, locked=False, asked_at=1.5)
    poll_metadata(holder, True, [2.0])
    view = holder.view(2.0)
    assert view.held_here is None
    assert view.droplet_id == OTHER
    assert view.source == "metadata"
    assert f"the API said droplet {OTHER}" in view.why


def test_metadata_here_outlasting_max_lag_against_api_elsewhere_stays_unknown() -> None:
    # "held" always needs an answer that does not contradict it
    holder = truth()
    holder.observe_metadata(True, asked_at=0.0)
    holder.observe_api(OTHER, locked=False, asked_at=1.0)
    late = 1.0 + FRESH.metadata_lag_s + 1
    holder.observe_metadata(True, asked_at=late)
    assert holder.view(late).held_here is None


def test_newer_metadata_not_here_keeps_vetoing_after_the_metadata_goes_quiet() -> None:
    # the IP moved away, the metadata said so once, then its polls failed: the API's older
    # "here" (fresh for much longer) must not come back as "held"
    holder = truth()
    poll_metadata(holder, True, [0.0, 1.0])
    holder.observe_api(ME, locked=False, asked_at=1.5)
    poll_metadata(holder, False, [2.0])
    quiet = 2.0 + FRESH.metadata_s + 1
    holder.observe_metadata(None, asked_at=quiet)
    view = holder.view(quiet)
    assert view.held_here is None
    assert "metadata said not here" in view.why
    assert holder.wants_api_answer(quiet)
    # the API asked again settles it
    holder.observe_api(ME, locked=False, asked_at=quiet)
    assert holder.view(quiet).held_here is True


def test_lag_outlasting_max_lag_keeps_vetoing_after_the_metadata_goes_quiet() -> None:
    holder = truth()
    holder.observe_metadata(False, asked_at=0.0)
    holder.observe_api(ME, locked=False, asked_at=1.0)
    holder.observe_metadata(False, asked_at=1.0 + FRESH.metadata_lag_s + 0.5)
    assert holder.view(20.0).held_here is None


def test_quiet_metadata_that_was_only_lagging_leaves_the_api_answer() -> None:
    holder = truth()
    holder.observe_metadata(False, asked_at=0.0)
    holder.observe_api(ME, locked=False, asked_at=1.0)
    holder.observe_metadata(False, asked_at=2.0)  # within max_lag of the API answer
    assert holder.view(20.0) == HolderView(True, ME, "api")


# --- out-of-order answers ------------------------------------------------------------------


def test_an_older_api_answer_cannot_replace_a_newer_one() -> None:
    holder = truth()
    assert holder.observe_api(OTHER, locked=False, asked_at=5.0)
    assert holder.observe_api(ME, locked=False, asked_at=3.0) is False  # slow GET
    assert holder.view(6.0) == HolderView(False, OTHER, "api")


def test_an_api_answer_asked_at_the_same_instant_replaces_the_recorded_one() -> None:
    holder = truth()
    holder.observe_api(ME, locked=True, asked_at=5.0)
    assert holder.observe_api(ME, locked=False, asked_at=5.0)
    assert holder.view(5.0).held_here is True


def test_an_older_metadata_answer_cannot_replace_a_newer_one() -> None:
    holder = truth()
    assert holder.observe_metadata(False, asked_at=5.0)
    assert holder.observe_metadata(True, asked_at=3.0) is False
    assert holder.view(5.5) == HolderView(False, None, "metadata")
    assert holder.metadata is not None
    assert (holder.metadata.at, holder.metadata.since) == (5.0, 5.0)


def test_a_failed_metadata_poll_changes_nothing() -> None:
    holder = truth()
    holder.observe_metadata(True, asked_at=1.0)
    assert holder.observe_metadata(None, asked_at=2.0) is False
    assert holder.metadata is not None
    assert holder.metadata.at == 1.0
    # and it does not count as an answer: the old one still goes stale on its own clock
    assert holder.view(1.0 + FRESH.metadata_s + 0.5).held_here is None


# --- since tracking ------------------------------------------------------------------------


def test_since_is_the_first_poll_of_a_run_of_equal_answers() -> None:
    holder = truth()
    poll_metadata(holder, True, [1.0, 2.0, 3.0])
    assert holder.metadata is not None
    assert (holder.metadata.held, holder.metadata.at, holder.metadata.since) == (True, 3.0, 1.0)


def test_since_restarts_when_the_answer_changes() -> None:
    holder = truth()
    poll_metadata(holder, True, [1.0, 2.0])
    poll_metadata(holder, False, [3.0, 4.0])
    assert holder.metadata is not None
    assert (holder.metadata.held, holder.metadata.since) == (False, 3.0)
    poll_metadata(holder, True, [5.0])
    assert holder.metadata.since == 5.0


def test_since_decides_lagging_versus_newer() -> None:
    # same last poll (4.0, "not here"), same API answer (here at 2.5): only since differs
    lagging = truth()
    poll_metadata(lagging, False, [2.0, 3.0, 4.0])
    lagging.observe_api(ME, locked=False, asked_at=2.5)
    assert lagging.view(4.0).held_here is True

    changed = truth()
    poll_metadata(changed, True, [2.0])
    poll_metadata(changed, False, [3.0, 4.0])
    changed.observe_api(ME, locked=False, asked_at=2.5)
    assert changed.view(4.0).held_here is False


def test_a_dropped_out_of_order_poll_does_not_restart_since() -> None:
    holder = truth()
    poll_metadata(holder, False, [1.0, 2.0])
    holder.observe_metadata(True, asked_at=1.5)  # dropped
    holder.observe_metadata(False, asked_at=3.0)
    assert holder.metadata is not None
    assert holder.metadata.since == 1.0


# --- wants_api_answer ----------------------------------------------------------------------


def test_wants_api_answer_when_newer_metadata_contradicts_it() -> None:
    holder = truth()
    holder.observe_api(OTHER, locked=False, asked_at=1.0)
    holder.observe_metadata(True, asked_at=2.0)
    assert holder.wants_api_answer(2.0)
    # the API asked again (after the metadata) settles it
    holder.observe_api(ME, locked=False, asked_at=3.0)
    assert not holder.wants_api_answer(3.0)


def test_wants_api_answer_for_newer_metadata_not_here_too() -> None:
    holder = truth()
    holder.observe_api(ME, locked=False, asked_at=1.0)
    holder.observe_metadata(False, asked_at=2.0)
    assert holder.wants_api_answer(2.0)


def test_no_api_answer_wanted_when_metadata_is_older_than_the_api_answer() -> None:
    holder = truth()
    holder.observe_metadata(True, asked_at=1.0)
    holder.observe_api(OTHER, locked=False, asked_at=2.0)
    assert not holder.wants_api_answer(2.0)


@pytest.mark.parametrize(
    ("api", "metadata"),
    [
        (None, True),  # no API answer yet: the regular cadence asks
        ((ME, False), None),  # no metadata answer
        ((ME, True), False),  # locked: waiting for the action, not asking again
        ((ME, False), True),  # they agree
        ((OTHER, False), False),  # they agree
    ],
)
def test_no_api_answer_wanted(api: tuple[int, bool] | None, metadata: bool | None) -> None:
    holder = truth()
    if api is not None:
        holder.observe_api(api[0], locked=api[1], asked_at=1.0)
    holder.observe_metadata(metadata, asked_at=2.0)
    assert not holder.wants_api_answer(2.0)


# --- Freshness.bound_s and describe_holder -------------------------------------------------


def test_bound_is_the_api_window_when_it_is_longer() -> None:
    assert Freshness(api_s=30.0, metadata_s=2.0, metadata_lag_s=5.0).bound_s == 30.0


def test_bound_is_metadata_window_plus_lag_when_that_is_longer() -> None:
    assert Freshness(api_s=4.0, metadata_s=3.0, metadata_lag_s=5.0).bound_s == 8.0


def test_describe_holder_names_the_droplet() -> None:
    assert HolderView(False, OTHER, "api").describe_holder() == f"droplet {OTHER}"
    assert HolderView(None, OTHER, "metadata").describe_holder() == f"droplet {OTHER}"


def test_describe_holder_from_metadata_alone_does_not_claim_no_droplet() -> None:
    # defect 12: metadata "not here" cannot tell "elsewhere" from "nowhere"
    text = HolderView(False, None, "metadata").describe_holder()
    assert text == "another droplet or none (per this droplet's metadata)"


def test_describe_holder_from_the_api_with_no_droplet() -> None:
    assert HolderView(False, None, "api").describe_holder() == "no droplet"


# --- properties ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    droplet_id: int | None
    locked: bool
    at: float

    @property
    def here(self) -> bool:
        return self.droplet_id == ME and not self.locked


@dataclass(frozen=True)
class Meta:
    held: bool
    at: float


times = st.integers(min_value=0, max_value=200).map(lambda tenths: tenths / 10)
freshness_values = st.builds(
    Freshness,
    api_s=st.floats(min_value=0.5, max_value=30.0),
    metadata_s=st.floats(min_value=0.5, max_value=10.0),
    metadata_lag_s=st.floats(min_value=0.0, max_value=10.0),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[Freshness, list[Api | Meta], float]:
    """API answers in any arrival order (distinct asked times: a slow GET can land late),
    metadata polls in time order (one poll loop), interleaved; and a "now" after them all."""
    api_times = draw(st.lists(times, unique=True, max_size=6))
    apis: list[Api | Meta] = [
        Api(draw(st.sampled_from([ME, OTHER, None])), draw(st.booleans()), at) for at in api_times
    ]
    meta_times = sorted(draw(st.lists(times, unique=True, max_size=12)))
    metas: list[Api | Meta] = [Meta(draw(st.booleans()), at) for at in meta_times]
    merged: list[Api | Meta] = []
    while apis or metas:
        source = apis if not metas or (apis and draw(st.booleans())) else metas
        merged.append(source.pop(0))
    latest = max((event.at for event in merged), default=0.0)
    now = latest + draw(st.integers(min_value=0, max_value=400)) / 10
    freshness = draw(freshness_values)
    # an API answer counts at least as long as a metadata one (as the daemon's settings make
    # it); else an expired newer API answer cannot stop an older metadata one (see report)
    freshness = Freshness(
        max(freshness.api_s, freshness.metadata_s), freshness.metadata_s, freshness.metadata_lag_s
    )
    return freshness, merged, now


def replay(freshness: Freshness, events: list[Api | Meta]) -> HolderTruth:
    holder = HolderTruth(ME, freshness)
    for event in events:
        if isinstance(event, Api):
            holder.observe_api(event.droplet_id, locked=event.locked, asked_at=event.at)
        else:
            holder.observe_metadata(event.held, asked_at=event.at)
    return holder


def lag_tolerated(here: Api, not_here: Meta, metas: list[Meta], lag_s: float) -> bool:
    """A metadata "not here" after an API "here" may be the metadata lagging: the run of
    "not here" it belongs to began no later than the API answer, and it was said within
    max_lag of it."""
    if not_here.at - here.at > lag_s:
        return False
    before = [meta for meta in metas if meta.at <= here.at]
    between = [meta for meta in metas if here.at < meta.at <= not_here.at]
    return bool(before) and not before[-1].held and all(not meta.held for meta in between)


@settings(max_examples=500)
@given(histories())
def test_held_only_on_a_fresh_here_that_no_newer_answer_contradicts(
    history: tuple[Freshness, list[Api | Meta], float],
) -> None:
    """held_here True => some fresh answer said "here", no API answer asked after it said
    otherwise, and the metadata's last word after it is not "not here" (unless that is the
    metadata lagging behind the API's "here", rule 4)."""
    freshness, events, now = history
    view = replay(freshness, events).view(now)
    if view.held_here is not True:
        return
    apis = [event for event in events if isinstance(event, Api)]
    metas = [event for event in events if isinstance(event, Meta)]

    def supports(here: Api | Meta) -> bool:
        if isinstance(here, Api):
            fresh = here.here and now - here.at <= freshness.api_s
        else:
            fresh = here.held and now - here.at <= freshness.metadata_s
        if not fresh:
            return False
        if any(api.at > here.at and not api.here for api in apis):
            return False  # a newer API answer said elsewhere, or in flux
        later = [meta for meta in metas if meta.at > here.at]
        if later and not later[-1].held:
            # the metadata's last word, said after the "here", is "not here"
            return isinstance(here, Api) and lag_tolerated(
                here, later[-1], metas, freshness.metadata_lag_s
            )
        return True

    assert any(supports(event) for event in events), (view, events, now)
    # the documented bound: a monitor's 0 means "pointed here within bound_s"
    assert any(
        (isinstance(e, Api) and e.here) or (isinstance(e, Meta) and e.held)
        for e in events
        if now - e.at <= freshness.bound_s
    )


@settings(max_examples=300)
@given(histories(), st.randoms(use_true_random=False))
def test_api_answers_arriving_in_any_order_give_the_same_view(
    history: tuple[Freshness, list[Api | Meta], float], rng: random.Random
) -> None:
    freshness, events, now = history
    apis = [event for event in events if isinstance(event, Api)]
    metas = [event for event in events if isinstance(event, Meta)]
    shuffled = list(apis)
    rng.shuffle(shuffled)
    # API answers first in one order, metadata after: only the newest API answer may count
    expected = replay(freshness, [*sorted(apis, key=lambda api: api.at), *metas]).view(now)
    assert replay(freshness, [*shuffled, *metas]).view(now) == expected
