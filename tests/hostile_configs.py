"""Generated hostile configuration files, each one certainly invalid, with what its error must
name (tests/integration/test_hostile_config.py and test_daemon_reload_hostile.py use them).

``generate(workdir)`` makes the same list on every call (``random.Random(seed)``, default
``SEED``): wrong types for every key the schema has (read from the dataclasses, so a new key is
covered), extreme numbers for every numeric key, unicode and control characters in keys and
values, deep nesting, duplicate keys, alias and merge bombs, a list, scalar or null at the top,
empty files, binary garbage, invalid UTF-8, byte-order marks, tabs, very long lines and a file
over the size limit. A file that is not built on ``base(workdir)`` is invalid as a whole; one
that is holds exactly one defect, and ``names`` says which key path the error must name.

``base(workdir)`` is a valid file that keeps a daemon to loopback and ``workdir``, should one
ever start from a file this module wrongly believes invalid.
"""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hafloatd.config import Config

SEED = 20240609
IP = "203.0.113.10"
LIMIT = 1024 * 1024  # hafloatd.config.loader.MAX_FILE_BYTES: the whole-file problem past it

Kind = Literal[
    "section",
    "duration",
    "int",
    "bool",
    "str",
    "optional_str",
    "choice",
    "names",
    "ints",
    "mode",
    "ips",
]


@dataclass(frozen=True)
class Hostile:
    name: str  # unique; also the file name
    category: str
    data: bytes
    names: str | None = None  # a key path one problem must start with (None: any key or line)
    duplicate: bool = False  # the problem naming ``names`` says "duplicate key"
    whole_file: str | None = None  # the only problem, when it is about the file as a whole


def base(workdir: Path) -> dict[str, Any]:
    return {
        "ips": [{"address": IP, "on_stop": "release"}],
        "state_dir": f"{workdir}/run",
        "api": {"base_url": "http://127.0.0.1:9", "token_source": "env", "hourly_budget": 100},
        "metadata": {"base_url": "http://127.0.0.1:9", "cache_file": f"{workdir}/md.json"},
        "control": {"socket_path": f"{workdir}/control.sock", "group": None},
        "metrics": {"listen": None},
        "health": {"url": "http://127.0.0.1:9/", "interval": "2s", "timeout": "1s"},
        "pacemaker": {"notify_failures": False},
        "logging": {"level": "info"},
    }


def dump(data: object) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


# --- the schema's keys ------------------------------------------------------------------------


def keys() -> list[tuple[str, Kind]]:
    """Every key path of the file (sections, their keys, ``ips[0]``'s keys) and its kind."""
    found: list[tuple[str, Kind]] = []
    hints = typing.get_type_hints(Config)
    for section in (spec.name for spec in dataclasses.fields(Config)):
        hint = hints[section]
        if section == "source":
            continue
        cls = _dataclass_of(hint)
        if section == "ips":
            found.append(("ips", "ips"))
            found += [(f"ips[0].{name}", kind) for name, kind in _fields(_item_class(hint))]
        elif cls is not None:
            found.append((section, "section"))
            found += [(f"{section}.{name}", kind) for name, kind in _fields(cls)]
        else:
            found.append((section, _kind(hint)))
    return found


def _dataclass_of(hint: Any) -> type[Any] | None:
    for option in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(option):
            return typing.cast(type[Any], option)
    return None


def _item_class(hint: Any) -> type[Any]:
    item = typing.get_args(hint)[0]
    assert dataclasses.is_dataclass(item)
    return typing.cast(type[Any], item)


def _fields(cls: type[Any]) -> list[tuple[str, Kind]]:
    hints = typing.get_type_hints(cls)
    return [
        (spec.name, "mode" if spec.name == "mode" else _kind(hints[spec.name]))
        for spec in dataclasses.fields(cls)
    ]


