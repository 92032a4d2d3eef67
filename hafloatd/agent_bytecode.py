"""The OCF agent module's cached bytecode, compiled by the agent's own interpreter.

A script run directly is compiled from source on every exec; a module imported from a
directory is not, when a valid ``__pycache__/<module>.<cache tag>.pyc`` sits beside it. The
agent runs under the system ``python3`` its launcher names, not the interpreter running
``hafloatd``, so that interpreter compiles it: its magic number and cache tag are the ones
its import system checks. Timestamp-validated (the default): if the module changes after
install, Python notices and compiles it again, as for any stale cache.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

# Run by the agent's interpreter: compile argv[1] to argv[2], naming it argv[3] in tracebacks;
# print the bytecode's file name in __pycache__ for that interpreter.
_COMPILE = (
    "import importlib.util, py_compile, sys; "
    "py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True, "
    "invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP); "
    "print(importlib.util.cache_from_source(sys.argv[3]).rpartition('/')[2])"
)
# magic number, flags, source mtime, source size (PEP 552)
PYC_HEADER_BYTES = 16
COMPILE_TIMEOUT_S = 60.0


class CompileError(Exception):
    """The interpreter could not compile the module (or could not be run)."""


def compile_module(interpreter: str, module: Path, shown_as: Path) -> tuple[str, bytes]:
    """Compile ``module`` with ``interpreter`` (run as the agent runs: ``-I -S``).

    ``shown_as`` is the module's path as the agent will see it (without an install root).
    Returns the bytecode's file name in ``__pycache__/`` and its content.
    """
    with tempfile.TemporaryDirectory(prefix="hafloatd-pyc-") as scratch:
        compiled = Path(scratch) / "module.pyc"
        argv = [interpreter, "-I", "-S", "-c", _COMPILE, str(module), str(compiled), str(shown_as)]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CompileError(f"cannot run {interpreter} to compile {module}: {exc}") from None
        name = result.stdout.strip()
        if result.returncode != 0 or not name or "/" in name:
            error = " ".join((result.stderr or result.stdout).split()[-30:])
            raise CompileError(f"{interpreter} could not compile {module}: {error}")
        return name, compiled.read_bytes()


def is_current(existing: bytes, fresh: bytes) -> bool:
    """Whether a cached bytecode file is valid wherever ``fresh`` (just compiled) is.

    The header decides, as for the import system: two compilations of one source may differ
    byte for byte after it (string hashing is randomised), and either is as good.
    """
    return len(existing) > PYC_HEADER_BYTES and (
        existing[:PYC_HEADER_BYTES] == fresh[:PYC_HEADER_BYTES]
    )
