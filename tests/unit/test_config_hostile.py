"""Hostile configuration files: whatever a file holds, ``load_config`` raises ``ConfigError``
(never a traceback) with short, one-line problems that name a key or a line, and the
commands exit 2 (check-config) and 78 (run) as real processes."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafloatd.config import Config, HealthConfig, load_config, parse_config
from hafloatd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "hafloatd.example.yaml"
IP = "203.0.113.10"
TIMEOUT_S = 60
# A problem is one line of at most ~300 characters plus " (line N)"; at most 20 are listed,
# then a count of the rest.
MAX_PROBLEM_CHARS = 330
MAX_PROBLEMS_SHOWN = 21
SECTIONS = ("ips", "api", "metadata", "control", "metrics", "health", "pacemaker", "logging")
NAMES_A_KEY = re.compile(rf"^(top level|state_dir|(?:{'|'.join(SECTIONS)})\b)")
NAMES_A_LINE = re.compile(r"\bline \d+\b")

HOSTILE_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same corpus on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hafloatd.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


def config_error(path: Path) -> ConfigError:
    """The ConfigError ``load_config`` raises; any other outcome fails the test."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_actionable(caught.value)
    return caught.value


def assert_actionable(error: ConfigError) -> None:
    """Few, short, one-line problems, each naming a key path or a line."""
    assert 1 <= len(error.problems) <= MAX_PROBLEMS_SHOWN, error.problems
    for problem in error.problems:
        assert len(problem) <= MAX_PROBLEM_CHARS, problem
        assert "\n" not in problem and "\r" not in problem, problem
        assert (
            NAMES_A_KEY.match(problem)
            or NAMES_A_LINE.search(problem)
            or problem.startswith("... and ")
        ), problem


# --- the crashes found by the generated corpus, one by one ---------------------------------

