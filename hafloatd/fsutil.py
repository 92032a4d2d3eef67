"""Small files written so a crash never leaves half of one: the one atomic-write helper.

Role files, the identity cache and installed files all go through ``write_atomically``:
a uniquely named temporary file in the target's directory (two writers never share one),
written, fsync'd, given its mode, renamed over the target, then the directory fsync'd so the
rename itself survives a power cut. Synchronous: callers on the event loop run it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(
    path: str | os.PathLike[str],
    content: bytes,
    *,
    mode: int = 0o644,
    dir_mode: int | None = None,
) -> None:
    """Replace ``path`` with ``content`` in one step; readers see the old or the new file.

    ``dir_mode``: create missing parent directories with this mode (None: they must exist).
    Raises OSError; on failure the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    directory = target.parent
    if dir_mode is not None:
        make_dirs(directory, dir_mode)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_dirs(directory: str | os.PathLike[str], mode: int) -> None:
    """Create ``directory`` and missing parents with exactly ``mode`` (not umasked)."""
    missing: list[Path] = []
    for parent in (Path(directory), *Path(directory).parents):
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=mode)
            os.chmod(parent, mode)
