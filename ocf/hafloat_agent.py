"""ocf:hafloatd:hafloat, the OCF resource agent for a DigitalOcean reserved IP held by hafloatd.

A thin client: it never talks to DigitalOcean, holds no token and reads no configuration
file. Each action is one JSON line to the local hafloatd daemon over its Unix control socket
and one JSON line back; the daemon's "ocf" answer is the exit code. When the daemon is
momentarily unreachable (restarting), monitor, start and validate-all wait for it within
their own deadline; stop never waits, and leaves a stop record for the daemon instead.
Behaviour, exit codes and the stop-record protocol: docs/ocf-agent.md.

The launcher ``ocf/hafloat`` (installed as $OCF_ROOT/resource.d/hafloatd/hafloat) imports
this module from $OCF_ROOT/lib/hafloatd, where ``hafloatd install-agent`` leaves its compiled
bytecode: a monitor runs every few seconds on every node, and start-up is its whole cost.
So it imports only the interpreter's C modules (_json, _socket, posix): the Python wrappers
json, socket and os would cost ~15 ms more under ``python3 -I -S`` (re, enum, selectors...),
and it leaves through posix._exit() after flushing, skipping the interpreter's teardown.

Stdlib only, Python 3.9+ (the system python3 of Debian 12 and EL9); imports nothing from the
hafloatd package. License: Apache-2.0.
"""

import _json
import _socket
import posix
import sys
import time

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_PERM = 4
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

AGENT_NAME = "hafloat"
AGENT_VERSION = "0.1.0"  # hafloatd.__version__; tests/unit/test_ocf_agent.py pins the two
DEFAULT_SOCKET = "/run/hafloatd/control.sock"
MAX_REPLY_BYTES = 65536  # the daemon's line limit (DESIGN section 7)
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
MIN_MARGIN_MS = 500  # deadline sent to the daemon = op timeout - max(500 ms, 10%)
MAX_DEADLINE_MS = 3_600_000  # the daemon refuses longer deadlines
# While nobody listens on the socket (systemd restarts a killed daemon in ~2 s), connect again
# this often: Pacemaker should not move the IP because a monitor fell into that gap.
RECONNECT_INTERVAL_S = 0.05
STOP_RECORD_PREFIX = "stopped-"  # + the IP, in the socket's directory (docs/ocf-agent.md)

# Declared once: meta-data, dispatch and default timeouts all read these.
# action -> (default timeout s, default interval s)
ACTIONS = {
    "start": (20, 0),
    "stop": (20, 0),
    "monitor": (20, 10),
    "validate-all": (20, 0),
    "meta-data": (5, 0),
}
# agent action -> control protocol op
DAEMON_OPS = {"start": "start", "stop": "stop", "monitor": "monitor", "validate-all": "validate"}