CRASHES = {
    # RecursionError in PyYAML's composer.
    "deep-flow-nesting": ("ips: " + "[" * 5000 + "]" * 5000 + "\n", "line 1, column"),
    "deep-mapping-nesting": ("ips: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "line 1, column"),
    # yaml ReaderError: the loader was built outside the try.
    "nul-character": (f"ips: [{IP}]\nlogging: \x00\n", "line 2, column 10: invalid YAML"),
    "control-character": (f"ips: [{IP}]\n\x07\n", "line 2, column 1: invalid YAML"),
    # OverflowError: a 400-digit number of seconds does not fit a float.
    "400-digit-duration": (
        f"ips: [{IP}]\nhealth:\n  interval: {'9' * 400}\n",
        "health.interval: must be at most 1h, got 9999999999999999999999999999999999999999…",
    ),
    # ValueError from an explicit tag that cannot build its value.
    "int-tag-on-a-word": (f"ips: [{IP}]\nhealth:\n  rise: !!int two\n", "line 3, column 9"),
    "float-tag-on-a-word": (f"ips: [{IP}]\nhealth:\n  interval: !!float x\n", "line 3"),
    "bool-tag-on-a-word": (
        f"ips: [{IP}]\npacemaker: {{notify_failures: !!bool maybe}}\n",
        "line 2",
    ),
    "timestamp-tag-on-a-word": (f"ips: [{IP}]\nhealth:\n  interval: !!timestamp x\n", "line 3"),
    # ValueError: more digits than Python converts to an int.
    "5000-digit-int": (f"ips: [{IP}]\nhealth:\n  rise: {'9' * 5000}\n", "line 3, column 9"),
    # UnicodeEncodeError: a lone surrogate (a double-quoted escape) in a path.
    "surrogate-in-a-path": (
        f'ips: [{IP}]\ncontrol: {{socket_path: "/run/\\ud800"}}\n',
        "control.socket_path: must be a path of valid characters",
    ),
}


@pytest.mark.parametrize(("text", "expected"), CRASHES.values(), ids=CRASHES.keys())
def test_hostile_file_is_a_config_error_naming_its_line_or_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    error = config_error(write(tmp_path, text))

    assert any(expected in problem for problem in error.problems), error.problems


# YAML 1.1 reads digits separated by colons as base 60: 190:20:30 is the int 685230.
SEXAGESIMAL = {
    "duration": ("health:\n  interval: 190:20:30\n", "health.interval: must be a duration"),
    "float-duration": ("api:\n  request_timeout: 1:30.5\n", "api.request_timeout: must be a dur"),
    "integer": ("health:\n  rise: 1:30\n", "health.rise: must be an integer"),
    "list-item": ("health:\n  expected_statuses: [3:20]\n", "health.expected_statuses[0]: must"),
    "mode": ("control:\n  mode: 6:40\n", "control.mode: must be an octal file mode"),
    "numeric-id": ("control:\n  allowed_users: [1:30]\n", "control.allowed_users[0]: must be"),
}


@pytest.mark.parametrize(("text", "expected"), SEXAGESIMAL.values(), ids=SEXAGESIMAL.keys())
def test_yaml_base60_numbers_are_refused_where_a_number_is_expected(
    tmp_path: Path, text: str, expected: str
) -> None:
    error = config_error(write(tmp_path, f"ips: [{IP}]\n{text}"))

    assert len(error.problems) == 1
    assert error.problems[0].startswith(expected)
    assert "base-60" in error.problems[0]


@pytest.mark.parametrize("written", [".nan", ".NaN", ".inf", "-.inf", "+.inf", "'nan'", "'inf'"])
def test_nan_and_infinite_durations_are_refused(tmp_path: Path, written: str) -> None:
    error = config_error(write(tmp_path, f"ips: [{IP}]\nhealth:\n  interval: {written}\n"))

    assert error.problems[0].startswith("health.interval: must be")


def test_a_huge_value_is_shown_cut_short(tmp_path: Path) -> None:
    long_url = "ftp://" + "x" * 100_000
    error = config_error(write(tmp_path, f"ips: [{IP}]\nhealth:\n  url: '{long_url}'\n"))

    assert error.problems == [
        "health.url: must be an http:// or https:// URL, got "
        "'ftp://xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (line 3)"
    ]


def test_a_huge_or_unprintable_key_is_shown_quoted_and_cut_short(tmp_path: Path) -> None:
    # An explicit key ("? "): a plain one is limited to 1024 characters by YAML itself.
    error = config_error(write(tmp_path, f'ips: [{IP}]\n? "{"k" * 5000}"\n: 1\n"a\\nb": 2\n'))

    assert error.problems == [
        "'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk…: unknown key (line 2)",
        "'a\\nb': unknown key (line 4)",
    ]


def test_thousands_of_problems_list_the_first_twenty_and_count_the_rest(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, "ips: [" + ", ".join(["x"] * 5000) + "]\n"))

    assert len(error.problems) == 21
    assert error.problems[-1] == "... and 9979 more problems"
    assert len(str(error)) < 5000


def test_paths_with_a_nul_character_are_refused(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, f'ips: [{IP}]\nstate_dir: "/run/a\\0b"\n'))

    assert error.problems[0].startswith("state_dir: must not contain a NUL character")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "hafloatd.yaml"
    path.write_bytes(f"ips: [{IP}]\nlogging:\n  level: \xff\n".encode("latin-1"))

    error = config_error(path)

    assert error.problems == ["line 3: not valid UTF-8 (byte offset 38)"]


# --- duration bounds -------------------------------------------------------------------------

BOUNDS = {
    "api.connect_timeout": "1m",
    "api.request_timeout": "2m",
    "api.keepalive_interval": "1h",
    "api.holder_check_interval": "1h",
    "api.action_poll_interval": "1m",
    "metadata.timeout": "1m",
    "metadata.poll_interval": "1h",
    "metadata.max_lag": "1m",
    "control.read_timeout": "1m",
    "health.interval": "1h",
    "health.timeout": "1m",
}