def _kind(hint: Any) -> Kind:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return "duration"
    if hint is int:
        return "int"
    if hint is bool:
        return "bool"
    if hint is str:
        return "str"
    if origin is Literal:
        return "choice"
    if origin is tuple:
        return "ints" if args[0] is int else "names"
    if origin in (types.UnionType, typing.Union) and set(args) == {str, type(None)}:
        return "optional_str"
    raise AssertionError(f"no wrong values known for {hint!r}: add them to tests/hostile_configs")


# Values of the wrong type for each kind: none of them is ever valid there.
MAPPING: dict[str, Any] = {"x": 1}
WRONG_TYPES: dict[Kind, list[Any]] = {
    "section": ["yes", [1], 5, True],
    "duration": [MAPPING, [1], "soon", True, None],
    "int": [MAPPING, [1], "many", True, 1.5, None],
    "bool": [MAPPING, [True], "maybe", 1, None],
    "str": [MAPPING, ["x"], 42, True, None, ""],
    "optional_str": [MAPPING, ["x"], 42, True],
    "choice": [MAPPING, ["info"], 7, True, None, "bogus"],
    "names": [MAPPING, "root", 0, None, [[1]], [True], [""]],
    "ints": [MAPPING, 200, None, ["200"], [[200]], [True]],
    "mode": [MAPPING, [432], True, "rw", None],
    "ips": [MAPPING, IP, None, [], [None], [[IP]]],
}
# Numbers never valid for a numeric key (durations > 0 up to a bound; counts >= 1, bounded
# except health.rise/fall; statuses 100..599; modes 0..0777 without "other" bits).
EXTREME = [
    "-1",
    ".nan",
    ".inf",
    "-.inf",
    "1.0e+308",
    "1.0e+309",
    "1e308",
    "9" * 400,
    "-" + "9" * 400,
    "9" * 5000,
    "0x7fffffffffffffff",
    "1_000_000_000_000_000_000_001",
    "0",
]
VALID_AT = {  # (kind or key, extreme) pairs that are valid and so not hostile
    ("mode", "0"),
    ("health.rise", "9" * 400),
    ("health.fall", "9" * 400),
    ("health.rise", "0x7fffffffffffffff"),
    ("health.fall", "0x7fffffffffffffff"),
    ("health.rise", "1_000_000_000_000_000_000_001"),
    ("health.fall", "1_000_000_000_000_000_000_001"),
}


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    section, _, name = path.partition(".")
    if section == "ips[0]":
        data["ips"][0][name] = value
    elif name:
        data[section][name] = value
    else:
        data[section] = value


def wrong_types(workdir: Path) -> list[Hostile]:
    files = []
    for path, kind in keys():
        for index, value in enumerate(WRONG_TYPES[kind]):
            data = base(workdir)
            if path.startswith("pacemaker.") or path.startswith("health."):
                data.setdefault(path.split(".")[0], {})
            _set(data, path, value)
            files.append(Hostile(f"type-{path}-{index}", "wrong type", dump(data), names=path))
    return files


def extremes(workdir: Path) -> list[Hostile]:
    files = []
    for path, kind in keys():
        if kind not in ("duration", "int", "mode", "ints"):
            continue
        data = base(workdir)
        _set(data, path, "EXTREME_NUMBER")  # replaced by the number as written, unquoted
        text = dump(data).decode()
        assert text.count("EXTREME_NUMBER") == 1
        for index, number in enumerate(EXTREME):
            if (kind, number) in VALID_AT or (path, number) in VALID_AT:
                continue
            written = f"[{number}]" if kind == "ints" else number
            files.append(
                Hostile(
                    f"extreme-{path}-{index}",
                    "extreme number",
                    text.replace("EXTREME_NUMBER", written).encode(),
                    names=None if len(number) > 4300 else path,  # too many digits: a YAML error
                )
            )
    return files


