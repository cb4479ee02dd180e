"""Shared fixtures: stores on SQLite and PostgreSQL, an isolated modelyard home."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from modelyard.store import Store

PG_ENV = "MODELYARD_TEST_POSTGRES_URL"
VLLM_ENV = "MODELYARD_TEST_VLLM_PYTHON"  # the python of vLLM's environment (`make vllm`)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share two cores: one math thread each (and in the commands they start),
    # rather than four threads fighting over two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _needed(env: str, missing: str) -> str:
    """The value of ``env``; without it the test is skipped, saying ``missing`` (under CI it
    fails instead: CI provides every service)."""
    value = os.environ.get(env)
    if not value:
        reason = f"{env} is not set: {missing}"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return value


def postgres_admin_url() -> str:
    """The PostgreSQL server for tests."""
    return _needed(PG_ENV, "no PostgreSQL server (scripts/postgres-up.sh starts one)")


TEST_ENVS = (PG_ENV, VLLM_ENV)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter of vLLM's environment."""
    return _needed(VLLM_ENV, "no vLLM environment (`make vllm` builds one)")


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process code sees a private home (and audit key), never the checkout's .modelyard."""
    for name in [k for k in os.environ if k.startswith("MODELYARD_") and k not in TEST_ENVS]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin_url = postgres_admin_url()
    name = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as s:
        yield s


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated MODELYARD_HOME with the default SQLite store and artifact dir."""
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.delenv("MODELYARD_STORE_URL", raising=False)
    monkeypatch.delenv("MODELYARD_ARTIFACTS", raising=False)
    return home
