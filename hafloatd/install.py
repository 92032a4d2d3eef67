"""``hafloatd install-agent``: put the OCF agent (and, on request, the unit) where they belong.

Installs from the files shipped inside the ``hafloatd`` package (``hafloatd/data``, read with
``importlib.resources``; in the source tree these are the top-level ``ocf/``, ``systemd/``
and ``config/`` directories), so a plain ``pip install`` is enough:

- always: the agent, as Pacemaker's OCF layout wants it: the launcher ``ocf/hafloat`` ->
  ``/usr/lib/ocf/resource.d/hafloatd/hafloat`` (0755) and the agent module
  ``ocf/hafloat_agent.py`` -> ``/usr/lib/ocf/lib/hafloatd/`` (0644), plus the module's
  bytecode, compiled by the interpreter the launcher names (so its magic number and cache
  tag match) into ``__pycache__/`` there;
- ``--unit``: ``systemd/hafloatd.service`` -> ``/etc/systemd/system/`` with every ``Exec*=``
  line that runs ``hafloatd`` rewritten to the ``hafloatd`` script of the running
  interpreter, plus the sysusers.d / tmpfiles.d snippets found in ``systemd/``;
- ``--config-example``: ``config/hafloatd.example.yaml`` -> ``/etc/hafloatd/`` (the live
  ``/etc/hafloatd/hafloatd.yaml`` is never written).

Each file is written through ``fsutil.write_atomically`` and only when its content or mode
changes (the bytecode: when it is not valid for the installed module), so the command is
idempotent. ``--root DIR`` installs under a prefix, ``--dry-run`` only says what it would do.
It never runs systemctl: it prints the next commands instead.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from hafloatd import agent_bytecode
from hafloatd.errors import HafloatdError
from hafloatd.fsutil import write_atomically

AGENT_SOURCE = "ocf/hafloat"
AGENT_MODULE_SOURCE = "ocf/hafloat_agent.py"
UNIT_SOURCE = "systemd/hafloatd.service"
CONFIG_EXAMPLE_SOURCE = "config/hafloatd.example.yaml"

AGENT_DEST = Path("usr/lib/ocf/resource.d/hafloatd/hafloat")
# $OCF_ROOT/lib/<provider>: where the launcher looks for the module (two levels up from it)
AGENT_MODULE_DEST = Path("usr/lib/ocf/lib/hafloatd/hafloat_agent.py")
UNIT_DEST = Path("etc/systemd/system/hafloatd.service")
SYSUSERS_DEST = Path("etc/sysusers.d/hafloatd.conf")
TMPFILES_DEST = Path("etc/tmpfiles.d/hafloatd.conf")
CONFIG_EXAMPLE_DEST = Path("etc/hafloatd/hafloatd.example.yaml")
CONFIG_DEST = Path("etc/hafloatd/hafloatd.yaml")

# Directories that systemd's ProtectHome=yes hides from the service.
_HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
# Prefix characters systemd allows before an Exec*= program path (systemd.service(5)).
_EXEC_PREFIXES = "@-:+!"
Action = Literal["install", "update", "unchanged"]


class InstallError(HafloatdError):
    """The install cannot proceed (source missing, bad destination); nothing was written."""


@dataclass(frozen=True)
class InstallFile:
    """One file to put in place: where from, where to, exactly what, and its mode."""

    source: str
    dest: Path
    content: bytes
    mode: int

    def action(self) -> Action:
        """What writing it would change on disk."""
        try:
            current = self.dest.read_bytes()
            current_mode = _mode(self.dest)
        except FileNotFoundError:
            return "install"
        if current == self.content and current_mode == self.mode:
            return "unchanged"
        return "update"


@dataclass(frozen=True)
class Bytecode:
    """The agent module's cached bytecode, compiled once the module is in place."""

    module: Path  # the installed module, under the root
    module_final: Path  # the same file as the agent will see it (without the root)
    interpreter: str  # the agent's interpreter, from the launcher's shebang


