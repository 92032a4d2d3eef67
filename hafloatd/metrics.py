"""Prometheus metrics: one ``Metrics`` holder built on an injected CollectorRegistry.

Every metric is prefixed ``hafloatd_``. States are values (gauges 0/1), never churning labels.
The aiohttp exposition handler lives in ``metrics_server`` so this module stays import-light.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# 10 ms .. 60 s: failover phases range from a loopback round trip to a slow DO action.
PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Failover phases, in order; each histogram observes the time from the previous phase.
FAILOVER_PHASES = ("post_sent", "api_accepted", "action_completed", "holder_confirmed")


class Metrics:
    """All hafloatd metrics, registered on ``registry`` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("hafloatd_build", "hafloatd build information", registry=r)
        self.failover_phase_seconds = Histogram(
            "hafloatd_failover_phase_seconds",
            "Time spent in each failover phase, measured from the previous phase "
            "(post_sent: from start request received).",
            ["ip", "phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.failover_total_seconds = Histogram(
            "hafloatd_failover_total_seconds",
            "Start request received to holder confirmed, for starts that moved the IP.",
            ["ip"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.failovers_total = Counter(
            "hafloatd_failovers_total",
            "Start operations by outcome (moved, already_held, failed).",
            ["ip", "outcome"],
            registry=r,
        )
        self.api_requests_total = Counter(
            "hafloatd_api_requests_total",
            "DigitalOcean API requests by endpoint and HTTP status (0: transport error).",
            ["endpoint", "code"],
            registry=r,
        )
        self.api_request_duration_seconds = Histogram(
            "hafloatd_api_request_duration_seconds",
            "DigitalOcean API request latency by endpoint.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.api_retries_total = Counter(
            "hafloatd_api_retries_total",
            "DigitalOcean API retries by endpoint and reason.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.api_ratelimit_remaining = Gauge(
            "hafloatd_api_ratelimit_remaining",
            "ratelimit-remaining from the last DigitalOcean API response.",
            registry=r,
        )
        self.api_ratelimit_limit = Gauge(
            "hafloatd_api_ratelimit_limit",
            "ratelimit-limit from the last DigitalOcean API response.",
            registry=r,
        )
        self.api_requests_last_hour = Gauge(
            "hafloatd_api_requests_last_hour",
            "DigitalOcean API requests sent in the last hour (to the minute), all endpoints.",
            registry=r,
        )
        self.api_hourly_budget = Gauge(
            "hafloatd_api_hourly_budget",
            "api.hourly_budget: API requests per hour this daemon should spend at rest.",
            registry=r,
        )
        self.api_connections_opened_total = Counter(
            "hafloatd_api_connections_opened_total",
            "TCP (+TLS) connections opened to the DigitalOcean API; growth at rest means the "
            "idle connection was dropped.",
            registry=r,
        )
        self.api_token_valid = Gauge(
            "hafloatd_api_token_valid",
            "1 if the last authenticated API request succeeded, 0 if it was refused "
            "(401/403), -1 while unknown.",
            registry=r,
        )
        self.api_token_valid.set(-1)
        self.role = Gauge(
            "hafloatd_role",
            "1 if Pacemaker has started the reserved IP on this node, else 0.",
            ["ip"],
            registry=r,
        )
        self.holder_is_self = Gauge(
            "hafloatd_holder_is_self",
            "1 if the reserved IP is known to point at this droplet, 0 if elsewhere or "
            "unassigned, -1 if unknown.",
            ["ip"],
            registry=r,
        )
        self.probe_up = Gauge(
            "hafloatd_probe_up",
            "1 if the health probe state is up (after rise), 0 if down (after fall), "
            "-1 while unknown.",
            registry=r,
        )
        self.probe_duration_seconds = Histogram(
            "hafloatd_probe_duration_seconds",
            "Health probe request duration.",
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.probe_transitions_total = Counter(
            "hafloatd_probe_transitions_total",
            "Health state transitions by new state (up, down).",
            ["to"],
            registry=r,
        )
        self.last_transition_timestamp_seconds = Gauge(
            "hafloatd_last_transition_timestamp_seconds",
            "Unix time of the last role or holder change per reserved IP.",
            ["ip"],
            registry=r,
        )
        self.role_persist_failures_total = Counter(
            "hafloatd_role_persist_failures_total",
            "Role file writes that failed (the operation still succeeded; see the log).",
            ["ip"],
            registry=r,
        )
        self.stop_records_applied_total = Counter(
            "hafloatd_stop_records_applied_total",
            "Stops the OCF agent recorded while the daemon was down, applied at startup.",
            ["ip"],
            registry=r,
        )
        self.control_requests_total = Counter(
            "hafloatd_control_requests_total",
            "Control-socket requests by operation and result (ok, error, invalid, denied, busy).",
            ["op", "result"],
            registry=r,
        )
        self.control_connections = Gauge(
            "hafloatd_control_connections",
            "Open control-socket connections.",
            registry=r,
        )
        self.control_warnings_suppressed_total = Counter(
            "hafloatd_control_warnings_suppressed_total",
            "Control-socket warnings not logged because their peer uid was over its budget "
            "(10 lines a minute), by event; each window's are summed up in one "
            "event=control_warnings_suppressed line.",
            ["event"],
            registry=r,
        )
        self.metadata_requests_total = Counter(
            "hafloatd_metadata_requests_total",
            "Metadata service requests by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.metadata_up = Gauge(
            "hafloatd_metadata_up",
            "1 if the metadata service's last answer about the reserved IP was usable, 0 if "
            "not (down, error, empty, garbled), -1 before the first.",
            registry=r,
        )
        self.metadata_up.set(-1)
        self.pacemaker_notifications_total = Counter(
            "hafloatd_pacemaker_notifications_total",
            "crm_resource --fail invocations by result (ok, error).",
            ["result"],
            registry=r,
        )
