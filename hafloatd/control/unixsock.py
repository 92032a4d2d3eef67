"""The control socket on the filesystem: its directory, its creation, its removal.

The lookups and filesystem calls here block (NSS may ask the network): the server runs them
in a worker thread (``asyncio.to_thread``); ``refuse_if_live`` is the one coroutine.

Socket creation never changes the process umask: the socket is bound under a temporary name
inside its 0750 directory, given its mode and group, and only renamed onto the public path
once it listens (``bind_private`` then ``publish``), so no client ever sees it with the wrong
permissions. A socket is identified by ``(st_dev, st_ino)``, so the server never removes or
re-permissions one that another process made.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable, Iterable

from hafloatd.control.protocol import PeerCred
from hafloatd.errors import ControlError

log = logging.getLogger("hafloatd.control")

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL
_LIVENESS_TIMEOUT_S = 1.0

SocketIdentity = tuple[int, int]  # (st_dev, st_ino) of the socket file this server created


def check_socket_path(path: str) -> None:
    """Raise ControlError when ``path`` cannot be a Unix socket path (no I/O)."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ControlError(
            f"control.socket_path {path!r} is {len(os.fsencode(path))} bytes; Unix socket "
            f"paths are limited to {SUN_PATH_MAX}: choose a shorter path"
        )
    if not os.path.isabs(path):
        raise ControlError(f"control.socket_path {path!r} must be an absolute path")


def resolve_peers(
    allowed_users: Iterable[str | int], allowed_groups: Iterable[str | int]
) -> tuple[frozenset[int], frozenset[int]]:
    """The uids and gids allowed to connect; unknown names are skipped with a warning."""
    uids: set[int] = set()
    for user in allowed_users:
        uid = _lookup_id(user, "control.allowed_users", lambda n: pwd.getpwnam(n).pw_uid)
        if uid is not None:
            uids.add(uid)
    gids: set[int] = set()
    for group in allowed_groups:
        gid = _lookup_id(group, "control.allowed_groups", lambda n: grp.getgrnam(n).gr_gid)
        if gid is not None:
            gids.add(gid)
    if not uids and not gids:
        log.warning(
            "event=control_no_allowed_peers reason='no allowed user or group resolved: every "
            "client will be refused' hint='set control.allowed_users'"
        )
    elif 0 not in uids:
        log.warning(
            "event=control_root_not_allowed hint='pacemaker-execd runs the OCF agent as root; add "
            "root to control.allowed_users'"
        )
    return frozenset(uids), frozenset(gids)


def resolve_group(group: str | None) -> int | None:
    """The socket's group id, or None (keep the daemon's group) when there is none."""
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning(
            "event=control_group_missing group=%s action='socket keeps the daemon group' "
            "hint='create the group or set control.group'",
            group,
        )
        return None


def prepare_directory(directory: str, group_gid: int | None) -> None:
    """Create the socket's directory 0750, or check that an existing one is safe."""
    try:
        os.mkdir(directory, 0o750)
    except FileExistsError:
        st = os.stat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise ControlError(
                f"{directory} exists and is not a directory: fix control.socket_path"
            ) from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o002 and not mode & stat.S_ISVTX:
            raise ControlError(
                f"socket directory {directory} is world-writable (mode {mode:04o}): anyone "
                f"could replace the socket; use a 0750 directory"
            ) from None
        if mode & 0o007:
            log.warning(
                "event=control_dir_open path=%s mode=%04o hint='expected 0750'", directory, mode
            )
        return
    except FileNotFoundError:
        raise ControlError(
            f"cannot create socket directory {directory}: its parent does not exist"
        ) from None
    except PermissionError:
        raise ControlError(
            f"cannot create socket directory {directory}: permission denied (run as root or "
            f"create it with RuntimeDirectory=)"
        ) from None
    os.chmod(directory, 0o750)  # noqa: S103  (group may traverse; mkdir's mode is umasked)
    if group_gid is not None:
        _chown_group(directory, group_gid)
    log.info("event=control_dir_created path=%s mode=0750", directory)


