"""The CLI against a server: with MODELYARD_URL and a person's token, the registry, endpoint,
rollout and audit commands call the admin API and print what they print on the database.

A real server (``create_app`` with the admin API mounted, as ``modelyard serve`` does) on
127.0.0.1 over a SQLite store; each command runs twice through the CLI's entry point: on
the database (MODELYARD_HOME at the store) and through the server (MODELYARD_URL, a token,
and MODELYARD_HOME at an empty directory where no store may appear).
"""

from __future__ import annotations

import json
import shlex
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelyard.access import create_actor_token
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.cli import main
from modelyard.cli._remote import ADMIN_PATH, AdminClient, Remote
from modelyard.errors import AuthError, ConfigError, PermissionDenied
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world, gate_metrics

KEY = "cli-remote-test-key-cli-remote-test"
ROLES = {"ops": "admin", "viv": "viewer", "dev": "developer", "dana": "approver"}


@dataclass
class World:
    store: Store  # the server's, acting as ops
    home: Path  # where the store is: the local runs' MODELYARD_HOME
    empty: Path  # the remote runs' MODELYARD_HOME: must stay empty
    url: str  # the server's base URL
    tokens: dict[str, str]


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    home, empty = tmp_path / "home", tmp_path / "empty"
    home.mkdir()
    empty.mkdir()
    monkeypatch.setenv("COLUMNS", "200")
    url = f"sqlite:///{home / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        for name, role in ROLES.items():
            ops.add_actor(name, role)
        fake_world(ops, versions=3, template=None)
        with Store.open(url, actor="dev", audit_key=KEY, policy=policy) as dev:
            dev.create_run("run-1", base_model="tiny", dataset_id=None, config={"lr": 0.1},
                           seed=7, environment={})  # fmt: skip
        ops.create_model_version(
            "bot", kind="adapter", artifact_digest="ab" * 32, base_model="tiny", run_id="run-1",
            lineage={"parent": "bot:2", "seed": 7}, metrics=gate_metrics(None),
        )  # fmt: skip
        ops.set_alias("bot", "champion", 2)
        ops.set_version_tags("bot:2", {"team": "claims"})
        tokens = {name: create_actor_token(ops, name)[1] for name in ROLES}
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield World(ops, home, empty, server.base_url, tokens)


def _run(capsys: pytest.CaptureFixture[str], line: str) -> Ran:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def local(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> Ran:
    """``line`` on the database (as the OS user, or ``--actor``)."""
    with monkeypatch.context() as env:
        env.setenv("MODELYARD_HOME", str(world.home))
        env.setenv("MODELYARD_AUDIT_KEY", KEY)
        env.delenv("MODELYARD_URL", raising=False)
        return _run(capsys, line)


def remote(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    line: str,
    who: str = "ops",
    **extra: str,
) -> Ran:
    """``line`` through the server with ``who``'s token, no database reachable."""
    with monkeypatch.context() as env:
        env.setenv("MODELYARD_HOME", str(world.empty))
        env.setenv("MODELYARD_URL", world.url)
        env.setenv("MODELYARD_TOKEN", world.tokens.get(who, who))
        for name, value in extra.items():
            env.setenv(name, value)
        ran = _run(capsys, line)
    assert list(world.empty.iterdir()) == [], f"{line} created files in the empty home"
    return ran


READS = [
    "registry list",
    "registry list --json",
    "registry list bot",
    "registry list bot --json",
    "registry list --tenant acme",
    "registry show bot",
    "registry show bot@champion --json",
    "registry show bot:3",
    "registry lineage bot:4",
    "registry lineage bot:4 --json",
    "registry card bot:4",
    "endpoints list",
    "endpoints list --json",
    "audit log --limit 20",
    "audit log --json --action alias.*",
    "audit log --by ops --subject bot* --limit 3",
    "audit verify",
    "audit verify --json",
]


@pytest.mark.parametrize("line", READS)
def test_reads_print_what_the_database_prints(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    here = local(world, monkeypatch, capsys, line)
    there = remote(world, monkeypatch, capsys, line, who="viv")
    assert here.code == 0, here
    assert (there.code, there.out, there.err) == (here.code, here.out, here.err)
