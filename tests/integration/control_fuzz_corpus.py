"""The hostile-input corpus for tests/integration/test_control_fuzz.py, and its oracle.

A *case* is what one client connection does: the request lines it writes (each with what its
reply must be) and how it ends (waits for the replies, half-closes, ends on a line without a
newline). Lines are made by hypothesis strategies: a valid request (all five ops, optional
keys, unknown keys holding nested JSON, unicode, NaN, huge numbers), which a *mutation* may
then make certainly invalid (wrong types for every key, unknown or missing op, bad IPv4,
deadline out of range or too many digits, bad Pacemaker names, duplicate keys, not an
object, truncated or trailing JSON, invalid UTF-8, nesting past the parser's depth), and
raw byte strings. The expectation is decided by construction, not by asking the daemon's own
parser.

``check_reply`` is the oracle: every reply must be one well-formed JSON object line
(``ok``/``ocf``/``reason`` first, ``ok`` exactly when ``ocf`` is 0, one line of at most 1000
characters), and the one its line deserves: ``invalid request: ...`` with OCF 2 for an
invalid line, and for a valid one the answer of a daemon that manages only ``CONFIGURED``
(droplet 1001) and has never started it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pickle
import random
import re
import sys
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

T = TypeVar("T")
CONFIGURED = "203.0.113.10"  # the daemon's one IP, never started during the fuzz
DROPLET_ID = 1001
MAX_LINE_BYTES = 65536  # the daemon's default control.max_line_bytes
MAX_DEADLINE_MS = 3_600_000
SHORT_DEADLINE_MS = 50  # a valid request may also answer "deadline exceeded" under this
OPS = ("start", "stop", "monitor", "validate", "status")
KNOWN_KEYS = ("op", "ip", "deadline_ms", "probe", "resource", "node")
# The documented syntax (docs/control-protocol.md), written here rather than imported.
RESOURCE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*(?::[0-9]+)?")
NODE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_NAME_CHARS = 255
DEFAULT_SEED = 20240609  # hypothesis' seed unless HAFLOATD_FUZZ_SEED gives another

Kind = Literal["invalid", "answer", "blank"]
Ending = Literal["read", "half-close", "unterminated"]


@dataclass(frozen=True)
class Expect:
    kind: Kind
    op: str = ""
    ip: str | None = None
    probe: bool = False
    short_deadline: bool = False


@dataclass(frozen=True)
class Line:
    data: bytes  # without its terminator; never contains b"\n"
    expect: Expect


@dataclass(frozen=True)
class Case:
    lines: tuple[Line, ...]
    terminators: tuple[bytes, ...]  # b"\n" or b"\r\n", one per line
    ending: Ending

    def payload(self) -> bytes:
        parts = [line.data + end for line, end in zip(self.lines, self.terminators, strict=True)]
        if self.ending == "unterminated":
            parts[-1] = self.lines[-1].data  # the last line ends at EOF, not at a newline
        return b"".join(parts)

    def expected(self) -> list[Expect]:
        """The lines that get a reply, in order (blank lines get none)."""
        return [line.expect for line in self.lines if line.expect.kind != "blank"]


# --- JSON values --------------------------------------------------------------------------

# Characters worth trying, drawn from a list (hypothesis' full-Unicode text is ten times
# slower to draw, and 10,000 lines must be made in seconds): ASCII, JSON's and the shell's
# specials, control characters, line and paragraph separators, NEL, a BOM, a lone surrogate
# (written as an escape by json.dumps), right-to-left marks, combining marks, CJK, emoji.
CHARS = (
    "aZ09_-.: /\\\"'{}[],$;|&*?~`!#%=+<>()\t\r\x00\x01\x1b\x7f\x85\xa0\xe9\xff"
    "\u2028\u2029\ufeff\ud800\udfff\u202e\u200b\u0301\u4e2d\U0001f600\U0010ffff"
)
any_text = st.text(st.sampled_from(CHARS), max_size=24)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324])
    | any_text
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
not_a_string = (
    json_leaf.filter(lambda v: not isinstance(v, str))
    | st.lists(json_leaf, max_size=3)
    | st.dictionaries(any_text, json_leaf, max_size=2)
)
octet = st.integers(0, 255)
other_ip = (
    st.tuples(octet, octet, octet, octet)
    .map(lambda t: ".".join(map(str, t)))
    .filter(lambda ip: ip != CONFIGURED)
)
_NAME_REST = "abcXYZ019_.-"


def _valid_name(pattern: re.Pattern[str], text: str) -> bool:
    return len(text) <= MAX_NAME_CHARS and pattern.fullmatch(text) is not None


resource_ok = st.builds(
    lambda first, rest, clone: first + rest + clone,
    st.sampled_from("aZ_"),
    st.text(st.sampled_from(_NAME_REST), max_size=40),
    st.sampled_from(["", ":0", ":12"]),
)
node_ok = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("aZ0_"),
    st.text(st.sampled_from(_NAME_REST), max_size=40),
)


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[dict[str, Any], Expect]:
    op = draw(st.sampled_from(OPS))
    if op in ("start", "stop"):
        ip: str | None = draw(other_ip)  # the configured IP is never started or stopped here
    elif op == "status":
        ip = draw(st.none() | st.just(CONFIGURED) | other_ip)
    else:
        ip = draw(st.just(CONFIGURED) | other_ip)
    request: dict[str, Any] = {"op": op}
    if ip is not None or draw(st.booleans()):
        request["ip"] = ip
    deadline = draw(st.none() | st.integers(0, MAX_DEADLINE_MS) | st.just("absent"))
    if deadline != "absent":
        request["deadline_ms"] = deadline
    probe = draw(st.sampled_from([None, True, False, "absent"]))
    if probe != "absent":
        request["probe"] = probe
    for key, names in (("resource", resource_ok), ("node", node_ok)):
        value = draw(st.none() | names | st.just("absent"))
        if value != "absent":
            request[key] = value
    extras = draw(
        st.dictionaries(any_text.filter(lambda k: k not in KNOWN_KEYS), json_value, max_size=3)
    )
    request.update(extras)
    items = list(request.items())
    order = draw(st.permutations(range(len(items))))
    shuffled = dict(items[i] for i in order)
    short = isinstance(deadline, int) and deadline < SHORT_DEADLINE_MS
    return shuffled, Expect("answer", op, ip, probe is True, short)


def encode(obj: object, *, ascii_only: bool, compact: bool) -> bytes:
    """JSON on one line; raw UTF-8 unless that cannot hold the text (lone surrogates)."""
    separators = (",", ":") if compact else (", ", ": ")
    if not ascii_only:
        try:
            return json.dumps(obj, ensure_ascii=False, separators=separators).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return json.dumps(obj, separators=separators).encode("ascii")


# --- mutations: each makes a valid request certainly invalid --------------------------------

BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80")


@st.composite
def invalid_object(draw: st.DrawFn, base: dict[str, Any]) -> object:
    """JSON that parses but breaks one rule of the request schema (or is not an object)."""
    obj = dict(base)
    rule = draw(st.integers(0, 10))
    if rule == 0:
        obj.pop("op")
    elif rule == 1:
        obj["op"] = draw(not_a_string)
    elif rule == 2:
        obj["op"] = draw(any_text.filter(lambda s: s not in OPS))
    elif rule == 3:
        obj["ip"] = draw(not_a_string.filter(lambda v: v is not None))
    elif rule == 4:
        obj["ip"] = draw(any_text.filter(lambda s: not _is_ipv4(s)))
    elif rule == 5:
        obj["op"] = draw(st.sampled_from(["start", "stop", "monitor", "validate"]))
        obj.pop("ip", None)
        if draw(st.booleans()):
            obj["ip"] = None
    elif rule == 6:
        obj["deadline_ms"] = draw(
            st.integers(max_value=-1)
            | st.integers(min_value=MAX_DEADLINE_MS + 1)
            | st.integers(min_value=10**20, max_value=10**1000)
            | st.floats()
            | st.booleans()
            | any_text
            | st.lists(st.integers(), max_size=2)
        )
    elif rule == 7:
        obj["probe"] = draw(
            json_leaf.filter(lambda v: v is not None and not isinstance(v, bool))
            | st.lists(st.booleans(), max_size=2)
        )
    elif rule in (8, 9):
        key, pattern = ("resource", RESOURCE_RE) if rule == 8 else ("node", NODE_RE)
        obj[key] = draw(
            not_a_string.filter(lambda v: v is not None)
            | any_text.filter(lambda s: not _valid_name(pattern, s))
            | st.just("x" * (MAX_NAME_CHARS + 1))
            | st.just("-rf")
        )
    else:
        return draw(st.sampled_from([[], [base], "status", 7, None, True]))  # not an object
    return obj


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


@st.composite
def invalid_bytes(draw: st.DrawFn, base: dict[str, Any], text: bytes) -> bytes:
    """A request line that is not JSON, not UTF-8, or not readable as one object."""
    rule = draw(st.integers(0, 7))
    if rule == 0:  # a proper, non-empty prefix: the object is never closed
        cut = draw(st.integers(1, len(text) - 1))
        return text[:cut]
    if rule == 1:
        return text + draw(st.sampled_from([b"}", b" x", b",", b"{}", b"]", b" 1"]))
    if rule == 2:
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(BAD_UTF8)) + text[at:]
    if rule == 3:  # a key written twice
        key = draw(st.sampled_from(sorted(base)))
        again = json.dumps(key) + ":" + json.dumps(base[key]) + ","
        return b"{" + again.encode() + text[1:]
    if rule == 4:  # nested past the parser's recursion limit (still under the line limit)
        depth = draw(st.integers(2000, 30000))
        return b'{"op":"status","x":' + b"[" * depth + b"]" * depth + b"}"
    if rule == 5:  # an integer with more digits than Python converts (4300)
        digits = draw(st.integers(4301, 20000))
        return b'{"op":"status","deadline_ms":' + b"9" * digits + b"}"
    if rule == 6:
        return text.replace(b'"', b"'")
    return draw(st.sampled_from([b"{", b"nul", b"NaN", b"{op:status}", b'{"op":"status",}']))


@st.composite
def request_line(draw: st.DrawFn) -> Line:
    # Hypothesis favours the first of a list: the blank line comes last.
    choice = draw(st.sampled_from(["object", "valid", "bytes", "blank"]))
    if choice == "blank":
        return Line(draw(st.sampled_from([b"", b" ", b"\t", b"  \t "])), Expect("blank"))
    base, expect = draw(valid_request())
    ascii_only, compact = draw(st.booleans()), draw(st.booleans())
    if choice == "valid":
        data = encode(base, ascii_only=ascii_only, compact=compact)
    elif choice == "object":
        data = encode(draw(invalid_object(base)), ascii_only=ascii_only, compact=compact)
        expect = Expect("invalid")
    else:
        text = encode(base, ascii_only=ascii_only, compact=compact)
        data = draw(invalid_bytes(base, text))
        expect = Expect("invalid")
    pad = st.sampled_from([b"", b" ", b"\t", b"  "])
    return Line(draw(pad) + data + draw(pad), expect)


def generate_lines(count: int, seed: int | None = None) -> list[Line]:
    """``count`` request lines made by hypothesis; the same list on every call unless ``seed``
    is given. Drawing costs hypothesis a few milliseconds a line: the fuzz sends each of these
    lines several times, in new company (``assemble``)."""
    lines = _draw(request_line(), count, seed)
    assert len(lines) == count, f"generated {len(lines)} of {count} lines"
    return lines


def _draw(strategy: st.SearchStrategy[T], count: int, seed: int | None) -> list[T]:
    """Up to ``count`` examples of ``strategy``, generated (no shrinking, no database) from
    ``seed`` (``DEFAULT_SEED`` when None)."""
    found: list[T] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=False,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        if len(found) < count:
            found.append(example)

    hypothesis_seed(DEFAULT_SEED if seed is None else seed)(collect)()
    return found


def assemble(pool: list[Line], target_lines: int, rng: random.Random) -> list[Case]:
    """Connections carrying at least ``target_lines`` lines from ``pool`` (each line of the
    pool at least once when ``target_lines`` allows), 1 to 40 lines each, with random
    terminators and endings."""
    cases: list[Case] = []
    queue: list[Line] = []
    total = 0
    while total < target_lines:
        if not queue:
            queue = rng.sample(pool, len(pool))
        size = min(rng.randint(1, 40), len(queue))
        lines, queue = queue[:size], queue[size:]
        if all(line.expect.kind == "blank" for line in lines):
            lines.append(Line(b'{"op":"status"}', Expect("answer", "status")))
        terminators = tuple(rng.choice((b"\n", b"\r\n")) for _ in lines)
        ending: Ending = rng.choice(("read", "half-close", "unterminated"))
        cases.append(Case(tuple(lines), terminators, ending))
        total += len(lines)
    return cases


def generate_raw(count: int, seed: int | None = None) -> list[bytes]:
    """``count`` random byte strings (lines are whatever their newlines make them)."""
    return _draw(st.binary(min_size=1, max_size=2000), count, seed)


async def generate_apart(
    lines: int, raw: int, seed: int | None, timeout: float = 900
) -> tuple[list[Line], list[bytes]]:
    """``generate_lines(lines, seed)`` and ``generate_raw(raw, seed)``, drawn in a fresh
    interpreter: in a process that has run other tests, hypothesis draws other examples for
    the same seed, and the corpus must be the same on every run."""
    code = (
        "import pickle, sys\n"
        "from tests.integration.control_fuzz_corpus import generate_lines, generate_raw\n"
        "lines, raw, seed = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]\n"
        "seed = int(seed) if seed else None\n"
        "sys.stdout.buffer.write(pickle.dumps((generate_lines(lines, seed), "
        "generate_raw(raw, seed))))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        str(lines),
        str(raw),
        "" if seed is None else str(seed),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=root,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": root},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")
    pool, strings = pickle.loads(out)  # our own child's output
    return pool, strings


def raw_lines(data: bytes, *, at_eof: bool) -> int:
    """How many replies ``data`` deserves: one per non-blank line (the last one, without a
    newline, only when the client then closes its side)."""
    *complete, last = data.split(b"\n")
    return sum(1 for part in complete if part.strip()) + (1 if at_eof and last.strip() else 0)


# --- the oracle -----------------------------------------------------------------------------


def well_formed(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The reply object, or None and what is wrong with the line."""
    if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
        return None, f"not one line: {raw[:200]!r}"
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON ({exc}): {raw[:200]!r}"
    if not isinstance(reply, dict):
        return None, f"not an object: {raw[:200]!r}"
    if list(reply)[:3] != ["ok", "ocf", "reason"]:
        return None, f"ok, ocf, reason not first: {list(reply)[:5]}"
    ocf, ok, reason = reply["ocf"], reply["ok"], reply["reason"]
    if isinstance(ocf, bool) or not isinstance(ocf, int) or not 0 <= ocf <= 9:
        return None, f"ocf {ocf!r} is not an OCF code"
    if ok is not (ocf == 0):
        return None, f"ok={ok!r} with ocf={ocf}"
    if not isinstance(reason, str) or len(reason) > 1000 or "\n" in reason:
        return None, f"reason is not one short line: {reason!r:.200}"
    return reply, None