def unicode_and_control(workdir: Path, rng: random.Random) -> list[Hostile]:
    good = base(workdir)
    text = dump(good).decode()
    files = []
    for index, key in enumerate(
        [
            "api\u200b",
            "ípś",
            "🙂",
            "\u202eips",
            "ips\u0000",
            "\ufeffapi",
            "level\u2028",
            "a" * 300 + "é",
        ]
    ):
        data = base(workdir)
        data[key] = 1
        files.append(Hostile(f"unicode-key-{index}", "unicode", dump(data)))
    values = {
        "logging.level": "\uff49\uff4e\uff46\uff4f",  # fullwidth "info"
        "ips[0].on_stop": "releasé",
        "api.token_source": "énv",
        "api.path_family": "reserved_ips\u2028",
        "ips[0].address": "\uff12\uff10\uff13.\uff10.\uff11\uff11\uff13.\uff11\uff10",  # fullwidth
        "control.socket_path": "relative/ü.sock",
        "state_dir": "ñ/relative",
        "api.user_agent": "agent\x01\x1b[31m",
        "api.base_url": "ftp://ünïcode.example/",
        "metrics.listen": "ünïcode",
        "health.url": "http://\u202e/",
        "control.group": "grp\x00",
        "api.ca_file": "ünï.pem",
        "pacemaker.crm_resource": "\u00a0",
    }
    for path, value in values.items():
        data = base(workdir)
        _set(data, path, value)
        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=False).encode("ascii")
        files.append(Hostile(f"unicode-value-{path}", "unicode", body, names=path))
    for index in range(16):  # a raw control character somewhere in the file
        char = rng.choice(
            ["\x00", "\x01", "\x07", "\x08", "\x1b", "\x7f", "\x9b", "\ufffe", "\uffff"]
        )
        at = rng.randrange(len(text))
        body = (text[:at] + char + text[at:]).encode("utf-8", "surrogatepass")
        files.append(Hostile(f"control-char-{index}", "control character", body))
    return files


def nesting(workdir: Path) -> list[Hostile]:
    text = dump(base(workdir)).decode()
    files = []
    for depth in (33, 100, 1000, 10_000, 100_000):
        files.append(
            Hostile(
                f"deep-flow-list-{depth}",
                "deep nesting",
                (text + "x: " + "[" * depth + "]" * depth + "\n").encode(),
            )
        )
    for depth in (40, 3000, 10_000):
        files.append(
            Hostile(
                f"deep-flow-map-{depth}",
                "deep nesting",
                (text + "x: " + "{a: " * depth + "1" + "}" * depth + "\n").encode(),
            )
        )
    files.append(Hostile("deep-top-level", "deep nesting", b"[" * 10_000 + b"]" * 10_000))
    block = "ips:\n" + "".join("  " * level + "- \n" for level in range(200)) + "  " * 200 + "x\n"
    files.append(Hostile("deep-block-list", "deep nesting", block.encode()))
    return files


def duplicates(workdir: Path) -> list[Hostile]:
    text = dump(base(workdir)).decode()
    cases = {
        "ips": (f"ips: [{IP}]\n" + text, "ips"),
        "api": (text + "api: {token_source: env}\n", "api"),
        "quoted": ('"ips": [' + IP + "]\n" + text, "ips"),
        "nested": (
            text.replace("  token_source: env\n", "  token_source: env\n  token_source: file\n"),
            "api.token_source",
        ),
        "flow": (
            text.replace("health:\n", "health: {rise: 2, rise: 3}\nhealthx:\n"),
            "health.rise",
        ),
        "ip-entry": (
            text.replace("- address: ", "- address: 203.0.113.11\n  address: "),
            "ips[0].address",
        ),
        "unknown": (text + "zzz: 1\nzzz: 2\n", "zzz"),
        "users": (
            text.replace(
                "  group: null\n", "  group: null\n  allowed_users: [root]\n  allowed_users: []\n"
            ),
            "control.allowed_users",
        ),
        "section-late": (text + "\n\n# again\nlogging:\n  level: debug\n", "logging"),
    }
    return [
        Hostile(f"duplicate-{name}", "duplicate key", body.encode(), names=key, duplicate=True)
        for name, (body, key) in cases.items()
    ]