def run(argv: list[str]) -> None:
    """The launcher's entry point: run one action, flush, and exit with its OCF code."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(code)


def main(argv: list[str]) -> int:
    """Run one action; return its OCF exit code."""
    action = argv[1] if len(argv) > 1 else ""
    if action not in DAEMON_OPS:
        return local_action(action)
    op = Operation(action, posix.environ)
    problem = op.parameter_problem()
    if problem:
        return bad_parameters(op, problem)
    if action == "stop":
        return stop(op)
    try:
        code, reason = op.exchange(wait_for_daemon=True)
    except Exception as exc:  # every failure has a defined OCF outcome, decided there
        return failed_exchange(op, exc)
    if code == OCF_NOT_RUNNING and action != "monitor":
        # 7 answers a monitor only: for start or validate it is a failure.
        exit_reason(reason or f"hafloatd answered 'not running' to op={op.op}")
        return OCF_ERR_GENERIC
    if code != OCF_SUCCESS and reason:
        exit_reason(reason)
    return code


class Unreachable(Exception):
    """The control socket could not be connected to; args[0] is the OSError."""


class Operation:
    """One action for the daemon: the parameters Pacemaker passed and the time it allows."""

    def __init__(self, action: str, environ: dict[bytes, bytes]) -> None:
        self.action = action
        self.op = DAEMON_OPS[action]
        self.ip = env_text(environ, b"OCF_RESKEY_ip")
        self.socket_path = env_text(environ, b"OCF_RESKEY_socket") or DEFAULT_SOCKET
        interval_ms = env_int(environ, b"OCF_RESKEY_CRM_meta_interval")
        self.probe = action == "monitor" and interval_ms <= 0
        timeout_ms = env_int(environ, b"OCF_RESKEY_CRM_meta_timeout") or ACTIONS[action][0] * 1000
        self.deadline_ms, self.budget_s = split_timeout(timeout_ms)
        self.resource = env_text(environ, b"OCF_RESOURCE_INSTANCE")
        self.node = env_text(environ, b"OCF_RESKEY_CRM_meta_on_node")
        self.began = time.monotonic()
        # the daemon's deadline, and the agent's own (half a margin later), on this clock
        self.deadline_at = self.began + self.deadline_ms / 1000.0
        self.give_up_at = self.began + self.budget_s
        self.connect_attempts = 0

    def parameter_problem(self) -> str:
        """What is wrong with the parameters, for a person; empty when they are usable."""
        if not self.ip:
            return "parameter ip is required (the reserved IPv4 address, e.g. ip=203.0.113.10)"
        if not is_ipv4(self.ip):
            return f"parameter ip={self.ip[:64]!r} is not a dotted IPv4 address (e.g. 203.0.113.10)"
        if self.socket_path[:1] != "/" or len(self.socket_path.encode()) > SUN_PATH_MAX:
            return (
                f"parameter socket={self.socket_path[:120]!r} must be an absolute path of at "
                f"most {SUN_PATH_MAX} bytes"
            )
        return ""

    def exchange(self, *, wait_for_daemon: bool) -> tuple[int, str]:
        """Send the request, return the reply's (ocf code, reason); all before give_up_at.

        Raises Unreachable when nothing accepts the connection (with ``wait_for_daemon``,
        only once the daemon's deadline is near), TimeoutError when no reply line came in
        time, OSError when the connection broke, ValueError when the reply is not valid.
        """
        sock = self.connect(wait_for_daemon)
        try:
            deadline_ms = self.deadline_ms
            if self.connect_attempts > 1:  # time went by waiting: the daemon gets what is left
                deadline_ms = max(0, int((self.deadline_at - time.monotonic()) * 1000))
            sock.sendall(self.request(deadline_ms))
            reply = b""
            while b"\n" not in reply and len(reply) <= MAX_REPLY_BYTES:
                remaining = self.give_up_at - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(MAX_REPLY_BYTES)
                if not chunk:  # closed: what came is the whole reply
                    break
                reply += chunk
        finally:
            sock.close()
        line = reply.split(b"\n", 1)[0]
        if len(line) > MAX_REPLY_BYTES:
            raise ValueError(f"reply line longer than {MAX_REPLY_BYTES} bytes")
        return parse_reply(line)

    def connect(self, wait_for_daemon: bool) -> _socket.socket:
        """A connected socket. While the socket file is missing or refuses connections (the
        daemon is restarting), and ``wait_for_daemon``, try again every RECONNECT_INTERVAL_S
        until the daemon's deadline."""
        while True:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            self.connect_attempts += 1
            try:
                sock.settimeout(max(0.001, self.give_up_at - time.monotonic()))
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if not wait_for_daemon or (
                    time.monotonic() + RECONNECT_INTERVAL_S >= self.deadline_at
                ):
                    raise Unreachable(exc) from None
            except OSError as exc:
                sock.close()
                raise Unreachable(exc) from None
            else:
                return sock
            time.sleep(RECONNECT_INTERVAL_S)

    def request(self, deadline_ms: int) -> bytes:
        """The request line; resource and node are null when Pacemaker did not say."""
        request = {
            "op": self.op,
            "ip": self.ip,
            "deadline_ms": deadline_ms,
            "probe": self.probe,
            "resource": self.resource or None,
            "node": self.node or None,
        }
        return (json_dumps(request) + "\n").encode()


# --- stop: never fails, never waits ----------------------------------------------------------


def stop(op: Operation) -> int:
    """Stop. A stop the daemon did not take is recorded for its next start, then sent once more
    (a daemon that was just coming up gets it); either way Pacemaker hears success."""
    try:
        code, reason = op.exchange(wait_for_daemon=False)
    except Exception as exc:
        problem = describe_failure(op, exc)
    else:
        if code in (OCF_SUCCESS, OCF_NOT_RUNNING):  # 7: already stopped
            return OCF_SUCCESS
        # A working daemon that could not unassign (on_stop: unassign) knows it; pass it on.
        exit_reason(reason or f"hafloatd answered {code} to op=stop")
        return code
    # No daemon took the stop: without one nothing here holds the role, and by default stop
    # makes no API call anyway; failing it would block the resource (or fence the node),
    # while the next start elsewhere moves the IP. The record keeps a restarting daemon from
    # reviving a role Pacemaker has stopped.
    record, note = write_stop_record(op)
    outcome = "assumed stopped"
    if time.monotonic() < op.deadline_at:
        try:
            op.exchange(wait_for_daemon=False)
            delivered = True
        except Exception:  # still nobody: the record speaks for this stop
            delivered = False
        if delivered:
            outcome = "delivered on a second attempt"
            if record and remove_quietly(record):
                note = "stop record removed"
    warn(f"{problem}; {outcome}; {note}")
    return OCF_SUCCESS


def write_stop_record(op: Operation) -> tuple[str, str]:
    """Write ``stopped-<ip>`` in the control socket's directory; return (its path or "" when
    none was written, what happened for the log).

    One JSON line, written atomically (unique temporary name, fsync, rename), mode 0644,
    owned like the directory (the daemon may run as its own user; this runs as root).
    Never raises: a stop must not fail because its record could not be written.
    """
    directory = op.socket_path.rpartition("/")[0] or "/"
    try:
        owner = posix.stat(directory)
    except FileNotFoundError:
        return "", f"no stop record: {directory} does not exist (no daemon ran since boot)"
    except OSError as exc:
        return "", f"no stop record: {directory}: {exc.strerror or exc}"
    path = f"{directory}/{STOP_RECORD_PREFIX}{op.ip}"
    temp = f"{directory}/.{STOP_RECORD_PREFIX}{op.ip}.{posix.getpid()}.{time.time_ns()}"
    record = {
        "ip": op.ip,
        "stopped_at": time.time(),
        "resource": op.resource or None,
        "node": op.node or None,
    }
    data = (json_dumps(record) + "\n").encode()
    try:
        fd = posix.open(
            temp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC, 0o644
        )
        try:
            while data:
                data = data[posix.write(fd, data) :]
            posix.fchmod(fd, 0o644)  # Pacemaker's umask (0026) would leave 0640
            if (owner.st_uid, owner.st_gid) != (posix.geteuid(), posix.getegid()):
                posix.fchown(fd, owner.st_uid, owner.st_gid)
            posix.fsync(fd)
        finally:
            posix.close(fd)
        posix.rename(temp, path)
        fsync_directory(directory)
    except OSError as exc:
        remove_quietly(temp)
        return "", f"no stop record: {exc.filename or path}: {exc.strerror or exc}"
    return path, f"stop recorded in {path} for the daemon's next start"


def fsync_directory(directory: str) -> None:
    fd = posix.open(directory, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


def remove_quietly(path: str) -> bool:
    """Remove a file if it is there; False when it could not be."""
    try:
        posix.unlink(path)
    except OSError:
        return False
    return True


# --- failures ---------------------------------------------------------------------------------


def bad_parameters(op: Operation, problem: str) -> int:
    if op.action == "stop":
        # A resource that cannot be configured cannot be running here: stop must not fail.
        warn(f"stop with invalid parameters ({problem}): nothing can run, assumed stopped")
        return OCF_SUCCESS
    # A probe too: the value is wrong on every node, and a fatal error says so at once
    # instead of a "not running" that would only fail later, at start.
    exit_reason(problem)
    return OCF_ERR_CONFIGURED


def failed_exchange(op: Operation, exc: Exception) -> int:
    """The exit code when no valid reply came back, and why, on stderr (never stop's)."""
    message = describe_failure(op, exc)
    unreachable = isinstance(exc, (Unreachable, TimeoutError))
    if op.probe and unreachable:
        warn(message + "; probe reports not running")
        return OCF_NOT_RUNNING
    exit_reason(message)
    if op.action == "validate-all" and unreachable:
        return OCF_ERR_INSTALLED
    return OCF_ERR_GENERIC


def describe_failure(op: Operation, exc: Exception) -> str:
    """What went wrong with the exchange, for a person."""
    if isinstance(exc, Unreachable):
        cause = exc.args[0]
        if isinstance(cause, TimeoutError):
            detail = f"connect timed out after {op.budget_s:.1f}s (listen backlog full?)"
        else:
            detail = cause.strerror or str(cause)
            if op.connect_attempts > 1:
                detail += f" (waited {time.monotonic() - op.began:.1f}s for the daemon)"
    elif isinstance(exc, TimeoutError):
        detail = (
            f"no answer to op={op.op} within {op.budget_s:.1f}s "
            "(daemon busy or hung? journalctl -u hafloatd)"
        )
    elif isinstance(exc, OSError):
        return f"hafloatd on {op.socket_path}: connection failed mid-request: {exc.strerror or exc}"
    else:  # ValueError from the parser, or anything unforeseen: never a traceback
        return f"hafloatd on {op.socket_path}: bad reply: {str(exc) or type(exc).__name__}"
    return (
        f"hafloatd control socket {op.socket_path} unreachable: {detail} "
        "(is hafloatd running? systemctl status hafloatd)"
    )


# --- JSON, through the interpreter's C accelerator ---------------------------------------------


class ReplyDecoding:
    """The settings the C JSON scanner reads from its context (json.JSONDecoder's attributes)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")


def _refuse(value: object) -> None:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# json.JSONEncoder's C fast path, set up as json.dumps(obj, separators=(",", ":")) does it.
_encode = _json.make_encoder(
    None, _refuse, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)
# typeshed types the context as a scanner; the C code only reads the attributes above.
_scan = _json.make_scanner(ReplyDecoding)  # type: ignore[arg-type]


def json_dumps(value: dict[str, object]) -> str:
    """A flat object as one line of ASCII JSON."""
    return "".join(_encode(value, 0))


def parse_reply(line: bytes) -> tuple[int, str]:
    """(ocf code, reason) from a reply line; ValueError when it is not a valid reply."""
    text = line.decode("utf-8").strip()
    if not text:
        raise ValueError("the connection closed without a reply")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError(f"the reply is not valid JSON: {text[:200]!r}") from None
    except SystemError:  # 3.11's C scanner, failing to build its own JSONDecodeError
        raise ValueError(f"the reply is not valid JSON: {text[:200]!r}") from None
    if type(value) is not dict or end != len(text):
        raise ValueError(f"the reply is not one JSON object: {text[:200]!r}")
    code = value.get("ocf")
    if type(code) is not int or not 0 <= code <= 9:
        raise ValueError(f"no 'ocf' code 0..9 in the reply: {text[:200]!r}")
    reason = value.get("reason") or ""
    return code, reason if type(reason) is str else str(reason)


# --- small helpers ----------------------------------------------------------------------------


def is_ipv4(text: str) -> bool:
    """A dotted quad as the C library reads it (no leading zeros, which some tools read as
    octal), never 0/8, loopback or multicast."""
    try:
        first = _socket.inet_pton(_socket.AF_INET, text)[0]
    except (OSError, ValueError):
        return False
    return 0 < first < 224 and first != 127


def split_timeout(timeout_ms: int) -> tuple[int, float]:
    """(deadline_ms for the daemon, the agent's own budget in s) for an op timeout in ms.

    The daemon gets the timeout minus max(500 ms, 10%), never less than half of it; the agent
    waits half that margin longer, so an answer sent at the deadline still arrives and the
    agent still exits before Pacemaker's own timeout.
    """
    margin_ms = min(max(MIN_MARGIN_MS, timeout_ms // 10), timeout_ms // 2)
    deadline_ms = min(timeout_ms - margin_ms, MAX_DEADLINE_MS)
    return deadline_ms, (deadline_ms + margin_ms // 2) / 1000.0


def env_text(environ: dict[bytes, bytes], key: bytes) -> str:
    value = environ.get(key)
    return value.decode("utf-8", "replace") if value else ""


def env_int(environ: dict[bytes, bytes], key: bytes) -> int:
    """A positive integer from the environment, else 0."""
    value = environ.get(key, b"")
    return int(value) if value.isdigit() else 0


def exit_reason(reason: str) -> None:
    prefix = env_text(posix.environ, b"OCF_EXIT_REASON_PREFIX") or "ocf-exit-reason:"
    sys.stderr.write(prefix + " ".join(reason.split()) + "\n")


def warn(message: str) -> None:
    sys.stderr.write(f"{AGENT_NAME}: WARNING: {' '.join(message.split())}\n")


# --- actions answered without the daemon ------------------------------------------------------


def local_action(action: str) -> int:
    """meta-data, usage, and unknown actions."""
    if action == "meta-data":
        sys.stdout.write(meta_data())
        return OCF_SUCCESS
    if action in ("usage", "help", "--help", "-h"):
        sys.stdout.write(usage())
        return OCF_SUCCESS
    sys.stderr.write(usage())
    if not action:
        return OCF_ERR_ARGS
    exit_reason(f"action {action!r} is not implemented by {AGENT_NAME}")
    return OCF_ERR_UNIMPLEMENTED


# (name, required, unique, type, default, shortdesc, longdesc)
PARAMETERS = (
    (
        "ip",
        1,
        1,
        "string",
        None,
        "Reserved IPv4 address",
        "The DigitalOcean reserved IPv4 address this resource moves, as a dotted quad (for "
        "example 203.0.113.10). It must be listed under ips: in the hafloatd configuration of "
        "every node that may run the resource.",
    ),
    (
        "socket",
        0,
        0,
        "string",
        DEFAULT_SOCKET,
        "hafloatd control socket",
        "Path of the hafloatd control socket (control.socket_path in the daemon's configuration).",
    ),
)

LONGDESC = """\
Moves a DigitalOcean reserved IPv4 address to the node that runs this resource, through the
hafloatd daemon. hafloatd must run on every node that may hold the IP (systemctl enable --now
hafloatd): it keeps a warm, authenticated session to the DigitalOcean API, assigns the IP on
start and succeeds only once the IP points at this droplet, and answers monitor from its own
state (who holds the IP, the local health probe) without any API call.

The API token is not a parameter of this resource and never enters the CIB: it lives in the
daemon's systemd credential (LoadCredential=do-token) or a root-only token file. This agent
only talks to the daemon's local control socket, and has nothing to do without it.

stop releases the role without an API call by default (the next start elsewhere moves the
IP, the fastest failover); set on_stop: unassign for the IP in the daemon's configuration to
unassign on stop.

Recommended: pcs resource create FloatIP ocf:hafloatd:hafloat ip=203.0.113.10
op monitor interval=10s timeout=20s op start timeout=20s op stop timeout=20s
meta resource-stickiness=100 migration-threshold=1
and colocate it with the web server clone:
pcs constraint colocation add FloatIP with nginx-clone INFINITY"""


def meta_data() -> str:
    params = "".join(
        f'  <parameter name="{name}" unique="{unique}" required="{required}">\n'
        f'    <longdesc lang="en">{xml_text(longdesc)}</longdesc>\n'
        f'    <shortdesc lang="en">{xml_text(shortdesc)}</shortdesc>\n'
        f'    <content type="{kind}"'
        + ("" if default is None else f' default="{xml_text(default)}"')
        + "/>\n  </parameter>\n"
        for name, required, unique, kind, default, shortdesc, longdesc in PARAMETERS
    )
    actions = "".join(
        f'  <action name="{name}" timeout="{timeout_s}s"'
        + (f' interval="{interval_s}s" depth="0"' if interval_s else "")
        + "/>\n"
        for name, (timeout_s, interval_s) in ACTIONS.items()
    )
    return (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">\n'
        f'<resource-agent name="{AGENT_NAME}" version="{AGENT_VERSION}">\n'
        "<version>1.0</version>\n"
        f'<longdesc lang="en">\n{xml_text(LONGDESC)}\n</longdesc>\n'
        '<shortdesc lang="en">DigitalOcean reserved IP moved by the hafloatd daemon</shortdesc>\n'
        f"<parameters>\n{params}</parameters>\n"
        f"<actions>\n{actions}</actions>\n"
        "</resource-agent>\n"
    )


def xml_text(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def usage() -> str:
    return (
        f"usage: {AGENT_NAME} {{{'|'.join(ACTIONS)}|usage}}\n\n"
        f"OCF resource agent (ocf:hafloatd:{AGENT_NAME}) for a DigitalOcean reserved IP moved\n"
        "by the hafloatd daemon. Parameters come from the environment, as Pacemaker sets them:\n"
        "  OCF_RESKEY_ip      the reserved IPv4 address (required)\n"
        f"  OCF_RESKEY_socket  the daemon's control socket (default {DEFAULT_SOCKET})\n"
    )