def is_invalid_reply(reply: dict[str, Any]) -> bool:
    return reply["ocf"] == 2 and str(reply["reason"]).startswith("invalid request: ")


def is_busy_reply(reply: dict[str, Any]) -> bool:
    return reply["ocf"] == 1 and str(reply["reason"]).startswith("too many control connections")


def check_reply(expect: Expect, raw: bytes) -> str | None:
    """None when ``raw`` is the reply ``expect`` deserves, else what is wrong."""
    reply, problem = well_formed(raw)
    if reply is None:
        return problem
    if expect.kind == "invalid":
        return None if is_invalid_reply(reply) else f"an invalid request answered {reply}"
    if (
        expect.short_deadline
        and reply["ocf"] == 1
        and str(reply["reason"]).startswith("deadline exceeded")
    ):
        return None
    wanted = expected_answer(expect)
    if wanted is None:
        return None
    ocf, check = wanted
    if reply["ocf"] != ocf or not check(reply):
        return f"{expect.op} {expect.ip} (probe={expect.probe}) answered {str(reply)[:300]}"
    return None


def expected_answer(expect: Expect) -> tuple[int, Any] | None:
    if expect.op == "status":
        return 0, lambda r: [entry["ip"] for entry in r["ips"]] == [CONFIGURED]
    if expect.ip == CONFIGURED:
        if expect.op == "monitor":
            return 7, lambda r: r["role"] == "stopped"  # never started during the fuzz
        return 0, lambda r: r["droplet_id"] == DROPLET_ID  # validate
    not_here = f"reserved IP {expect.ip} is not in "
    if expect.op == "stop":
        return 0, lambda r: r["reason"].startswith(not_here)
    if expect.op == "monitor" and expect.probe:
        return 7, lambda r: r["reason"].startswith(not_here)
    return 5, lambda r: r["reason"].startswith(not_here)
