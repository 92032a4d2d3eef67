"""The holder timeline of one reserved IP (``hafloatd.lab.sim.history``), on a made-up clock."""

from __future__ import annotations

import pytest

from hafloatd.lab.sim.history import HolderHistory


def test_holder_at_answers_the_latest_entry_not_after_the_time() -> None:
    history = HolderHistory(10.0, None)
    history.record(20.0, 1001)
    history.record(30.0, 1002)
    assert history.entries() == [(10.0, None), (20.0, 1001), (30.0, 1002)]
    assert [history.holder_at(t) for t in (0.0, 10.0, 19.9, 20.0, 29.9, 30.0, 99.0)] == [
        None, None, None, 1001, 1001, 1002, 1002,
    ]  # fmt: skip


def test_two_changes_in_the_same_tick_leave_the_last_one_in_force() -> None:
    history = HolderHistory(10.0, None)
    history.record(20.0, 1001)
    history.record(20.0, 1002)
    assert history.holder_at(20.0) == 1002


def test_recording_the_same_holder_again_adds_nothing() -> None:
    history = HolderHistory(10.0, 1001)
    history.record(20.0, 1001)
    assert history.entries() == [(10.0, 1001)]


def test_time_never_goes_backwards() -> None:
    history = HolderHistory(10.0, None)
    history.record(20.0, 1001)
    with pytest.raises(ValueError, match="goes forward"):
        history.record(15.0, 1002)


def test_past_the_limit_the_oldest_entries_go_and_older_times_are_refused() -> None:
    history = HolderHistory(0.0, None, limit=3)
    for second, holder in ((1.0, 1001), (2.0, 1002), (3.0, None)):
        history.record(second, holder)
    assert history.entries() == [(1.0, 1001), (2.0, 1002), (3.0, None)]
    assert history.truncated
    assert history.holder_at(1.5) == 1001
    with pytest.raises(LookupError, match="dropped"):
        history.holder_at(0.5)
    assert history.holder_at(0.5, strict=False) == 1001  # the metadata view's fallback
