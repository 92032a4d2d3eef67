"""`hafloatd lab` chooses the cluster or, saying why, the agent-only drill."""

from __future__ import annotations

from hafloatd.lab.cluster import CapabilityReport
from hafloatd.lab.drills.cli import agent_only_reason


def test_the_lab_runs_the_cluster_where_it_can() -> None:
    assert agent_only_reason(CapabilityReport(), asked=False) is None


def test_the_lab_falls_back_saying_what_is_missing() -> None:
    report = CapabilityReport(missing=["pcs not found (apt-get install pcs)"])
    reason = agent_only_reason(report, asked=False)
    assert reason is not None and "pcs not found (apt-get install pcs)" in reason


def test_agent_only_is_honoured_even_where_a_cluster_could_run() -> None:
    assert agent_only_reason(CapabilityReport(), asked=True) == "--agent-only"
