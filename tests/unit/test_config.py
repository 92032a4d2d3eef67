"""The configuration loader: YAML into frozen dataclasses, every problem named by key path."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from hafloatd.config import (
    DEFAULT_PATH,
    ApiConfig,
    Config,
    ControlConfig,
    HealthConfig,
    IpConfig,
    LoggingConfig,
    MetadataConfig,
    MetricsConfig,
    PacemakerConfig,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    split_host_port,
)
from hafloatd.errors import OCF_ERR_CONFIGURED, ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "hafloatd.example.yaml"
IP = "203.0.113.10"
TOKEN = "dop_v1_" + "0123456789abcdef" * 4


def write(tmp_path: Path, text: str, name: str = "hafloatd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


# --- valid files --------------------------------------------------------------------------


def test_minimal_file_with_only_ips_gets_every_default(tmp_path: Path) -> None:
    path = write(tmp_path, f"ips:\n  - address: {IP}\n")

    config = load_config(path)

    assert config == Config(ips=(IpConfig(IP),), source=str(path))
    assert config.api == ApiConfig()
    assert config.control.socket_path == "/run/hafloatd/control.sock"
    assert config.metadata.base_url == "http://169.254.169.254/metadata/v1"
    assert config.health is None
    assert config.source == str(path)


def test_example_file_loads_with_production_defaults_and_a_health_probe() -> None:
    config = load_config(EXAMPLE)

    assert config == Config(
        ips=(IpConfig(IP, on_stop="release"),), health=HealthConfig(), source=str(EXAMPLE)
    )


def test_example_file_shows_every_key_of_every_section() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())

    assert set(data) == set(_yaml_keys(Config))
    for section, cls in _sections().items():
        assert set(data[section]) == set(_yaml_keys(cls)), section
    assert set(data["ips"][0]) == set(_yaml_keys(IpConfig))


def test_example_file_values_are_the_dataclass_defaults() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())

    for section, cls in _sections().items():
        written = parse_config({"ips": [IP], section: data[section]})
        assert getattr(written, section) == cls(), section


def test_reference_documents_every_key() -> None:
    reference = (REPO / "docs" / "configuration.md").read_text()

    keys = ["ips", "ips[].address", "ips[].on_stop", "state_dir"]
    for section, cls in _sections().items():
        keys += [f"{section}.{name}" for name in _yaml_keys(cls)]
    missing = [key for key in keys if f"`{key}`" not in reference]
    assert not missing


def test_full_file_sets_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
ips:
  - address: {IP}
    on_stop: unassign
  - 203.0.113.11
api:
  base_url: https://api.example.test/
  path_family: floating_ips
  token_source: file
  token_file: /etc/hafloatd/do-token
  ca_file: /etc/ssl/certs/ca.pem
  connect_timeout: 1s
  request_timeout: 4s
  max_connections: 8
  keepalive_interval: 45s
  holder_check_interval: 2m
  action_poll_interval: 500ms
  user_agent: hafloatd-test
metadata:
  base_url: http://127.0.0.1:8081/metadata/v1
  cache_file: /var/lib/hafloatd/identity.json
  timeout: 1500ms
  poll_interval: 3s
control:
  socket_path: /run/hafloatd/c.sock
  mode: 0640
  group: null
  allowed_users: [root, 189]
  allowed_groups: [haclient, 0]
  read_timeout: 2s
  max_connections: 8
  max_line_bytes: 4096
metrics:
  listen: "[::1]:9311"
health:
  url: https://127.0.0.1:8443/healthz
  interval: 1s
  timeout: 300ms
  rise: 1
  fall: 5
  expected_statuses: [200, 204]
  body_contains: ok
pacemaker:
  notify_failures: true
  crm_resource: /usr/local/sbin/crm_resource
logging:
  level: debug
state_dir: /run/hafloatd-test
""",
    )

    config = load_config(path)

    assert config == Config(
        ips=(IpConfig(IP, on_stop="unassign"), IpConfig("203.0.113.11")),
        api=ApiConfig(
            base_url="https://api.example.test/",
            path_family="floating_ips",
            token_source="file",
            token_file="/etc/hafloatd/do-token",
            ca_file="/etc/ssl/certs/ca.pem",
            connect_timeout=1.0,
            request_timeout=4.0,
            max_connections=8,
            keepalive_interval=45.0,
            holder_check_interval=120.0,
            action_poll_interval=0.5,
            user_agent="hafloatd-test",
        ),
        metadata=MetadataConfig(
            base_url="http://127.0.0.1:8081/metadata/v1",
            cache_file="/var/lib/hafloatd/identity.json",
            timeout=1.5,
            poll_interval=3.0,
        ),
        control=ControlConfig(
            socket_path="/run/hafloatd/c.sock",
            mode=0o640,
            group=None,
            allowed_users=("root", 189),
            allowed_groups=("haclient", 0),
            read_timeout=2.0,
            max_connections=8,
            max_line_bytes=4096,
        ),
        metrics=MetricsConfig(listen="[::1]:9311"),
        health=HealthConfig(
            url="https://127.0.0.1:8443/healthz",
            interval=1.0,
            timeout=0.3,
            rise=1,
            fall=5,
            expected_statuses=(200, 204),
            body_contains="ok",
        ),
        pacemaker=PacemakerConfig(
            notify_failures=True, crm_resource="/usr/local/sbin/crm_resource"
        ),
        logging=LoggingConfig(level="debug"),
        state_dir="/run/hafloatd-test",
        source=str(path),
    )
    assert config.ip(IP) == IpConfig(IP, on_stop="unassign")
    assert config.ip("198.51.100.1") is None
    assert config.metrics.host_port() == ("::1", 9311)