def bombs(workdir: Path) -> list[Hostile]:
    text = dump(base(workdir)).decode()
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        laughs.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    lol = "\n".join(laughs) + "\n"
    merges = ["m0: &m0 {k: 1}"]
    merges += [f"m{i}: &m{i}\n  <<: [*m{i - 1}, *m{i - 1}]\n  k{i}: 1" for i in range(1, 30)]
    merge = "\n".join(merges) + "\n"
    strip = text.replace(f"ips:\n- address: {IP}\n  on_stop: release\n", "")
    return [
        Hostile("bomb-laughs", "alias bomb", (text + lol).encode()),
        Hostile("bomb-laughs-as-ips", "alias bomb", (strip + lol + "ips: *i\n").encode()),
        Hostile(
            "bomb-laughs-in-users",
            "alias bomb",
            (
                text.replace("  group: null\n", "  group: null\n  allowed_users: *i\n").replace(
                    "control:\n", lol.replace("\n", "\n  ").join(["control:\n  ", ""])
                )
            ).encode(),
        ),
        Hostile("bomb-laughs-as-url", "alias bomb", (text + lol + "zz: {url: *i}\n").encode()),
        Hostile("bomb-merge", "alias bomb", (text + merge + "zz:\n  <<: *m29\n").encode()),
        Hostile(
            "bomb-merge-into-api",
            "alias bomb",
            (merge + text.replace("api:\n", "api:\n  <<: *m29\n")).encode(),
        ),
        Hostile("bomb-recursive", "alias bomb", (strip + "ips: &r [*r]\n").encode()),
        Hostile(
            "bomb-10000-aliases",
            "alias bomb",
            (strip + f"x: &x {IP}\nips: [" + ", ".join(["*x"] * 10_000) + "]\n").encode(),
        ),
        Hostile("bomb-undefined-alias", "alias bomb", (text + "zz: *nowhere\n").encode()),
    ]


def shapes() -> list[Hostile]:
    bodies = {
        "list": b"- ips\n- api\n",
        "flow-list": b"[1, 2, 3]\n",
        "scalar": b"hello\n",
        "number": b"42\n",
        "bool": b"true\n",
        "null": b"null\n",
        "tilde": b"~\n",
        "empty": b"",
        "blank": b"\n\n   \n",
        "comments": b"# nothing\n# here\n",
        "document-start": b"---\n",
        "document-end": b"...\n",
        "two-documents": f"ips: [{IP}]\n---\nips: [{IP}]\n".encode(),
        "directive": f"%YAML 9.9\n---\nips: [{IP}]\n".encode(),
        "python-tag": f"ips: [{IP}]\nx: !!python/object/apply:os.system [ls]\n".encode(),
        "binary-tag": f"ips: [{IP}]\napi: !!binary '@@@'\n".encode(),
        "set-tag": f"ips: !!set {{{IP}}}\n".encode(),
        "merge-scalar": f"ips: [{IP}]\napi:\n  <<: 5\n".encode(),
        "key-is-list": f"ips: [{IP}]\n? [a, b]\n: 1\n".encode(),
        "key-is-null": f"ips: [{IP}]\n~: 1\n".encode(),
    }
    return [Hostile(f"shape-{name}", "top level", body) for name, body in bodies.items()]