@dataclass(frozen=True)
class Plan:
    """Everything one run would do: the files, plus advice printed after them."""

    files: tuple[InstallFile, ...]
    warnings: tuple[str, ...]
    next_steps: tuple[str, ...]
    bytecode: Bytecode | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unit",
        action="store_true",
        help="also install the systemd unit (and the sysusers.d/tmpfiles.d snippets)",
    )
    parser.add_argument(
        "--config-example",
        action="store_true",
        help="also install config/hafloatd.example.yaml to /etc/hafloatd/",
    )
    parser.add_argument(
        "--all", action="store_true", help="the agent, the unit and the example config"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="install under this prefix instead of / (packaging, tests)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be done, change nothing"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        metavar="DIR",
        help="a tree holding ocf/, systemd/ and config/ (default: the files shipped in the "
        "installed hafloatd package)",
    )
    parser.add_argument(
        "--hafloatd-bin",
        type=Path,
        default=None,
        metavar="PATH",
        help="the hafloatd executable the unit runs (default: next to the running interpreter)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        source: Traversable = args.source if args.source is not None else packaged_files()
        want_unit = bool(args.unit or args.all)
        hafloatd_bin: Path | None = None
        if want_unit:
            hafloatd_bin = args.hafloatd_bin or default_hafloatd_bin()
        plan = make_plan(
            root=args.root,
            source=source,
            unit=want_unit,
            config_example=bool(args.config_example or args.all),
            hafloatd_bin=hafloatd_bin,
        )
        lines, warnings = apply_plan(plan, dry_run=bool(args.dry_run))
        for line in lines:
            print(line)
    except (InstallError, OSError) as exc:
        print(f"hafloatd install-agent: error: {_describe(exc)}", file=sys.stderr)
        return 1
    for warning in (*plan.warnings, *warnings):
        print(f"warning: {warning}", file=sys.stderr)
    for step in plan.next_steps:
        print(f"next: {step}")
    return 0


def packaged_files() -> Traversable:
    """The agent, unit, snippets and example config shipped in the package (``hafloatd/data``:
    ``ocf/``, ``systemd/``, ``config/``)."""
    data = importlib.resources.files("hafloatd").joinpath("data")
    if not data.joinpath(AGENT_SOURCE).is_file():
        raise InstallError(
            f"the installed hafloatd package has no data/{AGENT_SOURCE} ({data}): reinstall "
            "hafloatd, or pass --source DIR (a tree holding ocf/, systemd/ and config/)"
        )
    return data


def default_hafloatd_bin() -> Path:
    """The ``hafloatd`` console script of the running interpreter (venv or system)."""
    beside = Path(sys.executable).parent / "hafloatd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("hafloatd")
    if found:
        return Path(found).absolute()
    raise InstallError(
        f"no hafloatd executable next to {sys.executable} or on PATH: pass --hafloatd-bin PATH"
    )


def make_plan(
    *,
    root: Path,
    source: Traversable,
    unit: bool,
    config_example: bool,
    hafloatd_bin: Path | None,
) -> Plan:
    """Read every source file and decide every destination; write nothing."""
    files: list[InstallFile] = []
    warnings: list[str] = []
    next_steps: list[str] = []

    launcher = _read(source, AGENT_SOURCE)
    module = _read(source, AGENT_MODULE_SOURCE)
    files.append(_file(source, AGENT_SOURCE, _dest(root, AGENT_DEST), launcher, 0o755))
    files.append(_file(source, AGENT_MODULE_SOURCE, _dest(root, AGENT_MODULE_DEST), module, 0o644))
    interpreter = _shebang_interpreter(launcher)
    bytecode: Bytecode | None = None
    if interpreter and Path(interpreter).is_file():
        bytecode = Bytecode(
            _dest(root, AGENT_MODULE_DEST), Path("/") / AGENT_MODULE_DEST, interpreter
        )
    elif _is_real_root(root):
        warnings.append(
            f"the agent runs {interpreter or '(no shebang)'}, which does not exist on this host: "
            "install python3 (apt-get install python3)"
        )
    else:
        warnings.append(
            f"{interpreter or '(no shebang)'} is not on this host: the agent module is not "
            "compiled, so the agent compiles it on every run"
        )

    if unit:
        if hafloatd_bin is None:
            raise InstallError("--unit needs the hafloatd executable: pass --hafloatd-bin PATH")
        unit_text = _read(source, UNIT_SOURCE).decode("utf-8")
        rewritten = rewrite_exec_paths(unit_text, hafloatd_bin)
        files.append(_file(source, UNIT_SOURCE, _dest(root, UNIT_DEST), rewritten.encode(), 0o644))
        warnings.extend(executable_warnings(hafloatd_bin, rewritten))
        for snippet, dest, kind in _snippets(source):
            name = f"systemd/{snippet.name}"
            files.append(_file(source, name, _dest(root, dest), snippet.read_bytes(), 0o644))
            if kind == "sysusers":
                next_steps.append(f"systemd-sysusers /{dest}")
            else:
                next_steps.append(f"systemd-tmpfiles --create /{dest}")
        next_steps.append("systemctl daemon-reload && systemctl enable --now hafloatd")

    if config_example:
        example = _read(source, CONFIG_EXAMPLE_SOURCE)
        dest = _dest(root, CONFIG_EXAMPLE_DEST)
        files.append(_file(source, CONFIG_EXAMPLE_SOURCE, dest, example, 0o644))
        if not _dest(root, CONFIG_DEST).exists():
            next_steps.insert(
                0,
                f"cp /{CONFIG_EXAMPLE_DEST} /{CONFIG_DEST}, set ips: to your reserved IPs, "
                f"then hafloatd check-config /{CONFIG_DEST}",
            )
    if unit or config_example:
        next_steps.append(
            "put the DigitalOcean token in /etc/hafloatd/do-token (root-only, 0600): "
            "the unit's LoadCredential= hands it to the daemon"
        )
    return Plan(tuple(files), tuple(warnings), tuple(next_steps), bytecode)


def apply_plan(plan: Plan, *, dry_run: bool) -> tuple[list[str], list[str]]:
    """Write the plan's files (unless ``dry_run``), then compile the agent module.

    Returns one line per file saying what happened, and warnings.
    """
    lines: list[str] = []
    module_changes = False
    for item in plan.files:
        action = item.action()
        verb = {"install": "installed", "update": "updated", "unchanged": "unchanged"}[action]
        if dry_run:
            verb = {"install": "would install", "update": "would update"}.get(action, verb)
        elif action != "unchanged":
            write_atomically(item.dest, item.content, mode=item.mode, dir_mode=0o755)
        if plan.bytecode is not None and item.dest == plan.bytecode.module:
            module_changes = action != "unchanged"
        lines.append(f"{verb} {item.dest} ({item.mode:04o}) from {item.source}")
    warnings: list[str] = []
    if plan.bytecode is not None:
        if dry_run and module_changes:
            lines.append(f"would compile {plan.bytecode.module} with {plan.bytecode.interpreter}")
        else:
            try:
                lines.append(install_bytecode(plan.bytecode, dry_run=dry_run))
            except InstallError as exc:
                # The agent still works: Python compiles a module whose cache is missing.
                warnings.append(f"{exc}; the agent compiles its module on every run instead")
    return lines, warnings


def install_bytecode(bytecode: Bytecode, *, dry_run: bool) -> str:
    """Compile the installed module with the agent's interpreter; put the result in its
    ``__pycache__`` unless the one there is already valid for this module and interpreter."""
    try:
        name, content = agent_bytecode.compile_module(
            bytecode.interpreter, bytecode.module, bytecode.module_final
        )
    except agent_bytecode.CompileError as exc:
        raise InstallError(str(exc)) from None
    dest = bytecode.module.parent / "__pycache__" / name
    try:
        current = dest.read_bytes()
    except FileNotFoundError:
        action: Action = "install"
    else:
        valid = agent_bytecode.is_current(current, content)
        action = "unchanged" if valid and _mode(dest) == 0o644 else "update"
    verb = {"install": "installed", "update": "updated", "unchanged": "unchanged"}[action]
    if dry_run:
        verb = {"install": "would install", "update": "would update"}.get(action, verb)
    elif action != "unchanged":
        write_atomically(dest, content, mode=0o644, dir_mode=0o755)
    return f"{verb} {dest} (0644) compiled by {bytecode.interpreter}"


def rewrite_exec_paths(unit_text: str, executable: Path) -> str:
    """The unit with each ``Exec*=`` line that runs ``hafloatd`` pointed at ``executable``.

    Prefix characters (``-``, ``+``, ``!``...) and arguments are kept; other commands (such
    as ``/bin/kill`` in ``ExecReload=``) are left alone.
    """
    if not executable.is_absolute():
        raise InstallError(f"the hafloatd executable must be an absolute path, got {executable}")
    if any(ch.isspace() for ch in str(executable)):
        raise InstallError(f"the hafloatd executable path contains whitespace: {executable}")
    out: list[str] = []
    rewritten = 0
    for line in unit_text.splitlines(keepends=True):
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("Exec") and not line.lstrip().startswith("#"):
            stripped = value.lstrip()
            prefix_len = len(stripped) - len(stripped.lstrip(_EXEC_PREFIXES))
            prefix, command = stripped[:prefix_len], stripped[prefix_len:]
            words = command.rstrip("\r\n").split(None, 1)
            if words and Path(words[0]).name == "hafloatd":
                arguments = f" {words[1]}" if len(words) > 1 else ""
                ending = line[len(line.rstrip("\r\n")) :]
                out.append(f"{key.strip()}={prefix}{executable}{arguments}{ending}")
                rewritten += 1
                continue
        out.append(line)
    if rewritten == 0:
        raise InstallError("the unit has no ExecStart= line running hafloatd to rewrite")
    return "".join(out)


def executable_warnings(executable: Path, unit_text: str) -> list[str]:
    """Problems that would stop the service from executing ``executable`` (203/EXEC)."""
    warnings: list[str] = []
    if not executable.is_file():
        warnings.append(f"{executable} does not exist (yet): the unit will fail to start")
        return warnings
    protect_home = _unit_setting(unit_text, "ProtectHome")
    candidates = [executable, *_script_interpreter(executable)]
    for path in candidates:
        if protect_home in ("yes", "true", "tmpfs") and any(
            path == home or home in path.parents for home in _HOME_DIRS
        ):
            warnings.append(
                f"{path} is under {', '.join(str(h) for h in _HOME_DIRS)}, which the unit's "
                f"ProtectHome={protect_home} hides from the service: install hafloatd outside "
                "them (for example python3 -m venv /opt/hafloatd)"
            )
            break
    user = _unit_setting(unit_text, "User")
    if user not in (None, "", "root", "0"):
        for path in candidates:
            closed = _first_closed_dir(path)
            if closed is not None:
                warnings.append(
                    f"{closed} is not searchable by other users, so User={user} cannot run "
                    f"{path}: chmod o+x {closed} or install hafloatd elsewhere"
                )
                break
    return warnings


def _snippets(source: Traversable) -> list[tuple[Traversable, Path, str]]:
    """The sysusers.d / tmpfiles.d snippets present in ``systemd/`` (any naming)."""
    found: list[tuple[Traversable, Path, str]] = []
    systemd_dir = source.joinpath("systemd")
    if not systemd_dir.is_dir():
        return found
    entries = sorted((p for p in systemd_dir.iterdir() if p.is_file()), key=lambda p: p.name)
    for kind, dest in (("sysusers", SYSUSERS_DEST), ("tmpfiles", TMPFILES_DEST)):
        matches = [p for p in entries if kind in p.name.lower()]
        if len(matches) > 1:
            names = ", ".join(f"systemd/{p.name}" for p in matches)
            raise InstallError(f"more than one {kind} snippet in {systemd_dir}: {names}")
        if matches:
            found.append((matches[0], dest, kind))
    return found


def _read(source: Traversable, relative: str) -> bytes:
    try:
        return source.joinpath(relative).read_bytes()
    except FileNotFoundError:
        raise InstallError(f"{relative} is missing from the source tree {source}") from None


def _file(source: Traversable, relative: str, dest: Path, content: bytes, mode: int) -> InstallFile:
    return InstallFile(str(source.joinpath(relative)), dest, content, mode)


def _dest(root: Path, relative: Path) -> Path:
    if not root.is_absolute():
        root = root.absolute()
    return root / relative


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _is_real_root(root: Path) -> bool:
    return root.absolute() == Path("/")


def _shebang_interpreter(script: bytes) -> str:
    first = script.split(b"\n", 1)[0]
    if not first.startswith(b"#!"):
        return ""
    words = first[2:].decode("utf-8", "replace").split()
    return words[0] if words else ""


def _script_interpreter(executable: Path) -> Iterable[Path]:
    try:
        with executable.open("rb") as script:
            interpreter = _shebang_interpreter(script.readline())
    except OSError:
        return ()
    return (Path(interpreter),) if interpreter.startswith("/") else ()


def _unit_setting(unit_text: str, key: str) -> str | None:
    value: str | None = None
    for line in unit_text.splitlines():
        name, sep, rest = line.partition("=")
        if sep and name.strip() == key:
            value = rest.strip()  # the last assignment wins, as in systemd
    return value


def _first_closed_dir(path: Path) -> Path | None:
    for directory in reversed(path.parents):
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return directory
        except OSError:
            return directory
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)