def test_values_are_plain_python_types_and_lists_become_tuples(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, f"ips: [{IP}]\nhealth:\n  rise: 4\n  expected_statuses: [200, 301]\n")
    )

    assert config.health is not None
    assert type(config.health.rise) is int
    assert all(type(status) is int for status in config.health.expected_statuses)
    assert isinstance(config.ips, tuple)
    assert isinstance(config.health.expected_statuses, tuple)
    hash(config)  # frozen all the way down


def test_floating_ips_path_family_is_accepted() -> None:
    config = parse_config({"ips": [IP], "api": {"path_family": "floating_ips"}})

    assert config.api.path_family == "floating_ips"


def test_ips_accepts_bare_addresses_and_mappings_mixed() -> None:
    config = parse_config({"ips": [IP, {"address": "203.0.113.11", "on_stop": "unassign"}]})

    assert config.ips == (IpConfig(IP), IpConfig("203.0.113.11", "unassign"))


def test_absent_or_null_health_means_no_probe_and_empty_mapping_means_defaults() -> None:
    assert parse_config({"ips": [IP]}).health is None
    assert parse_config({"ips": [IP], "health": None}).health is None
    assert parse_config({"ips": [IP], "health": {}}).health == HealthConfig()


def test_section_with_every_key_commented_out_keeps_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"ips: [{IP}]\napi:\n  # base_url: x\ncontrol:\n"))

    assert config.api == ApiConfig()
    assert config.control == ControlConfig()