def bind_private(path: str, mode: int, group_gid: int | None) -> tuple[socket.socket, str]:
    """A non-blocking socket bound under a temporary name next to ``path``, mode and group set.

    Returns the socket and its temporary path; ``publish`` renames it onto ``path``.
    """
    directory, name = os.path.split(path)
    temp_path = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    if len(os.fsencode(temp_path)) > SUN_PATH_MAX:
        temp_path = os.path.join(directory, f".h{os.getpid()}")
    if len(os.fsencode(temp_path)) > SUN_PATH_MAX:
        raise ControlError(
            f"control.socket_path directory {directory!r} is too long for a Unix socket: "
            f"choose a shorter path"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp_path)  # left by an earlier run that crashed with the same pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temp_path)
        os.chmod(temp_path, mode)
        if group_gid is not None:
            _chown_group(temp_path, group_gid)
        sock.setblocking(False)
    except BaseException as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        if isinstance(exc, OSError):
            raise ControlError(
                f"cannot create control socket in {directory}: {exc.strerror}"
            ) from None
        raise
    return sock, temp_path


def publish(temp_path: str, path: str) -> SocketIdentity:
    """Rename the listening socket onto its public path; return its identity."""
    os.rename(temp_path, path)  # atomic: replaces a stale socket, never exposes a half-made one
    st = os.stat(path)
    return st.st_dev, st.st_ino


def apply_socket_permissions(
    path: str, identity: SocketIdentity, mode: int, group_gid: int | None
) -> None:
    """Re-apply mode and group (on reload), only to the socket this server created."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        log.warning(
            "event=control_socket_missing path=%s hint='restart hafloatd to recreate it'", path
        )
        return
    if (st.st_dev, st.st_ino) != identity:
        log.warning("event=control_socket_replaced path=%s action='permissions not changed'", path)
        return
    os.chmod(path, mode)
    if group_gid is not None:
        _chown_group(path, group_gid)


def unlink_if_ours(path: str, identity: SocketIdentity) -> None:
    """Remove the socket file unless another process has replaced it since."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) != identity:
        log.info("event=control_socket_kept path=%s reason='replaced by another process'", path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def refuse_if_live(path: str) -> None:
    """Raise ControlError when ``path`` is not a socket or another process listens on it.

    A socket nobody listens on (left by a crash) is fine: ``publish`` replaces it.
    """
    try:
        st = await asyncio.to_thread(os.lstat, path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(
            f"{path} exists and is not a socket: remove it or set control.socket_path"
        )
    try:
        async with asyncio.timeout(_LIVENESS_TIMEOUT_S):
            _reader, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("event=control_socket_stale path=%s action=replacing", path)
        return
    except TimeoutError:
        raise ControlError(
            f"{path} accepts connections but does not complete them: another hafloatd may be "
            f"running; stop it or set control.socket_path"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot check existing socket {path}: {exc.strerror}") from None
    try:
        peer = PeerCred.from_socket(writer.get_extra_info("socket"))
        who = f"pid={peer.pid}"
    except (OSError, AttributeError, struct.error):
        who = "pid unknown"
    finally:
        writer.close()
    raise ControlError(
        f"another process ({who}) is listening on {path}: stop the other hafloatd or set "
        f"control.socket_path"
    )


def _lookup_id(name: str | int, key: str, lookup: Callable[[str], int]) -> int | None:
    if isinstance(name, int):
        return name
    if name.isdigit():
        return int(name)
    try:
        return int(lookup(name))
    except KeyError:
        log.warning("event=control_unknown_name key=%s name=%s action=skipped", key, name)
        return None


def _chown_group(path: str, gid: int) -> None:
    if os.stat(path).st_gid == gid:
        return  # already right (under the unit, Group=haclient): chown is filtered there
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.warning(
            "event=control_chgrp_failed path=%s gid=%d reason='permission denied' "
            "hint='run as root or as a member of the group'",
            path,
            gid,
        )
