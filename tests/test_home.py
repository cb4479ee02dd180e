"""Finding the home like git finds .git: MODELYARD_HOME, else the nearest .modelyard upwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clihelp import Result, modelyard
from modelyard.cli._app import main
from modelyard.cli._home import check_home, current_command
from modelyard.settings import load_settings


def _run(*args: str, cwd: Path, home: Path | None = None) -> Result:
    return modelyard(*args, home=home, cwd=cwd, timeout=300)


def test_reading_outside_any_home_creates_nothing_and_says_where_it_looked(
    tmp_path: Path,
) -> None:
    here = tmp_path / "elsewhere"
    here.mkdir()
    r = _run("registry", "list", cwd=here)
    assert r.code == 2
    assert "no modelyard store found" in r.err and str(here) in r.err
    assert "modelyard init" in r.err and "Traceback" not in r.err
    assert not (here / ".modelyard").exists()
    info = _run("info", cwd=here)
    assert info.code == 2 and "no .modelyard found" in info.out


def test_commands_find_the_home_walking_up_from_a_subdirectory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    deep = project / "notebooks" / "2026"
    deep.mkdir(parents=True)
    assert _run("init", cwd=project).code == 0
    assert _run("tenants", "create", "bank", cwd=deep).code == 0
    listed = _run("tenants", "list", cwd=deep)
    assert listed.code == 0 and "bank" in listed.out
    assert not (deep / ".modelyard").exists()
    info = _run("info", "--json", cwd=deep)
    assert info.code == 0
    shown = json.loads(info.out)
    assert shown["home"] == str(project / ".modelyard")
    assert shown["home_origin"] == "found" and shown["store_exists"] is True
    assert str(deep) in shown["home_found_by"] and shown["schema"]
    plain = _run("info", cwd=deep)
    assert plain.code == 0 and str(project / ".modelyard") in plain.out


def test_a_named_home_without_a_store_is_read_by_nobody_but_written_by_writers(
    tmp_path: Path,
) -> None:
    home = tmp_path / "named"
    r = _run("audit", "log", cwd=tmp_path, home=home)
    assert r.code == 2 and "MODELYARD_HOME" in r.err and "modelyard init" in r.err
    assert not home.exists()
    assert _run("tenants", "create", "acme", cwd=tmp_path, home=home).code == 0
    assert _run("audit", "log", cwd=tmp_path, home=home).code == 0
    info = json.loads(_run("info", "--json", cwd=tmp_path / "..", home=home).out)
    assert info["home"] == str(home) and info["home_origin"] == "env"


def test_a_command_run_in_this_process_leaves_no_command_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After ``main`` returns, the process is in no command: code that runs next (a server
    made in a test or a notebook) opened its artifacts as if it were the last command run
    (a read-only one, in CI: 'no modelyard store' for a home a server would create)."""
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    assert main(["monitor", "alerts"]) != 0  # a reader, in a home without a store
    capsys.readouterr()
    assert current_command() is None
    with_a_server = load_settings()
    check_home(with_a_server)  # no command: a server creates its store; no HomeNotFound