def test_metrics_listen_null_disables_the_exporter() -> None:
    config = parse_config({"ips": [IP], "metrics": {"listen": None}})

    assert config.metrics.listen is None
    assert config.metrics.host_port() is None


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9310", ("127.0.0.1", 9310)),
        ("0.0.0.0:9310", ("0.0.0.0", 9310)),
        ("[::1]:9310", ("::1", 9310)),
        ("[::]:9310", ("::", 9310)),
        ("localhost:9310", ("localhost", 9310)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_metrics_listen_forms(listen: str, expected: tuple[str, int]) -> None:
    assert split_host_port(listen) == expected
    assert parse_config({"ips": [IP], "metrics": {"listen": listen}}).metrics.host_port() == (
        expected
    )


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("250 ms", 0.25),
        ("3", 3.0),
        (3, 3.0),
        (0.25, 0.25),
        (".5s", 0.5),
        ("0s", 0.0),
    ],
)
def test_durations_accept_units_and_bare_seconds(written: object, seconds: float) -> None:
    assert parse_duration(written, "health.interval") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "written", ["fast", "2 seconds", "1d", "-1s", -1, True, None, [1], "1e3", "nan", float("inf")]
)
def test_duration_errors_name_the_key(written: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(written, "health.interval")

    assert caught.value.problems[0].startswith("health.interval: must be a duration")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (2.0, "2s"), (1.5, "1.5s"), (60.0, "1m"), (90.0, "90s")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, "k") == pytest.approx(seconds)


def test_durations_in_yaml_become_seconds(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            f"ips: [{IP}]\napi:\n  action_poll_interval: 100ms\n  holder_check_interval: 1m30s\n"
            "health:\n  interval: 1.5\n  timeout: 250ms\n",
        )
    )

    assert config.api.action_poll_interval == pytest.approx(0.1)
    assert config.api.holder_check_interval == 90.0
    assert config.health == HealthConfig(interval=1.5, timeout=0.25)


@pytest.mark.parametrize(
    ("written", "mode"),
    [
        ("0660", 0o660),  # YAML 1.1 octal int (432)
        ("660", 0o660),  # decimal int in YAML, octal in intent, like chmod
        ("'0660'", 0o660),
        ("'660'", 0o660),
        ("'0o660'", 0o660),
        ("0o660", 0o660),  # YAML 1.1 reads this as a string
        ("0600", 0o600),
        ("0640", 0o640),
        ("0", 0),
    ],
)
def test_control_mode_is_read_as_octal_whichever_way_it_is_written(
    tmp_path: Path, written: str, mode: int
) -> None:
    config = load_config(write(tmp_path, f"ips: [{IP}]\ncontrol:\n  mode: {written}\n"))

    assert config.control.mode == mode


def test_control_mode_from_python_data_is_the_numeric_mode() -> None:
    assert parse_config({"ips": [IP], "control": {"mode": 0o640}}).control.mode == 0o640
    assert parse_config({"ips": [IP], "control": {"mode": "0640"}}).control.mode == 0o640


