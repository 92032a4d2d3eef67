"""fsutil.write_atomically: readers see the old file or the new one, never a part of either."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hafloatd.fsutil import make_dirs, write_atomically


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A strict umask, as under systemd's UMask=0077: modes must not depend on it."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _kind(fd: int) -> str:
    return "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"


def test_writes_the_content_with_exactly_the_mode(tmp_path: Path, umask_077: None) -> None:
    target = tmp_path / "role"
    write_atomically(target, b"started\n", mode=0o644)
    assert target.read_bytes() == b"started\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomically(target, b"stopped\n", mode=0o600)
    assert target.read_bytes() == b"stopped\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["role"]


def test_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "role"
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append(f"fsync {_kind(fd)}")
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        # The temp file is complete by the time it is renamed into place.
        steps.append(f"rename {Path(src).read_bytes()!r}")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomically(target, b"started\n")
    assert steps == ["fsync file", "rename b'started\\n'", "fsync dir"]


def test_the_temp_file_is_in_the_target_directory_and_uniquely_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same directory: the rename stays on one filesystem, so it is atomic."""
    target = tmp_path / "role"
    sources: list[Path] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        sources.append(Path(src))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    write_atomically(target, b"a")
    write_atomically(target, b"b")
    assert [s.parent for s in sources] == [tmp_path, tmp_path]
    assert sources[0] != sources[1]
    assert all(s.name.startswith(".role.") for s in sources)  # hidden, named after the target


@pytest.mark.parametrize("failing", ["write", "fchmod", "fsync", "rename"])
def test_a_failure_midway_keeps_the_previous_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "role"
    write_atomically(target, b"started\n", mode=0o600)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        class FullDisk:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._handle = real_fdopen(*args, **kwargs)

            def __enter__(self) -> FullDisk:
                return self

            def __exit__(self, *exc: object) -> None:
                self._handle.close()

            def write(self, data: bytes) -> int:
                self._handle.write(data[: len(data) // 2])  # half of it, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdopen", FullDisk)
    else:
        monkeypatch.setattr(os, {"rename": "replace"}.get(failing, failing), fail)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"stopped, and a longer line\n", mode=0o644)
    assert target.read_bytes() == b"started\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["role"]


def test_a_cancelled_writer_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BaseException too (KeyboardInterrupt, SystemExit in the thread): the temp goes."""
    target = tmp_path / "role"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, b"started\n")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_use_distinct_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both writers hold their temp file at once (each rename waits for the other writer to
    reach its own): with a shared temp name one would clobber or rename the other's."""
    target = tmp_path / "role"
    real_replace = os.replace
    both_written = threading.Barrier(2, timeout=10)
    temps: dict[str, bytes] = {}
    lock = threading.Lock()

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        with lock:
            temps[os.fspath(src)] = Path(src).read_bytes()
        both_written.wait()
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    errors: list[BaseException] = []

    def writer(content: bytes) -> None:
        try:
            write_atomically(target, content)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in (b"A" * 4096, b"B" * 4096)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(temps) == 2  # two distinct names
    assert sorted(temps.values()) == [b"A" * 4096, b"B" * 4096]  # neither clobbered the other
    assert target.read_bytes() in (b"A" * 4096, b"B" * 4096)
    assert [p.name for p in tmp_path.iterdir()] == ["role"]


def test_dir_mode_creates_missing_parents_with_exactly_that_mode(
    tmp_path: Path, umask_077: None
) -> None:
    target = tmp_path / "var" / "lib" / "hafloatd" / "role"
    write_atomically(target, b"started\n", dir_mode=0o755)
    assert target.read_bytes() == b"started\n"
    for directory in (tmp_path / "var", tmp_path / "var" / "lib", target.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory


def test_without_dir_mode_the_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "role", b"started\n")
    assert list(tmp_path.iterdir()) == []


def test_make_dirs_leaves_existing_directories_alone(tmp_path: Path) -> None:
    existing = tmp_path / "etc"
    existing.mkdir(mode=0o700)
    os.chmod(existing, 0o700)
    make_dirs(existing / "hafloatd", 0o755)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o700
    assert stat.S_IMODE((existing / "hafloatd").stat().st_mode) == 0o755
