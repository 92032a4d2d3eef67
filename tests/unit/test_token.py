"""Token loading: each source, the auto order, permission refusal, and the secret never shown."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest

from hafloatd.config import ApiConfig
from hafloatd.errors import TokenError
from hafloatd.token import ApiToken, LoadedToken, load_token

SECRET = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
OTHER_SECRET = "dop_v1_ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"


def _write(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


@pytest.fixture
def cred_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    return directory


def test_repr_str_and_format_mask_the_secret() -> None:
    token = ApiToken(SECRET)
    assert repr(token) == "ApiToken(***)"
    assert str(token) == "ApiToken(***)"
    assert f"{token}" == "ApiToken(***)"
    assert SECRET not in repr(LoadedToken(token, "env:HAFLOATD_DO_TOKEN"))
    assert token.reveal() == SECRET


def test_token_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(ApiToken(SECRET))


def test_token_does_not_leak_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("hafloatd.test").info("token=%s obj=%r", ApiToken(SECRET), ApiToken(SECRET))
    assert SECRET not in caplog.text
    assert "ApiToken(***)" in caplog.text


def test_credential_source_reads_credentials_directory(cred_dir: Path) -> None:
    _write(cred_dir / "do-token", SECRET + "\n", mode=0o400)
    loaded = load_token(
        ApiConfig(token_source="credential"), {"CREDENTIALS_DIRECTORY": str(cred_dir)}
    )
    assert loaded.token.reveal() == SECRET
    assert loaded.source == f"credential:{cred_dir}/do-token"


def test_credential_source_without_credentials_directory_says_how_to_configure() -> None:
    with pytest.raises(TokenError, match=r"CREDENTIALS_DIRECTORY is not set.*LoadCredential="):
        load_token(ApiConfig(token_source="credential"), {})


def test_credential_source_with_missing_file_is_an_error(cred_dir: Path) -> None:
    with pytest.raises(TokenError, match="does not exist"):
        load_token(ApiConfig(token_source="credential"), {"CREDENTIALS_DIRECTORY": str(cred_dir)})


def test_file_source_reads_owner_only_file_and_strips_whitespace(tmp_path: Path) -> None:
    path = _write(tmp_path / "do-token", f"  {SECRET}\n\n")
    loaded = load_token(ApiConfig(token_source="file", token_file=str(path)), {})
    assert loaded.token.reveal() == SECRET
    assert loaded.source == f"file:{path}"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_file_source_refuses_group_or_world_accessible_file_with_chmod_hint(
    tmp_path: Path, mode: int
) -> None:
    path = _write(tmp_path / "do-token", SECRET, mode=mode)
    with pytest.raises(TokenError) as info:
        load_token(ApiConfig(token_source="file", token_file=str(path)), {})
    message = str(info.value)
    assert message.startswith("api.token_file: ")
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message
    assert SECRET not in message


def test_file_source_accepts_read_only_owner_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "do-token", SECRET, mode=0o400)
    assert load_token(ApiConfig(token_source="file", token_file=str(path)), {}).token == ApiToken(
        SECRET
    )


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to other users")
NOBODY = 65534
DAEMON_UID = 1  # Debian's "daemon": a third user, neither root nor nobody
REPO = Path(__file__).resolve().parents[2]


@needs_root
@pytest.mark.needs_root
def test_file_owned_by_another_user_is_refused_with_the_chown_to_run(tmp_path: Path) -> None:
    path = _write(tmp_path / "do-token", SECRET, mode=0o600)
    os.chown(path, NOBODY, NOBODY)

    with pytest.raises(TokenError) as info:
        load_token(ApiConfig(token_source="file", token_file=str(path)), {})

    message = str(info.value)
    assert message.startswith(f"api.token_file: {path} is owned by uid {NOBODY} (nobody)")
    assert message.endswith(f"run chown root:root {path}")
    assert SECRET not in message


@needs_root
@pytest.mark.needs_root
def test_file_with_wrong_owner_and_mode_gets_both_fixes(tmp_path: Path) -> None:
    path = _write(tmp_path / "do-token", SECRET, mode=0o644)
    os.chown(path, NOBODY, NOBODY)

    with pytest.raises(TokenError) as info:
        load_token(ApiConfig(token_source="auto", token_file=str(path)), {})

    assert str(info.value).endswith(f"run chown root:root {path} && chmod 600 {path}")


# A daemon running as a service user (not root), as a real process: prints the outcome.
LOAD_AS_SERVICE_USER = """
import sys
from hafloatd.config import ApiConfig
from hafloatd.errors import TokenError
from hafloatd.token import load_token
try:
    loaded = load_token(ApiConfig(token_source="file", token_file=sys.argv[1]), {})
except TokenError as exc:
    print("refused:", exc)
else:
    print("loaded:", loaded.source)
"""


def _load_as_nobody(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AS_SERVICE_USER, str(path)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture
def shared_dir() -> typing.Iterator[Path]:
    """A directory the service user can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="hafloatd-token-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@needs_root
@pytest.mark.needs_root
def test_service_user_accepts_its_own_file(shared_dir: Path) -> None:
    path = _write(shared_dir / "do-token", SECRET, mode=0o600)
    os.chown(path, NOBODY, NOBODY)

    assert _load_as_nobody(path) == f"loaded: file:{path}"