def test_request_budget_guard_does_not_apply_to_a_simulator() -> None:
    config = parse_config(
        {
            "ips": [IP],
            "api": {
                "base_url": "http://127.0.0.1:8080",
                "holder_check_interval": "200ms",
                "keepalive_interval": "1s",
                "action_poll_interval": "10ms",
            },
        }
    )

    assert config.api.holder_check_interval == pytest.approx(0.2)


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + f"ips: [{IP}]\n".encode())

    assert load_config(path).ips == (IpConfig(IP),)


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = f"""
defaults: &ip
  on_stop: unassign
ips:
  - <<: *ip
    address: {IP}
"""
    # "defaults" is not a key of ours: anchors must live inside a known key.
    assert problems_of(tmp_path, text) == ["defaults: unknown key (line 2)"]
    text = (
        f"ips:\n  - &first {{address: {IP}, on_stop: unassign}}\n"
        "  - {<<: *first, address: 203.0.113.11}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.ips[1] == IpConfig("203.0.113.11", "unassign")


# --- invalid files: every problem names its key path ---------------------------------------

INVALID: list[tuple[str, str, str]] = [
    # (id, YAML text, expected start of a problem)
    ("missing-ips", "# no ips\napi: {}\n", "ips: missing required key"),
    ("empty-ips", "ips: []\n", "ips: must list at least one reserved IP"),
    ("ips-not-a-list", f"ips: {IP}\n", "ips: must be a list"),
    ("ip-not-ipv4", "ips: [1.2.3]\n", "ips[0].address: must be an IPv4 address"),
    ("ip-is-ipv6", "ips: ['2001:db8::1']\n", "ips[0].address: must be an IPv4 address"),
    ("ip-with-prefix", "ips: [203.0.113.10/32]\n", "ips[0].address: must be an IPv4 address"),
    ("ip-unspecified", "ips: [0.0.0.0]\n", "ips[0].address: must be a unicast IPv4 address"),
    ("ip-as-number", "ips: [{address: 7}]\n", "ips[0].address: must be a string"),
    ("ip-missing-address", "ips: [{on_stop: release}]\n", "ips[0].address: missing required key"),
    ("ip-duplicate", f"ips: [{IP}, 203.0.113.11, {IP}]\n", "ips[2].address: duplicate of ips[0]"),
    (
        "on-stop-unknown",
        f"ips:\n  - {IP}\n  - {{address: 203.0.113.11, on_stop: drop}}\n",
        "ips[1].on_stop: must be one of release, unassign, got 'drop'",
    ),
    ("ip-unknown-key", f"ips: [{{address: {IP}, onstop: x}}]\n", "ips[0].onstop: unknown key"),
    ("top-level-list", f"- {IP}\n", "top level: must be a mapping, got a list"),
    ("top-level-scalar", "hello\n", "top level: must be a mapping"),
    ("section-is-list", f"ips: [{IP}]\nhealth: [1, 2]\n", "health: must be a mapping, got a list"),
    ("section-is-scalar", f"ips: [{IP}]\napi: yes\n", "api: must be a mapping, got true"),
    ("api-url-ftp", "api: {base_url: 'ftp://x'}\n", "api.base_url: must be an http:// or https://"),
    ("api-url-bare-host", "api: {base_url: api.do.test}\n", "api.base_url: must be an http://"),
    ("api-url-bad-port", "api: {base_url: 'https://x:99999'}\n", "api.base_url: must be an http"),
    ("api-url-v2", "api: {base_url: 'https://api.x/v2'}\n", "api.base_url: must not end in /v2"),
    ("api-url-userinfo", "api: {base_url: 'https://u:p@x'}\n", "api.base_url: must not embed"),
    ("md-url", "metadata: {base_url: 169.254.169.254}\n", "metadata.base_url: must be an http"),
    ("health-url", "health: {url: 'file:///etc/passwd'}\n", "health.url: must be an http://"),
    ("path-family", "api: {path_family: floating}\n", "api.path_family: must be one of"),
    ("token-source", "api: {token_source: vault}\n", "api.token_source: must be one of"),
    (
        "token-file-missing",
        "api: {token_source: file}\n",
        "api.token_file: is required when token_source is 'file'",
    ),
    ("token-file-relative", "api: {token_file: do-token}\n", "api.token_file: must be an absolute"),
    (
        "token-file-ignored",
        "api: {token_source: env, token_file: /etc/hafloatd/do-token}\n",
        "api.token_file: is never read when token_source is 'env'",
    ),
    ("ca-file-relative", "api: {ca_file: ca.pem}\n", "api.ca_file: must be an absolute path"),
    ("request-timeout-neg", "api: {request_timeout: -5}\n", "api.request_timeout: must be a dur"),
    ("connect-timeout-zero", "api: {connect_timeout: 0s}\n", "api.connect_timeout: must be a dur"),
    (
        "connect-over-request",
        "api: {connect_timeout: 10s, request_timeout: 5s}\n",
        "api.connect_timeout: must not exceed api.request_timeout (5s), got 10s",
    ),
    ("api-max-conns", "api: {max_connections: 0}\n", "api.max_connections: must be an integer"),
    ("user-agent-type", "api: {user_agent: 123}\n", "api.user_agent: must be a string, got 123"),
    ("user-agent-empty", "api: {user_agent: ''}\n", "api.user_agent: must not be empty"),
    (
        "holder-check-budget",
        "api: {holder_check_interval: 1s}\n",
        "api.holder_check_interval: too frequent: about 3600 requests/hour",
    ),
    ("keepalive-budget", "api: {keepalive_interval: 2s}\n", "api.keepalive_interval: too frequent"),
    (
        "action-poll-too-fast",
        "api: {action_poll_interval: 10ms}\n",
        "api.action_poll_interval: must be at least 100ms against DigitalOcean",
    ),
    ("cache-relative", "metadata: {cache_file: md.json}\n", "metadata.cache_file: must be an abso"),
    ("md-timeout-word", "metadata: {timeout: soon}\n", "metadata.timeout: must be a duration like"),
    ("socket-relative", "control: {socket_path: c.sock}\n", "control.socket_path: must be an abs"),
    (
        "socket-too-long",
        "control: {socket_path: /run/" + "x" * 110 + ".sock}\n",
        "control.socket_path: must be at most 107 bytes",
    ),
    ("mode-others", "control: {mode: 0666}\n", "control.mode: must not grant access to others"),
    ("mode-not-octal", "control: {mode: 680}\n", "control.mode: must be an octal file mode"),
    ("mode-symbolic", "control: {mode: rw-rw----}\n", "control.mode: must be an octal file mode"),
    ("mode-sticky", "control: {mode: 01770}\n", "control.mode: must be an octal file mode 0000"),
    ("mode-bool", "control: {mode: true}\n", "control.mode: must be an octal file mode"),
    ("group-bad", "control: {group: 'ha client'}\n", "control.group: must be a user or group name"),
    (
        "allowed-user-bad",
        "control: {allowed_users: [root, 'a b']}\n",
        "control.allowed_users[1]: must be a user or group name",
    ),
    ("allowed-user-neg", "control: {allowed_users: [-1]}\n", "control.allowed_users[0]: must be"),
    (
        "nobody-allowed",
        "control: {allowed_users: [], allowed_groups: []}\n",
        "control.allowed_users: must not be empty when allowed_groups is empty too",
    ),
    ("line-bytes", "control: {max_line_bytes: 10}\n", "control.max_line_bytes: must be an integer"),
    (
        "read-timeout",
        "control: {read_timeout: 0}\n",
        "control.read_timeout: must be a duration > 0",
    ),
    ("listen-int", "metrics: {listen: 9310}\n", "metrics.listen: must be a string"),
    ("listen-no-port", "metrics: {listen: localhost}\n", "metrics.listen: must be host:port"),
    ("listen-bare-ipv6", "metrics: {listen: '::1:9310'}\n", "metrics.listen: must be host:port"),
    ("listen-no-host", "metrics: {listen: ':9310'}\n", "metrics.listen: must be host:port"),
    ("listen-port-range", "metrics: {listen: 'h:70000'}\n", "metrics.listen: port must be from"),
    ("listen-bad-ipv4", "metrics: {listen: '300.1.1.1:9'}\n", "metrics.listen: must be host:port"),
    (
        "timeout-not-under-interval",
        "health: {interval: 2s, timeout: 2s}\n",
        "health.timeout: must be shorter than health.interval (2s), got 2s",
    ),
    ("interval-zero", "health: {interval: 0}\n", "health.interval: must be a duration > 0, got 0s"),
    ("interval-word", "health: {interval: fast}\n", "health.interval: must be a duration like"),
    ("rise-zero", "health: {rise: 0}\n", "health.rise: must be an integer >= 1, got 0"),
    ("fall-negative", "health: {fall: -1}\n", "health.fall: must be an integer >= 1, got -1"),
    ("fall-bool", "health: {fall: true}\n", "health.fall: must be an integer, got true"),
    ("fall-float", "health: {fall: 2.5}\n", "health.fall: must be an integer, got 2.5"),
    ("status-low", "health: {expected_statuses: [99]}\n", "health.expected_statuses[0]: must be"),
    (
        "status-high",
        "health: {expected_statuses: [200, 600]}\n",
        "health.expected_statuses[1]: must be an integer from 100 to 599, got 600",
    ),
    ("status-scalar", "health: {expected_statuses: 200}\n", "health.expected_statuses: must be a"),
    ("statuses-empty", "health: {expected_statuses: []}\n", "health.expected_statuses: must list"),
    ("body-empty", "health: {body_contains: ''}\n", "health.body_contains: must not be empty"),
    ("notify-string", "pacemaker: {notify_failures: 'yes'}\n", "pacemaker.notify_failures: must"),
    ("crm-relative", "pacemaker: {crm_resource: crm_resource}\n", "pacemaker.crm_resource: must"),
    ("log-level", "logging: {level: verbose}\n", "logging.level: must be one of debug, info"),
    ("state-dir-relative", "state_dir: run/hafloatd\n", "state_dir: must be an absolute path"),
    ("state-dir-null", "state_dir: null\n", "state_dir: must be a string, got null"),
    ("unknown-section", "helth: {}\n", "helth: unknown key (did you mean 'health'?)"),
    ("unknown-nested", "health: {intervall: 2s}\n", "health.intervall: unknown key (did you mean"),
    ("non-string-key", "health: {1: x}\n", "health: keys must be strings, got 1"),
    ("duplicate-key", "health:\n  fall: 2\n  fall: 3\n", "health.fall: duplicate key, first def"),
    ("duplicate-section", "logging: {}\nlogging: {}\n", "logging: duplicate key"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_config_names_the_key_path(tmp_path: Path, text: str, expected: str) -> None:
    if not text.startswith(("ips", "- ", "hello", "#")):
        text = f"ips: [{IP}]\n" + text

    problems = problems_of(tmp_path, text)

    assert any(problem.startswith(expected) for problem in problems), problems


def test_error_message_uses_the_documented_style(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        f"ips:\n  - {IP}\n  - {{address: 203.0.113.11, on_stop: drop}}\nhealth:\n  fall: -1\n",
    )

    assert problems == [
        "ips[1].on_stop: must be one of release, unassign, got 'drop' (line 3)",
        "health.fall: must be an integer >= 1, got -1 (line 5)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("health: {intervall: 2s}\n", "health.intervall: unknown key (did you mean 'interval'?)"),
        ("helth: {}\n", "helth: unknown key (did you mean 'health'?)"),
        ("ip: []\n", "ip: unknown key (did you mean 'ips'?)"),
        ("interval: 2s\n", "interval: unknown key (did you mean 'health.interval'?)"),
        ("api: {pathfamily: x}\n", "api.pathfamily: unknown key (did you mean 'path_family'?)"),
        (
            "logging: {level: INFO}\n",
            "logging.level: must be one of debug, info, warning, error, "
            "got 'INFO' (did you mean 'info'?)",
        ),
        (
            f"ips: [{{address: {IP}, on_stop: relase}}]\n",
            "ips[0].on_stop: must be one of "
            "release, unassign, got 'relase' (did you mean 'release'?)",
        ),
        ("api: {zzz: 1}\n", "api.zzz: unknown key (line"),
    ],
)
def test_unknown_keys_and_values_suggest_the_close_name(
    tmp_path: Path, text: str, expected: str
) -> None:
    if not text.startswith(("ips", "ip:")):
        text = f"ips: [{IP}]\n" + text

    problems = problems_of(tmp_path, text)

    assert any(problem.startswith(expected) for problem in problems), problems


def test_all_problems_are_reported_together_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""ips:
  - {IP}
  - {IP}
api:
  base_url: ftp://api
  token_source: file
health:
  intervall: 2s
  fall: 0
  expected_statuses: [200, 700, x]
metrics:
  listen: nowhere
logging:
  level: loud
state_dir: relative
""",
    )

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    error = caught.value
    assert error.source == str(path)
    assert error.ocf_code == OCF_ERR_CONFIGURED
    assert [problem.split(":")[0] for problem in error.problems] == [
        "ips[1].address",
        "api.token_file",  # a missing key is placed at its section's line
        "api.base_url",
        "health.intervall",
        "health.fall",
        "health.expected_statuses[2]",
        "health.expected_statuses[1]",
        "metrics.listen",
        "logging.level",
        "state_dir",
    ]
    assert str(error).startswith(f"{path}: ips[1].address: duplicate of ips[0]")
    assert "(line 5)" in error.problems[2]


def test_a_bad_list_item_does_not_hide_the_others(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        f"ips:\n  - {IP}\n  - 1.2.3\n  - {{address: {IP}, on_stop: drop}}\n"
        "control:\n  allowed_users: [root, true, 'a b']\n",
    )

    assert [problem.split(" (line")[0] for problem in problems] == [
        "ips[1].address: must be an IPv4 address like 203.0.113.10, got '1.2.3'",
        "ips[2].on_stop: must be one of release, unassign, got 'drop'",
        "ips[2].address: duplicate of ips[0] (203.0.113.10)",
        "control.allowed_users[1]: must be a name or a numeric id, got true",
        "control.allowed_users[2]: must be a user or group name like hacluster, got 'a b'",
    ]


def test_missing_ips_does_not_hide_the_rest_of_the_file(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, "# ips forgotten\napi:\n  keepalive_interval: 1s\nstate_dir: run\n"
    )

    assert [problem.split(":")[0] for problem in problems] == [
        "api.keepalive_interval",
        "state_dir",
        "ips",
    ]


def test_request_budget_counts_every_configured_ip() -> None:
    ips = [f"203.0.113.{n}" for n in range(1, 11)]

    with pytest.raises(ConfigError) as caught:
        parse_config({"ips": ips, "api": {"holder_check_interval": "30s"}})

    assert caught.value.problems == [
        "api.holder_check_interval: too frequent: about 1200 requests/hour at rest (10 IP(s) "
        "checked every 30s); keep it under 1000 of DigitalOcean's 5000/hour per token"
    ]
    assert parse_config({"ips": ips}).api.holder_check_interval == 120.0


def test_python_int_mode_that_looks_like_chmod_digits_explains_itself() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"ips": [IP], "control": {"mode": 660}})

    assert caught.value.problems == [
        "control.mode: must be an octal file mode like 0660, got 660 (an int here is the "
        "numeric mode: write 0o660 or '0660')"
    ]


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, f"ips: [{IP}]\nhealth:\n  fall: 2\n   rise: 3\n")

    assert len(problems) == 1
    assert problems[0].startswith("line 4, column 8: invalid YAML: mapping values are not allowed")


def test_tab_indentation_is_a_syntax_error_with_its_position(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, f"ips: [{IP}]\nhealth:\n\tfall: 2\n")

    assert problems[0].startswith("line 3, column 1: invalid YAML")


def test_python_tags_are_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "ips: !!python/object/apply:os.system ['true']\n")

    assert problems[0].startswith(
        "line 1, column 6: invalid YAML: could not determine a constructor"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    assert problems_of(tmp_path, text) == [
        "top level: the file is empty: it needs at least an 'ips:' list"
    ]


def test_several_yaml_documents_are_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, f"ips: [{IP}]\n---\nips: [{IP}]\n")

    assert (
        "invalid YAML: expected a single document in the stream, but found another" in problems[0]
    )


def test_missing_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.source == str(path)
    assert caught.value.problems == [
        "cannot read the configuration file: No such file or directory"
    ]


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file: Is a directory"):
        load_config(tmp_path)


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"ips: [203.0.113.10]\n# caf\xe9\n")

    with pytest.raises(ConfigError, match=r"not valid UTF-8 \(byte offset 25\)"):
        load_config(path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"ips: [{IP}]\n" + "#" * (1024 * 1024) + "\n")

    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_token_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(tmp_path, f"ips: [{IP}]\napi:\n  token: {TOKEN}\n  token_file: {TOKEN}\n")
        )

    text = str(caught.value)
    assert TOKEN not in text
    assert "api.token: unknown key: the API token never goes in this file" in text
    assert "api.token_file: must be an absolute path, got <redacted" in text


def test_parse_config_names_its_source_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"ips": []}, source="inline")

    assert str(caught.value) == "inline: ips: must list at least one reserved IP"


def test_default_path_is_under_etc() -> None:
    assert DEFAULT_PATH == "/etc/hafloatd/hafloatd.yaml"


# --- the dataclasses check themselves ------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: HealthConfig(fall=0), "health.fall: must be an integer >= 1, got 0"),
        (lambda: HealthConfig(interval=1.0, timeout=1.0), "health.timeout: must be shorter"),
        (lambda: ApiConfig(base_url="api.digitalocean.com"), "api.base_url: must be an http"),
        (lambda: ApiConfig(token_source="file"), "api.token_file: is required"),
        (lambda: ControlConfig(mode=0o666), "control.mode: must not grant access to others"),
        (lambda: ControlConfig(socket_path="/" + "s" * 107), "control.socket_path: must be at"),
        (lambda: MetricsConfig(listen="9310"), "metrics.listen: must be host:port"),
        (lambda: MetadataConfig(timeout=0), "metadata.timeout: must be a duration > 0"),
        (lambda: PacemakerConfig(crm_resource="crm"), "pacemaker.crm_resource: must be an abs"),
        (lambda: LoggingConfig(level="loud"), "logging.level: must be one of"),  # type: ignore[arg-type]
        (lambda: IpConfig("1.2.3"), "ips[].address: must be an IPv4 address"),
        (lambda: IpConfig(IP, on_stop="drop"), "ips[].on_stop: must be one of"),  # type: ignore[arg-type]
        (lambda: Config(ips=()), "ips: must list at least one reserved IP"),
        (lambda: Config(ips=(IpConfig(IP), IpConfig(IP))), "ips[1].address: duplicate of ips[0]"),
        (lambda: Config(ips=(IpConfig(IP),), state_dir="run"), "state_dir: must be an absolute"),
    ],
)
def test_dataclasses_reject_bad_values_when_built_directly(
    build: typing.Callable[[], object], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build()

    assert any(problem.startswith(expected) for problem in caught.value.problems)


def test_dataclass_reports_every_bad_value_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        HealthConfig(url="ftp://x", rise=0, fall=0, expected_statuses=())

    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "health.url",
        "health.rise",
        "health.fall",
        "health.expected_statuses",
    ]


def test_dataclasses_accept_fast_test_timings_and_ephemeral_ports() -> None:
    health = HealthConfig(url="http://127.0.0.1:8080/", interval=0.05, timeout=0.02)
    api = ApiConfig(base_url="http://127.0.0.1:1234", action_poll_interval=0.01)
    metrics = MetricsConfig(listen="127.0.0.1:0")

    assert (health.interval, api.action_poll_interval, metrics.host_port()) == (
        0.05,
        0.01,
        ("127.0.0.1", 0),
    )


def test_lists_given_to_dataclasses_become_tuples() -> None:
    health = HealthConfig(expected_statuses=[200, 204])  # type: ignore[arg-type]
    control = ControlConfig(allowed_users=["root"])  # type: ignore[arg-type]
    config = Config(ips=[IpConfig(IP)])  # type: ignore[arg-type]

    assert health.expected_statuses == (200, 204)
    assert control.allowed_users == ("root",)
    assert config.ips == (IpConfig(IP),)
    hash((health, control, config))


# --- helpers -------------------------------------------------------------------------------


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    sections: dict[str, type] = {}
    for name, hint in hints.items():
        for option in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(option) and name != "ips":
                sections[name] = typing.cast(type, option)
    return sections


def _yaml_keys(cls: type) -> list[str]:
    return [spec.name for spec in dataclasses.fields(cls) if spec.name != "source"]
