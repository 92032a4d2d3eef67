"""The DigitalOcean simulator: API server, per-droplet metadata services, per-IP TCP proxies.

The names embedders use (tests, the lab, benchmarks) are re-exported here::

    from hafloatd.lab.sim import Simulator, SimScenario, SimDroplet, SimReservedIp

Modules, one job each: ``simulator`` (the ``Simulator`` façade and its lifecycle),
``scenario`` (self-validating scenario), ``state`` (who holds what, DigitalOcean's rules),
``actions`` (``SimAction``), ``history`` (who held an IP when), ``refusals`` (DigitalOcean's
error answers), ``api`` (the HTTP server and its request pipeline), ``routes`` (the
DigitalOcean operations), ``admin`` (``/_sim``), ``responses`` (JSON and error bodies),
``render`` (DigitalOcean's JSON shapes), ``ratelimit``, ``metadata``, ``proxy``, ``faults``,
``recording``, ``inflight`` (handlers ``stop()`` must end), ``tls``, ``cli``
(``hafloatd simulator``).

Nothing here imports from the daemon's side of hafloatd (DESIGN §10).
"""

from hafloatd.lab.sim.actions import SimAction
from hafloatd.lab.sim.faults import Fault, FaultError, FaultInjector
from hafloatd.lab.sim.proxy import ProxyStats
from hafloatd.lab.sim.recording import Exchange, SimCounters
from hafloatd.lab.sim.refusals import SimApiError
from hafloatd.lab.sim.scenario import (
    REGION_NAMES,
    ScenarioError,
    SimDroplet,
    SimReservedIp,
    SimScenario,
    scenario_from_mapping,
)
from hafloatd.lab.sim.simulator import Simulator
from hafloatd.lab.sim.tls import TlsUnavailable

__all__ = [
    "REGION_NAMES",
    "Exchange",
    "Fault",
    "FaultError",
    "FaultInjector",
    "ProxyStats",
    "ScenarioError",
    "SimAction",
    "SimApiError",
    "SimCounters",
    "SimDroplet",
    "SimReservedIp",
    "SimScenario",
    "Simulator",
    "TlsUnavailable",
    "scenario_from_mapping",
]