@pytest.mark.parametrize(("key", "bound"), BOUNDS.items())
def test_each_duration_accepts_its_bound_and_refuses_more(key: str, bound: str) -> None:
    section, name = key.split(".")
    # Keep the cross-field rules (connect <= request, timeout < interval) out of the way.
    base = {"api": {"request_timeout": "2m"}, "health": {"interval": "1h", "timeout": "1s"}}

    def build(written: str) -> Config:
        data: dict[str, typing.Any] = {"ips": [IP], **{k: dict(v) for k, v in base.items()}}
        data.setdefault(section, {})[name] = written
        return parse_config(data)

    build(bound)
    with pytest.raises(ConfigError) as caught:
        build(bound + "1ms")

    assert caught.value.problems == [f"{key}: must be at most {bound}, got '{bound}1ms'"]


def test_dataclasses_built_directly_check_the_same_bounds() -> None:
    with pytest.raises(ConfigError) as caught:
        HealthConfig(interval=7200.0, timeout=1.0)

    assert caught.value.problems == ["health.interval: must be at most 1h, got 2h"]


def test_every_duration_field_has_a_bound() -> None:
    """A new duration key must get a bound in MAX_SECONDS (and in this test's BOUNDS)."""
    bounded: set[str] = set()
    durations: set[str] = set()
    for section, hint in typing.get_type_hints(Config).items():
        for option in (hint, *typing.get_args(hint)):
            if not dataclasses.is_dataclass(option):
                continue
            cls = typing.cast(type, option)
            bounded |= {f"{section}.{name}" for name in getattr(cls, "MAX_SECONDS", {})}
            durations |= {
                f"{section}.{name}"
                for name, field_hint in typing.get_type_hints(cls).items()
                if field_hint is float
            }
    assert bounded == durations == set(BOUNDS)


def test_bounds_accept_the_lab_nodes_configuration(tmp_path: Path) -> None:
    from hafloatd.lab.nodes import node_config  # noqa: PLC0415

    sim = types.SimpleNamespace(
        api_url="http://127.0.0.1:1", ca_file=None, metadata_url=lambda _id: "http://127.0.0.1:2"
    )
    data = node_config(sim, 1, tmp_path, health_url="http://127.0.0.1:3/")

    assert parse_config(data).health is not None


# --- a generated corpus ---------------------------------------------------------------------

# Values that once made the loader fail with something else than a ConfigError, or nearly.
HOSTILE_SCALARS = [
    "9" * 400,
    "-" + "9" * 400,
    "9" * 5000,
    "0x" + "f" * 300,
    "190:20:30",
    "1:30.5",
    ".nan",
    "-.inf",
    "1.0e+400",
    "!!int two",
    "!!float x",
    "!!bool maybe",
    "!!timestamp x",
    "!!binary '@@'",
    "!!set {a, b}",
    "!!omap [1]",
    "!!python/object:os.system {}",
    "!" + "t" * 300 + " x",
    "&a [*a]",
    "'" + "x" * 5000 + "'",
    '"\\0"',
    '"\\ud800"',
    '"a\\nb\\tc"',
    "[" * 200 + "]" * 200,
    "{a: " * 100 + "1" + "}" * 100,
    "~",
    "{}",
    "[]",
    "yes",
    "0660",
    "1e400",
    "''",
]
KEYS = [
    "ips",
    "state_dir",
    "api.base_url",
    "api.token_source",
    "api.token_file",
    "api.connect_timeout",
    "api.request_timeout",
    "api.max_connections",
    "api.keepalive_interval",
    "api.action_poll_interval",
    "api.user_agent",
    "metadata.timeout",
    "metadata.cache_file",
    "control.socket_path",
    "control.mode",
    "control.group",
    "control.allowed_users",
    "control.max_line_bytes",
    "metrics.listen",
    "health.url",
    "health.interval",
    "health.rise",
    "health.expected_statuses",
    "health.body_contains",
    "pacemaker.notify_failures",
    "logging.level",
    "unknown.key",
]
FRAGMENTS = [
    "ips:",
    "api:",
    "health:",
    "control:",
    "  interval:",
    "  rise:",
    "  mode:",
    " - ",
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "&a ",
    "*a",
    "<<: ",
    "!!int ",
    "!!float ",
    "? ",
    "---",
    "...",
    "%YAML 1.1",
    "#",
    "'",
    '"',
    "\\",
    "\t",
    "\n",
    "  ",
    IP,
    "190:20:30",
    "9" * 50,
    ".nan",
    "\x00",
    "\x1b",
    "\ufeff",
    "\u2028",
    "é",
]


