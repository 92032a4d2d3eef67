"""``hafloatd install-agent``: the agent, the unit and the example config, under ``--root``.

Most tests build their own small source tree (``--source``), so they do not depend on what
``systemd/`` and ``config/`` hold today; the others install what the package ships.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafloatd import cli, install

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "ocf" / "hafloat"
AGENT_MODULE = REPO / "ocf" / "hafloat_agent.py"
INSTALLED_AGENT = Path("usr/lib/ocf/resource.d/hafloatd/hafloat")
INSTALLED_MODULE = Path("usr/lib/ocf/lib/hafloatd/hafloat_agent.py")
INTERPRETER = "/usr/bin/python3"  # the launcher's shebang

UNIT = """\
[Unit]
Description=hafloatd
[Service]
Type=notify
User=hafloatd
ProtectHome=yes
ExecStartPre=-/usr/local/bin/hafloatd check-config /etc/hafloatd/hafloatd.yaml
ExecStart=/usr/local/bin/hafloatd run --config /etc/hafloatd/hafloatd.yaml
ExecReload=/bin/kill -HUP $MAINPID
# ExecStart=/usr/local/bin/hafloatd in a comment stays as it is
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A minimal source tree: the real agent, a small unit, snippets and an example config."""
    tree = tmp_path / "src"
    (tree / "ocf").mkdir(parents=True)
    (tree / "ocf" / "hafloat").write_bytes(AGENT.read_bytes())
    (tree / "ocf" / "hafloat_agent.py").write_bytes(AGENT_MODULE.read_bytes())
    (tree / "systemd").mkdir()
    (tree / "systemd" / "hafloatd.service").write_text(UNIT, encoding="utf-8")
    (tree / "systemd" / "hafloatd.sysusers.conf").write_text("u hafloatd -\n", encoding="utf-8")
    (tree / "systemd" / "hafloatd.tmpfiles.conf").write_text(
        "d /run/hafloatd 0750 hafloatd haclient -\n", encoding="utf-8"
    )
    (tree / "config").mkdir()
    (tree / "config" / "hafloatd.example.yaml").write_text("ips: []\n", encoding="utf-8")
    return tree


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "root"
    directory.mkdir()
    return directory


@pytest.fixture
def hafloatd_bin() -> Iterator[Path]:
    """An executable in a world-searchable tree (pytest's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="hfi-", dir="/tmp"))
    top.chmod(0o755)
    program = top / "opt" / "hafloatd" / "bin" / "hafloatd"
    program.parent.mkdir(parents=True)
    for directory in (top / "opt", top / "opt" / "hafloatd", program.parent):
        directory.chmod(0o755)
    program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    program.chmod(0o755)
    try:
        yield program
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run(*argv: str) -> int:
    return cli.main(["install-agent", *argv])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def needs_interpreter() -> None:
    if not Path(INTERPRETER).is_file():
        pytest.skip(f"{INTERPRETER} (the agent's interpreter) is not installed")


def cached_bytecode(root: Path) -> list[Path]:
    return sorted((root / INSTALLED_MODULE.parent / "__pycache__").glob("hafloat_agent.*.pyc"))


def loads_from_cache(root: Path) -> bool:
    """Whether the installed agent's import takes the module from its bytecode cache."""
    result = subprocess.run(
        [INTERPRETER, "-I", "-S", "-v", str(root / INSTALLED_AGENT), "meta-data"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # -v says "# <dir>/__pycache__/hafloat_agent.<tag>.pyc matches <dir>/hafloat_agent.py"
    # then "# code object from '<that .pyc>'" (from '<the .py>' when it compiled the source)
    lines = [line for line in result.stderr.splitlines() if str(root) in line]
    return any(
        "/__pycache__/hafloat_agent." in line and line.endswith("/hafloat_agent.py")
        for line in lines
    ) and any(line.startswith("# code object from '") and ".pyc'" in line for line in lines)


def test_agent_is_installed_under_the_ocf_provider_directory_with_mode_0755(
    root: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--root", str(root), "--source", str(source)) == 0
    agent = root / INSTALLED_AGENT
    assert agent.read_bytes() == AGENT.read_bytes()
    assert mode(agent) == 0o755
    for directory in (agent.parent, agent.parent.parent, root / "usr"):
        assert mode(directory) == 0o755  # nobody (ocf-tester) must reach the agent
    module = root / INSTALLED_MODULE
    assert module.read_bytes() == AGENT_MODULE.read_bytes()
    assert mode(module) == 0o644
    assert mode(module.parent) == 0o755
    out = capsys.readouterr().out
    assert f"installed {agent} (0755)" in out
    assert f"installed {module} (0644)" in out
    assert not (root / "etc").exists()  # only the agent without --unit/--config-example


def test_agent_module_is_compiled_by_the_agents_interpreter_and_used(
    root: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_interpreter()
    assert run("--root", str(root), "--source", str(source)) == 0
    [pyc] = cached_bytecode(root)
    tag = subprocess.run(
        [INTERPRETER, "-I", "-S", "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert pyc.name == f"hafloat_agent.{tag}.pyc"
    assert mode(pyc) == 0o644 and mode(pyc.parent) == 0o755
    assert f"installed {pyc} (0644) compiled by {INTERPRETER}" in capsys.readouterr().out
    before = pyc.read_bytes()
    assert loads_from_cache(root)  # the installed launcher finds the module and its cache
    assert pyc.read_bytes() == before


def test_stale_or_foreign_bytecode_is_replaced(root: Path, source: Path) -> None:
    needs_interpreter()
    assert run("--root", str(root), "--source", str(source)) == 0
    [pyc] = cached_bytecode(root)
    pyc.write_bytes(b"\0" * 16 + b"not the agent's bytecode")
    assert run("--root", str(root), "--source", str(source)) == 0
    assert loads_from_cache(root)


def test_without_the_agents_interpreter_the_module_is_installed_uncompiled(
    root: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = source / "ocf" / "hafloat"
    launcher.write_text(
        launcher.read_text().replace("#!/usr/bin/python3", "#!/nonexistent/python3", 1)
    )
    assert run("--root", str(root), "--source", str(source)) == 0
    assert (root / INSTALLED_MODULE).is_file()
    assert cached_bytecode(root) == []
    assert "compiles it on every run" in capsys.readouterr().err


def test_install_is_idempotent_and_says_unchanged(
    root: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--root", str(root), "--source", str(source)) == 0
    capsys.readouterr()
    files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert run("--root", str(root), "--source", str(source)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("unchanged ") for line in lines), lines
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == files


def test_changed_agent_or_mode_is_updated_atomically(root: Path, source: Path) -> None:
    agent = root / "usr/lib/ocf/resource.d/hafloatd/hafloat"
    agent.parent.mkdir(parents=True)
    agent.write_bytes(b"#!/bin/sh\nexit 0\n")
    agent.chmod(0o700)
    assert run("--root", str(root), "--source", str(source)) == 0
    assert agent.read_bytes() == AGENT.read_bytes()
    assert mode(agent) == 0o755
    assert [p.name for p in agent.parent.iterdir()] == ["hafloat"]  # no temporary left
    assert [p.name for p in (root / INSTALLED_MODULE).parent.iterdir() if p.is_file()] == [
        "hafloat_agent.py"
    ]


def test_dry_run_writes_nothing(
    root: Path, source: Path, hafloatd_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--all", "--dry-run", "--root", str(root), "--source", str(source)]
    assert run(*argv, "--hafloatd-bin", str(hafloatd_bin)) == 0
    assert list(root.iterdir()) == []
    out = capsys.readouterr().out
    assert "would install" in out
    assert "hafloatd.service" in out


def test_unit_runs_the_given_hafloatd_and_keeps_prefixes_arguments_and_other_commands(
    root: Path, source: Path, hafloatd_bin: Path
) -> None:
    argv = ["--unit", "--root", str(root), "--source", str(source)]
    assert run(*argv, "--hafloatd-bin", str(hafloatd_bin)) == 0
    unit = (root / "etc/systemd/system/hafloatd.service").read_text(encoding="utf-8")
    assert f"ExecStart={hafloatd_bin} run --config /etc/hafloatd/hafloatd.yaml\n" in unit
    assert f"ExecStartPre=-{hafloatd_bin} check-config /etc/hafloatd/hafloatd.yaml\n" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in unit
    assert "# ExecStart=/usr/local/bin/hafloatd in a comment stays as it is\n" in unit
    assert mode(root / "etc/systemd/system/hafloatd.service") == 0o644


def test_unit_defaults_to_the_hafloatd_script_of_the_running_interpreter(
    root: Path, source: Path
) -> None:
    expected = install.default_hafloatd_bin()
    assert run("--unit", "--root", str(root), "--source", str(source)) == 0
    unit = (root / "etc/systemd/system/hafloatd.service").read_text(encoding="utf-8")
    assert f"ExecStart={expected} run " in unit


def test_sysusers_and_tmpfiles_snippets_are_installed_with_the_unit(
    root: Path, source: Path, hafloatd_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--unit", "--root", str(root), "--source", str(source)]
    assert run(*argv, "--hafloatd-bin", str(hafloatd_bin)) == 0
    assert (root / "etc/sysusers.d/hafloatd.conf").read_text() == "u hafloatd -\n"
    assert (root / "etc/tmpfiles.d/hafloatd.conf").read_text().startswith("d /run/hafloatd")
    out = capsys.readouterr().out
    assert "next: systemd-sysusers /etc/sysusers.d/hafloatd.conf" in out
    assert "next: systemctl daemon-reload && systemctl enable --now hafloatd" in out


def test_absent_snippets_are_simply_not_installed(
    root: Path, source: Path, hafloatd_bin: Path
) -> None:
    (source / "systemd" / "hafloatd.sysusers.conf").unlink()
    (source / "systemd" / "hafloatd.tmpfiles.conf").unlink()
    argv = ["--unit", "--root", str(root), "--source", str(source)]
    assert run(*argv, "--hafloatd-bin", str(hafloatd_bin)) == 0
    assert not (root / "etc/sysusers.d").exists()
    assert not (root / "etc/tmpfiles.d").exists()


def test_example_config_never_overwrites_the_live_config(
    root: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = root / "etc/hafloatd/hafloatd.yaml"
    live.parent.mkdir(parents=True)
    live.write_text("ips: [{address: 203.0.113.10}]\n", encoding="utf-8")
    assert run("--config-example", "--root", str(root), "--source", str(source)) == 0
    assert live.read_text(encoding="utf-8") == "ips: [{address: 203.0.113.10}]\n"
    assert (root / "etc/hafloatd/hafloatd.example.yaml").read_text() == "ips: []\n"
    assert "next: cp " not in capsys.readouterr().out


def test_example_config_without_live_config_says_how_to_start_one(
    root: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--config-example", "--root", str(root), "--source", str(source)) == 0
    assert not (root / "etc/hafloatd/hafloatd.yaml").exists()
    out = capsys.readouterr().out
    assert "next: cp /etc/hafloatd/hafloatd.example.yaml /etc/hafloatd/hafloatd.yaml" in out


def test_missing_unit_in_the_source_fails_before_writing_anything(
    root: Path, source: Path, hafloatd_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (source / "systemd" / "hafloatd.service").unlink()
    argv = ["--all", "--root", str(root), "--source", str(source)]
    assert run(*argv, "--hafloatd-bin", str(hafloatd_bin)) == 1
    assert list(root.iterdir()) == []
    err = capsys.readouterr().err
    assert "systemd/hafloatd.service is missing from the source tree" in err


def test_unit_without_an_exec_start_running_hafloatd_is_refused(
    root: Path, source: Path, hafloatd_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (source / "systemd" / "hafloatd.service").write_text(
        "[Service]\nExecStart=/usr/bin/true\n", encoding="utf-8"
    )
    argv = ["--unit", "--root", str(root), "--source", str(source)]
    assert run(*argv, "--hafloatd-bin", str(hafloatd_bin)) == 1
    assert "no ExecStart= line running hafloatd" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["relative/hafloatd", "/opt/my tools/hafloatd"])
def test_hafloatd_bin_must_be_an_absolute_path_without_spaces(bad: str) -> None:
    with pytest.raises(install.InstallError):
        install.rewrite_exec_paths(UNIT, Path(bad))


def test_warns_when_protect_home_would_hide_the_executable(
    hafloatd_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "_HOME_DIRS", (hafloatd_bin.parents[2],))
    warnings = install.executable_warnings(hafloatd_bin, UNIT)
    assert any("ProtectHome=yes hides" in warning for warning in warnings)


def test_warns_when_the_service_user_cannot_reach_the_executable(
    hafloatd_bin: Path,
) -> None:
    closed = hafloatd_bin.parents[1]
    closed.chmod(0o700)
    try:
        warnings = install.executable_warnings(hafloatd_bin, UNIT)
    finally:
        closed.chmod(0o755)
    assert any(f"{closed} is not searchable by other users" in w for w in warnings)


def test_no_warning_for_a_reachable_executable_outside_home(hafloatd_bin: Path) -> None:
    for directory in hafloatd_bin.parents:
        if directory.stat().st_mode & stat.S_IXOTH == 0:
            pytest.skip(f"{directory} is not world-searchable on this host")
    assert install.executable_warnings(hafloatd_bin, UNIT) == []


def test_packaged_files_are_the_top_level_directories() -> None:
    # hafloatd/data/{ocf,systemd,config} ship the top-level directories as package data
    packaged = install.packaged_files()
    for relative in ("ocf/hafloat", "ocf/hafloat_agent.py", "systemd/hafloatd.service"):
        assert packaged.joinpath(relative).read_bytes() == (REPO / relative).read_bytes()
    assert (
        packaged.joinpath("config/hafloatd.example.yaml").read_bytes()
        == (REPO / "config/hafloatd.example.yaml").read_bytes()
    )


def test_add_arguments_defaults_install_only_the_agent_at_the_real_root() -> None:
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    args = parser.parse_args([])
    assert args.root == Path("/")
    assert not (args.unit or args.config_example or args.all or args.dry_run)


def test_real_checkout_installs_completely_under_a_root(
    root: Path, hafloatd_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for needed in ("systemd/hafloatd.service", "config/hafloatd.example.yaml"):
        if not (REPO / needed).is_file():
            pytest.skip(f"{needed} is not in the checkout yet")
    assert run("--all", "--root", str(root), "--hafloatd-bin", str(hafloatd_bin)) == 0
    unit = (root / "etc/systemd/system/hafloatd.service").read_text(encoding="utf-8")
    assert f"ExecStart={hafloatd_bin} run" in unit
    assert (root / INSTALLED_AGENT).read_bytes() == AGENT.read_bytes()
    assert (root / INSTALLED_MODULE).read_bytes() == AGENT_MODULE.read_bytes()
    assert (root / "etc/sysusers.d/hafloatd.conf").read_bytes() == (
        REPO / "systemd/hafloatd.sysusers.conf"
    ).read_bytes()
    assert (root / "etc/hafloatd/hafloatd.example.yaml").read_bytes() == (
        REPO / "config/hafloatd.example.yaml"
    ).read_bytes()
    assert "error" not in capsys.readouterr().err


def test_plain_install_into_a_fresh_venv_installs_everything(tmp_path: Path) -> None:
    # What an operator does: pip install (not editable), then install-agent --all. The files
    # must come from the installed package, not from a checkout next to it.
    needs_interpreter()
    venv, wheels, root = tmp_path / "venv", tmp_path / "wheels", tmp_path / "root"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # The wheel is built with this venv's setuptools and installed without dependencies, so
    # the test downloads nothing; install-agent needs none of them (cli imports lazily).
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        check=True, timeout=300, env=pip_env, capture_output=True,
    )  # fmt: skip
    [wheel] = wheels.glob("hafloatd-*.whl")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True, timeout=300, env=pip_env, capture_output=True,
    )  # fmt: skip
    result = subprocess.run(
        [str(venv / "bin" / "hafloatd"), "install-agent", "--all", "--root", str(root)],
        cwd=tmp_path,  # nowhere near the checkout
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / INSTALLED_AGENT).read_bytes() == AGENT.read_bytes()
    assert (root / INSTALLED_MODULE).read_bytes() == AGENT_MODULE.read_bytes()
    assert cached_bytecode(root)
    unit = (root / "etc/systemd/system/hafloatd.service").read_text(encoding="utf-8")
    assert f"ExecStart={venv / 'bin' / 'hafloatd'} run" in unit
    for relative, source in (
        ("etc/sysusers.d/hafloatd.conf", "systemd/hafloatd.sysusers.conf"),
        ("etc/hafloatd/hafloatd.example.yaml", "config/hafloatd.example.yaml"),
    ):
        assert (root / relative).read_bytes() == (REPO / source).read_bytes()
    site = venv.glob("lib/python3*/site-packages/hafloatd/data/ocf/hafloat")
    assert [path.is_symlink() for path in site] == [False]  # a copy, not a link to REPO