@needs_root
@pytest.mark.needs_root
def test_service_user_refuses_a_file_of_a_third_user(shared_dir: Path) -> None:
    path = _write(shared_dir / "do-token", SECRET, mode=0o604)  # readable, so the owner decides
    os.chown(path, DAEMON_UID, DAEMON_UID)

    outcome = _load_as_nobody(path)

    assert outcome.startswith(f"refused: api.token_file: {path} is owned by uid {DAEMON_UID}")
    assert f"not by root or uid {NOBODY} (nobody)" in outcome
    assert outcome.endswith(f"run chown nobody {path} && chmod 600 {path}")


@needs_root
@pytest.mark.needs_root
def test_service_user_unable_to_read_a_root_file_is_told_the_chown(shared_dir: Path) -> None:
    path = _write(shared_dir / "do-token", SECRET, mode=0o600)  # root's: nobody cannot open it

    outcome = _load_as_nobody(path)

    assert outcome.startswith(f"refused: api.token_file: {path} is not readable by uid {NOBODY}")
    assert outcome.endswith(f"run chown nobody {path} && chmod 600 {path}")


def test_file_source_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(TokenError, match=r"api.token_file: .* is not a regular file"):
        load_token(ApiConfig(token_source="file", token_file=str(directory)), {})


def test_file_source_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(TokenError, match="not a regular file"):
        load_token(ApiConfig(token_source="file", token_file=str(fifo)), {})


def test_file_source_missing_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(TokenError, match=rf"^api.token_file: {path} does not exist"):
        load_token(ApiConfig(token_source="file", token_file=str(path)), {})


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_empty_token_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path / "do-token", content)
    with pytest.raises(TokenError, match="is empty"):
        load_token(ApiConfig(token_source="file", token_file=str(path)), {})


def test_file_with_two_lines_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "do-token", f"{SECRET}\n{OTHER_SECRET}\n")
    with pytest.raises(TokenError) as info:
        load_token(ApiConfig(token_source="file", token_file=str(path)), {})
    assert "only the token" in str(info.value)
    assert SECRET not in str(info.value)
    assert OTHER_SECRET not in str(info.value)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "do-token", "x" * 10_000)
    with pytest.raises(TokenError, match="too large"):
        load_token(ApiConfig(token_source="file", token_file=str(path)), {})


def test_env_source_reads_and_strips_variable() -> None:
    loaded = load_token(ApiConfig(token_source="env"), {"HAFLOATD_DO_TOKEN": f" {SECRET}\n"})
    assert loaded.token.reveal() == SECRET
    assert loaded.source == "env:HAFLOATD_DO_TOKEN"


def test_env_source_unset_or_empty_is_an_error() -> None:
    with pytest.raises(TokenError, match="HAFLOATD_DO_TOKEN is not set"):
        load_token(ApiConfig(token_source="env"), {})
    with pytest.raises(TokenError, match="HAFLOATD_DO_TOKEN is empty"):
        load_token(ApiConfig(token_source="env"), {"HAFLOATD_DO_TOKEN": "  "})


def test_env_token_with_inner_whitespace_is_refused_without_quoting_it() -> None:
    with pytest.raises(TokenError) as info:
        load_token(ApiConfig(token_source="env"), {"HAFLOATD_DO_TOKEN": f"{SECRET} extra"})
    assert SECRET not in str(info.value)


def test_auto_prefers_credential_over_file_and_env(cred_dir: Path, tmp_path: Path) -> None:
    _write(cred_dir / "do-token", SECRET, mode=0o400)
    token_file = _write(tmp_path / "do-token", OTHER_SECRET)
    loaded = load_token(
        ApiConfig(token_source="auto", token_file=str(token_file)),
        {"CREDENTIALS_DIRECTORY": str(cred_dir), "HAFLOATD_DO_TOKEN": OTHER_SECRET},
    )
    assert loaded.token.reveal() == SECRET
    assert loaded.source.startswith("credential:")


def test_auto_uses_file_when_no_credential(cred_dir: Path, tmp_path: Path) -> None:
    token_file = _write(tmp_path / "do-token", SECRET)
    loaded = load_token(
        ApiConfig(token_source="auto", token_file=str(token_file)),
        {"CREDENTIALS_DIRECTORY": str(cred_dir), "HAFLOATD_DO_TOKEN": OTHER_SECRET},
    )
    assert loaded.source == f"file:{token_file}"
    assert loaded.token.reveal() == SECRET


def test_auto_does_not_fall_back_to_env_when_configured_file_is_insecure(tmp_path: Path) -> None:
    token_file = _write(tmp_path / "do-token", SECRET, mode=0o644)
    with pytest.raises(TokenError, match=f"chmod 600 {token_file}"):
        load_token(
            ApiConfig(token_source="auto", token_file=str(token_file)),
            {"HAFLOATD_DO_TOKEN": OTHER_SECRET},
        )


def test_auto_falls_back_to_env_last() -> None:
    loaded = load_token(ApiConfig(token_source="auto"), {"HAFLOATD_DO_TOKEN": SECRET})
    assert loaded.source == "env:HAFLOATD_DO_TOKEN"


def test_auto_with_nothing_lists_every_way_to_provide_a_token() -> None:
    with pytest.raises(TokenError) as info:
        load_token(ApiConfig(token_source="auto"), {})
    message = str(info.value)
    assert message.startswith("api.token_source: ")
    assert "LoadCredential=do-token" in message
    assert "api.token_file" in message
    assert "HAFLOATD_DO_TOKEN" in message


def test_token_error_maps_to_ocf_not_configured() -> None:
    assert TokenError("x").ocf_code == 6