def _entry_text(key: str, scalar: str) -> str:
    section, _, name = key.partition(".")
    if not name:
        return f"{section}: {scalar}\n"
    return f"{section}:\n  {name}: {scalar}\n"


@HOSTILE_SETTINGS
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(KEYS), st.sampled_from(HOSTILE_SCALARS)), min_size=1, max_size=4
    ),
    with_ips=st.booleans(),
)
def test_generated_hostile_values_give_config_errors(
    tmp_path: Path, entries: list[tuple[str, str]], with_ips: bool
) -> None:
    text = (f"ips: [{IP}]\n" if with_ips else "") + "".join(
        _entry_text(key, scalar) for key, scalar in entries
    )
    path = write(tmp_path, text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert_actionable(exc)


@HOSTILE_SETTINGS
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
def test_generated_fragment_soup_gives_config_errors(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert_actionable(exc)


@HOSTILE_SETTINGS
@given(st.binary(max_size=300))
def test_generated_bytes_give_config_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "hafloatd.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert_actionable(exc)


@HOSTILE_SETTINGS
@given(st.integers(min_value=0, max_value=len(EXAMPLE.read_text())), st.text(max_size=20))
def test_example_file_with_text_spliced_in_gives_config_errors(
    tmp_path: Path, position: int, inserted: str
) -> None:
    original = EXAMPLE.read_text()
    path = write(tmp_path, original[:position] + inserted + original[position:])
    try:
        load_config(path)
    except ConfigError as exc:
        assert_actionable(exc)


@HOSTILE_SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.text(max_size=12) | st.sampled_from(SECTIONS), children, max_size=4
            )
        ),
        max_leaves=30,
    )
)
def test_generated_documents_give_config_errors(tmp_path: Path, data: object) -> None:
    path = write(tmp_path, yaml.safe_dump(data, allow_unicode=True))
    try:
        load_config(path)
    except ConfigError as exc:
        assert_actionable(exc)


# --- the commands, as real processes -------------------------------------------------------

PROCESS_CASES = {
    name: CRASHES[name][0]
    for name in ("deep-flow-nesting", "nul-character", "400-digit-duration", "int-tag-on-a-word")
}
PROCESS_CASES["sexagesimal-duration"] = f"ips: [{IP}]\nhealth:\n  interval: 190:20:30\n"


def hafloatd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hafloatd.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize("text", PROCESS_CASES.values(), ids=PROCESS_CASES.keys())
def test_check_config_exits_2_without_a_traceback(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    result = hafloatd("check-config", str(path))

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}: ")
    assert len(result.stderr) < 1000


def loopback_only(tmp_path: Path) -> str:
    """Settings that keep a daemon to loopback and tmp_path, should a file ever be accepted."""
    return (
        f"state_dir: {tmp_path}/run\n"
        "api: {base_url: 'http://127.0.0.1:9', token_source: env}\n"
        f"metadata: {{base_url: 'http://127.0.0.1:9', cache_file: {tmp_path}/md.json}}\n"
        f"control: {{socket_path: {tmp_path}/control.sock, group: null}}\n"
        "metrics: {listen: null}\n"
    )


@pytest.mark.parametrize("text", PROCESS_CASES.values(), ids=PROCESS_CASES.keys())
def test_run_exits_78_without_a_traceback(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, loopback_only(tmp_path) + text)

    result = hafloatd("run", "--config", str(path))

    assert result.returncode == 78, result.stderr  # systemd: RestartPreventExitStatus=78
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"hafloatd: {path}: ")
    assert len(result.stderr) < 1000
