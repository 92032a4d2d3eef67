"""Configuration: YAML into frozen, typed dataclasses; every error names its key path.

Field names are the YAML keys. Durations are seconds (float) in the dataclasses and are
written ``500ms``, ``2s``, ``1m``, ``1h``, ``1m30s`` (or a bare number of seconds) in YAML.

Two layers of checks, so a problem is caught wherever a config is built:

* each dataclass validates its own values in ``__post_init__`` and raises one
  ``ConfigError`` naming every bad key (``schema``);
* the loader (``load_config`` / ``parse_config``) checks the YAML's shape and types against
  the dataclasses' annotations, rejects unknown and duplicate keys, collects every problem
  of the file into one ``ConfigError`` with line numbers, and adds the production guard
  rail on the DigitalOcean request budget (``loader``). ``budget_warnings`` says when a
  valid file's idle cadence exceeds ``api.hourly_budget`` (a warning, not an error).

The modules, imported one way, top to bottom:

* ``values``: value checks and message helpers shared by both layers;
* ``scalars``: YAML scalars into Python values (durations, modes, names or ids);
* ``schema``: the dataclasses and their own checks;
* ``document``: YAML text into data, key lines and duplicate keys;
* ``loader``: ``load_config`` and ``parse_config``.

Import from ``hafloatd.config``; the modules' layout is not an interface.
"""

from hafloatd.config.loader import (
    MAX_FILE_BYTES,
    MIN_ACTION_POLL_INTERVAL,
    REQUEST_BUDGET_PER_HOUR,
    TOKEN_LIMIT_PER_HOUR,
    budget_warnings,
    idle_requests_per_hour,
    load_config,
    parse_config,
)
from hafloatd.config.scalars import parse_duration
from hafloatd.config.schema import (
    CREDENTIAL_NAME,
    DEFAULT_PATH,
    SUN_PATH_MAX,
    TOKEN_ENV_VAR,
    ApiConfig,
    Config,
    ControlConfig,
    HealthConfig,
    IpConfig,
    LoggingConfig,
    LogLevel,
    MetadataConfig,
    MetricsConfig,
    OnStop,
    PacemakerConfig,
    PathFamily,
    TokenSource,
)
from hafloatd.config.values import format_duration, split_host_port

__all__ = [
    "CREDENTIAL_NAME",
    "DEFAULT_PATH",
    "MAX_FILE_BYTES",
    "MIN_ACTION_POLL_INTERVAL",
    "REQUEST_BUDGET_PER_HOUR",
    "SUN_PATH_MAX",
    "TOKEN_ENV_VAR",
    "TOKEN_LIMIT_PER_HOUR",
    "ApiConfig",
    "Config",
    "ControlConfig",
    "HealthConfig",
    "IpConfig",
    "LogLevel",
    "LoggingConfig",
    "MetadataConfig",
    "MetricsConfig",
    "OnStop",
    "PacemakerConfig",
    "PathFamily",
    "TokenSource",
    "budget_warnings",
    "format_duration",
    "idle_requests_per_hour",
    "load_config",
    "parse_config",
    "parse_duration",
    "split_host_port",
]