def encodings(workdir: Path, rng: random.Random) -> list[Hostile]:
    text = dump(base(workdir)).decode()
    files = [
        Hostile("utf16-le-bom", "encoding", text.encode("utf-16")),
        Hostile("utf16-be", "encoding", b"\xfe\xff" + text.encode("utf-16-be")),
        Hostile("utf32", "encoding", text.encode("utf-32")),
        Hostile("latin1-comment", "encoding", (text + "# café\n").encode("latin-1")),
        Hostile("latin1-value", "encoding", text.replace("info", "inf\xe9").encode("latin-1")),
        Hostile("bom-then-garbage", "encoding", b"\xef\xbb\xbf\xff\xfe" + text.encode()),
        Hostile(
            "bom-inside-key", "encoding", text.replace("ips:", "ip\ufeffs:").encode("utf-8-sig")
        ),
        Hostile("overlong-slash", "encoding", text.encode() + b"x: \xc0\xaf\n"),
        Hostile("surrogate-bytes", "encoding", text.encode() + b"x: \xed\xa0\x80\n"),
        Hostile("nul-bytes", "encoding", text.encode().replace(b"\n", b"\n\x00", 3)),
        Hostile("truncated-utf8", "encoding", text.encode() + "x: é".encode()[:-1]),
    ]
    for index in range(12):
        size = rng.choice([1, 7, 64, 512, 4096, 65536])
        files.append(Hostile(f"garbage-{index}", "binary garbage", rng.randbytes(size)))
    return files


def layout(workdir: Path) -> list[Hostile]:
    text = dump(base(workdir)).decode()
    long_value = "v" * 500_000
    files = [
        Hostile("tab-indent", "tabs", text.replace("  token_source:", "\ttoken_source:").encode()),
        Hostile("tab-before-dash", "tabs", text.replace("- address:", "\t- address:").encode()),
        Hostile("tab-indent-section", "tabs", text.replace("  level:", "\t  level:").encode()),
        Hostile("tabs-only-indent", "tabs", text.replace("\n  ", "\n\t").encode()),
        Hostile("mixed-indent", "tabs", text.replace("\n  url:", "\n \turl:").encode()),
        Hostile("long-unknown-value", "long line", (text + f"zz: {long_value}\n").encode()),
        Hostile(
            "long-agent-with-control",
            "long line",
            (text + f'zz: 1\napi2: "{long_value}\\x01"\n').encode(),
        ),
        Hostile("long-plain-key", "long line", (text + "k" * 2000 + ": 1\n").encode()),
        Hostile("long-comment", "long line", (text + "#" + "c" * 900_000 + "\nzz: 1\n").encode()),
        Hostile("long-ips-list", "long line", (f"ips: [{', '.join(['x'] * 50_000)}]\n").encode()),
        Hostile("long-line-no-newline", "long line", ("zz: " + "w" * 700_000).encode()),
        Hostile(
            "over-the-limit",
            "too large",
            (text + "#" * LIMIT).encode(),
            whole_file=f"file is larger than {LIMIT} bytes",
        ),
    ]
    return files


def generate(workdir: Path, seed: int = SEED) -> list[Hostile]:
    """Every hostile file (the same list for the same seed and workdir)."""
    rng = random.Random(seed)
    files = [
        *wrong_types(workdir),
        *extremes(workdir),
        *unicode_and_control(workdir, rng),
        *nesting(workdir),
        *duplicates(workdir),
        *bombs(workdir),
        *shapes(),
        *encodings(workdir, rng),
        *layout(workdir),
    ]
    names = [f.name for f in files]
    assert len(set(names)) == len(names), "hostile file names must be unique"
    return files


def sample(files: list[Hostile], count: int, seed: int = SEED) -> list[Hostile]:
    """``count`` files, at least one of each category (the heaviest of each first)."""
    rng = random.Random(seed + 1)
    by_category: dict[str, list[Hostile]] = {}
    for hostile in files:
        by_category.setdefault(hostile.category, []).append(hostile)
    chosen = [max(group, key=lambda h: len(h.data)) for group in by_category.values()]
    rest = [h for h in files if h not in chosen]
    return chosen + rng.sample(rest, max(0, min(len(rest), count - len(chosen))))
