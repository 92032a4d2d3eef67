"""The DigitalOcean API token: where it comes from and how it is kept out of sight.

Sources, strongest first (``api.token_source``):

- ``credential``: ``$CREDENTIALS_DIRECTORY/do-token`` (systemd ``LoadCredential=``).
- ``file``: ``api.token_file``, a regular file owned by root or by the daemon's own user
  (its effective uid) and readable by its owner only (``chmod 600``): any other owner could
  rewrite the token the daemon trusts, or read it back.
- ``env``: ``$HAFLOATD_DO_TOKEN`` (weakest: the environment leaks into /proc and crash dumps).
- ``auto``: credential, then ``api.token_file`` when set, then the environment.

The credential is not checked for owner or mode: systemd creates it, private to the unit
(owned by root or the service user, readable by the unit only), in a directory only the
unit can reach.

The secret lives in an ``ApiToken`` whose ``repr``/``str`` are masked; only ``reveal()`` gives it
out, and only the API client calls that. Errors name the config key and the source, never the
token itself. Reading is synchronous: it happens once at startup (and on reload) before the
daemon serves anything; callers inside a running loop use ``asyncio.to_thread(load_token, ...)``.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from hafloatd.config import CREDENTIAL_NAME, TOKEN_ENV_VAR, ApiConfig
from hafloatd.errors import TokenError

# A DigitalOcean token is ~71 characters; anything far larger is a wrong file, not a token.
MAX_TOKEN_BYTES = 4096


class ApiToken:
    """A secret API token; printing, logging or repr'ing it shows ``ApiToken(***)``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise TokenError("api token: empty token")
        self._secret = secret

    def reveal(self) -> str:
        """The secret itself: only for the Authorization header."""
        return self._secret

    def __repr__(self) -> str:
        return "ApiToken(***)"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ApiToken):
            return NotImplemented
        return self._secret == other._secret

    def __hash__(self) -> int:
        return hash(self._secret)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the secret wherever the pickle goes; refuse.
        raise TypeError("ApiToken cannot be pickled")


@dataclass(frozen=True)
class LoadedToken:
    """The token and a description of where it came from (``file:/etc/hafloatd/do-token``)."""

    token: ApiToken
    source: str


def load_token(api: ApiConfig, environ: Mapping[str, str]) -> LoadedToken:
    """Load the token from ``api.token_source``; raise TokenError naming the key and source."""
    source = api.token_source
    if source == "credential":
        loaded = _from_credential(environ, required=True)
    elif source == "file":
        if not api.token_file:
            raise TokenError("api.token_file: required when api.token_source is 'file'")
        loaded = _from_file(api.token_file, key="api.token_file")
    elif source == "env":
        loaded = _from_env(environ, required=True)
    elif source == "auto":
        loaded = _auto(api, environ)
    else:
        raise TokenError(
            f"api.token_source: unknown source {source!r}; use auto, credential, file or env"
        )
    assert loaded is not None  # required=True sources raise instead of returning None
    return loaded


def _auto(api: ApiConfig, environ: Mapping[str, str]) -> LoadedToken:
    loaded = _from_credential(environ, required=False)
    if loaded is not None:
        return loaded
    if api.token_file:
        # A configured file that is missing or insecure is an error, not a reason to fall
        # through to the weaker environment variable.
        return _from_file(api.token_file, key="api.token_file")
    loaded = _from_env(environ, required=False)
    if loaded is not None:
        return loaded
    raise TokenError(
        "api.token_source: no DigitalOcean token found (auto): provide the systemd credential "
        f"{CREDENTIAL_NAME!r} (LoadCredential={CREDENTIAL_NAME}:/etc/hafloatd/{CREDENTIAL_NAME}), "
        f"or set api.token_file, or export {TOKEN_ENV_VAR}"
    )


