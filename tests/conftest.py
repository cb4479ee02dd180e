"""Shared fixtures: stores on SQLite and PostgreSQL, an isolated modelyard home, moto's S3
server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def ops_admin(tmp_path: Path) -> Iterator[Any]:
    """The admin API (a TestClient) over a store with the acme and globex worlds, as the
    admin ``ops``; ``.store`` is that store."""
    from fastapi.testclient import TestClient

    from modelyard.access import create_actor_token
    from modelyard.admin import create_admin_app
    from modelyard.audit import AccessPolicy
    from worlds import two_tenant_world

    url = f"sqlite:///{tmp_path / 'admin.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key="k" * 40, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        two_tenant_world(ops)
        token = create_actor_token(ops, "ops")[1]
        client = TestClient(create_admin_app(ops), raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {token}"
        client.store = ops  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="session")
def rambler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The transformers engine on a tiny base behind a real server (``rambler_server``:
    endpoint ``rambler``, an adapter that never ends an answer), one per test process,
    as a ``tinymodels.Rambler``: for tests of the OpenAI parameters that shape decoding."""
    import openai
    from transformers import AutoTokenizer

    from tinymodels import Rambler, rambler_server

    tmp = tmp_path_factory.mktemp("rambler")
    with (
        rambler_server(tmp) as (url, _, key),
        openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client,
    ):
        yield Rambler(client, AutoTokenizer.from_pretrained(tmp / "base"), tmp)


@pytest.fixture
def promtool() -> str:
    """The path of Prometheus's ``promtool`` (skipped without it; failed under ``CI=true``)."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (apt-get install prometheus; .ci/run installs it)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def acme_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``home``, created, holding ``fake_world``'s tenant acme with model ``acme-bot`` and
    endpoint ``acme-support``; commands reach it directly (no ``MODELYARD_URL``)."""
    from worlds import fake_world, home_store

    home.mkdir()
    monkeypatch.delenv("MODELYARD_URL", raising=False)
    with home_store(home) as store:
        fake_world(store, model="acme-bot", endpoint="acme-support")
    return home


# -- S3: moto's server on 127.0.0.1 ---------------------------------------------------------

S3_ENV = {  # what boto3 reads; anything in ~/.aws is kept out
    "AWS_ACCESS_KEY_ID": "modelyard-test",
    "AWS_SECRET_ACCESS_KEY": "modelyard-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server (``moto.server``, a separate process) on a free port of 127.0.0.1.

    The code under test talks HTTP to it as to any S3-compatible service; it is
    ended by its pid when the session ends.
    """
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto's S3 server exited at start (status {proc.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto's S3 server did not start listening within 30 s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<bucket>/artifacts``, a fresh bucket on moto's server, with boto3's settings
    (endpoint, credentials) in the environment, as a user would set them."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    bucket = f"modelyard-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/artifacts"


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl+C is a KeyboardInterrupt in every test process (the workers too): a suite
    started in the background by a non-interactive shell (``.ci/run &``) inherits SIGINT
    ignored, Python then installs no handler, and the tests that press Ctrl+C, in process
    or on a command they start (which inherits it), saw nothing happen.

    A browser check waits as long as an action does (15 s), not Playwright's 5 s for
    ``expect``: on a loaded CI machine a page took over 5 s to show who logged in."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        from playwright.sync_api import expect
    except ImportError:  # no browser tests without it
        return
    expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (``playwright install`` cannot download
    here; .ci/run installs the ``chromium`` package). Skipped without it, except under
    CI=true, where that fails."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        reason = "no chromium (apt-get install chromium; .ci/run installs it)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, timeout=60_000)
        yield launched
        launched.close()


@contextlib.contextmanager
def statements(store: Any) -> Iterator[list[tuple[str, Any]]]:
    """The SQL ``store`` sends inside the block, with its parameters, in order (a query
    counter: what a listing or a scrape costs)."""
    from sqlalchemy import event

    sent: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    event.listen(store._engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(store._engine, "before_cursor_execute", seen)


def selects(sent: list[tuple[str, Any]]) -> list[str]:
    """The SELECT statements of ``statements``' list."""
    return [s for s, _ in sent if s.lstrip().upper().startswith("SELECT")]
