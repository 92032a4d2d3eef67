"""Shared fixtures. Fixture modules live beside this file and are imported here."""

from __future__ import annotations

from tests.sim_fixtures import *  # noqa: F403  (simulator fixtures + contract checking)