def _from_credential(environ: Mapping[str, str], *, required: bool) -> LoadedToken | None:
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        if not required:
            return None
        raise TokenError(
            "api.token_source: 'credential' but $CREDENTIALS_DIRECTORY is not set; run under "
            f"systemd with LoadCredential={CREDENTIAL_NAME}:/etc/hafloatd/{CREDENTIAL_NAME}"
        )
    path = os.path.join(directory, CREDENTIAL_NAME)
    if not required and not os.path.lexists(path):
        return None
    # systemd owns the credential directory's permissions (0400/0500, private to the unit).
    secret = _read_secret(path, key="api.token_source (credential)", check_access=False)
    return LoadedToken(ApiToken(secret), f"credential:{path}")


def _from_file(path: str, *, key: str) -> LoadedToken:
    secret = _read_secret(path, key=key, check_access=True)
    return LoadedToken(ApiToken(secret), f"file:{path}")


def _from_env(environ: Mapping[str, str], *, required: bool) -> LoadedToken | None:
    if TOKEN_ENV_VAR not in environ:
        if not required:
            return None
        raise TokenError(f"api.token_source: 'env' but ${TOKEN_ENV_VAR} is not set")
    secret = environ[TOKEN_ENV_VAR].strip()
    _check_secret(secret, key="api.token_source (env)", where=f"${TOKEN_ENV_VAR}")
    return LoadedToken(ApiToken(secret), f"env:{TOKEN_ENV_VAR}")


def _read_secret(path: str, *, key: str, check_access: bool) -> str:
    """Open without following a FIFO or device, check what it is, then read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TokenError(f"{key}: {path} does not exist") from None
    except PermissionError:
        raise TokenError(
            f"{key}: {path} is not readable by {_describe_user(os.geteuid())}, the daemon's "
            f"user; make that user its owner and keep it private: run "
            f"{_chown_command(path)} && chmod 600 {path}"
        ) from None
    except OSError as exc:
        raise TokenError(f"{key}: cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"{key}: {path} is not a regular file; point it at a file")
        if check_access:
            _check_owner_and_mode(info, path, key=key)
        if info.st_size > MAX_TOKEN_BYTES:
            raise TokenError(
                f"{key}: {path} is {info.st_size} bytes, too large for an API token; "
                "it should hold only the token"
            )
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise TokenError(f"{key}: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenError(f"{key}: {path} is not UTF-8 text; it must hold only the token") from None
    _check_secret(secret, key=key, where=path)
    return secret


def _check_owner_and_mode(info: os.stat_result, path: str, *, key: str) -> None:
    """Owned by root or the daemon's user, and private to its owner; else the fix to run."""
    group_or_world = info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    chmod = f"chmod 600 {path}"
    if info.st_uid not in (0, os.geteuid()):
        owners = "root" if os.geteuid() == 0 else f"root or {_describe_user(os.geteuid())}"
        raise TokenError(
            f"{key}: {path} is owned by {_describe_user(info.st_uid)}, not by {owners} (the "
            f"daemon's user): that user could change or read the token; refusing to use it: "
            f"run {_chown_command(path)}" + (f" && {chmod}" if group_or_world else "")
        )
    if group_or_world:
        mode = stat.S_IMODE(info.st_mode)
        raise TokenError(
            f"{key}: {path} is accessible by group or others (mode {mode:04o}); "
            f"refusing to use it: run {chmod}"
        )


def _chown_command(path: str) -> str:
    """The chown that gives ``path`` to the daemon's user: root, or the service user."""
    euid = os.geteuid()
    if euid == 0:
        return f"chown root:root {path}"
    return f"chown {_user_name(euid) or euid} {path}"


def _describe_user(uid: int) -> str:
    name = _user_name(uid)
    return f"uid {uid} ({name})" if name else f"uid {uid}"


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _check_secret(secret: str, *, key: str, where: str) -> None:
    """Reject what cannot be a token; the message describes the problem, never the content."""
    if not secret:
        raise TokenError(f"{key}: {where} is empty; it must hold the DigitalOcean API token")
    # Printable ASCII without spaces: anything else is a wrong file and would corrupt the
    # Authorization header.
    if not all("!" <= ch <= "~" for ch in secret):
        raise TokenError(
            f"{key}: {where} holds spaces, several lines or non-ASCII characters; "
            "it must hold only the token"
        )
