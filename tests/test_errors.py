"""The error tree: drawn whole, one table of exit codes and HTTP statuses, used by both edges."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import httpx
import pytest

from modelyard import errors
from modelyard.access import create_api_key
from modelyard.cli import main
from modelyard.errors import (
    STATUSES,
    ConfigError,
    ErrorStatus,
    ModelVersionNotFound,
    ModelyardError,
    NotFound,
    RateLimited,
    RolloutFailed,
    RolloutTimedOut,
    StoreUnavailable,
    status_of,
)
from modelyard.serving import BackgroundServer, EchoEngine, EngineError, ServerLimits, create_app
from modelyard.store import Store
from worlds import fake_world

DOCS = Path(__file__).resolve().parents[1] / "docs"

CLASSES = {
    name: cls
    for name, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
}

# Every class's (exit code, HTTP status), as they were before the table, plus StoreUnavailable
# (503, was 500) and the rollout outcomes of `rollout wait`.
EXPECTED = {
    "ModelyardError": (1, 500),
    "ConfigError": (2, 400),
    "HomeNotWritable": (2, 400),
    "HomeNotFound": (2, 400),
    "AuditKeyMissing": (2, 400),
    "RequestTooLarge": (2, 413),
    "StorageQuotaExceeded": (2, 400),
    "ContextLengthExceeded": (2, 400),
    "NotFound": (1, 404),
    "BaseModelNotFound": (2, 404),  # a base the user named: bad input (issue 15)
    "DatasetNotFound": (2, 404),
    "ModelVersionNotFound": (1, 404),
    "TenantNotFound": (1, 404),
    "EndpointNotFound": (1, 404),
    "Conflict": (1, 409),
    "AuthError": (1, 401),
    "InvalidApiKey": (1, 401),
    "MissingScope": (1, 403),
    "IdentityProviderUnavailable": (1, 503),
    "PermissionDenied": (1, 403),
    "StoreError": (1, 500),
    "StoreUnavailable": (1, 503),
    "StoreMigrationError": (1, 500),
    "ArtifactError": (1, 500),
    "ArtifactNotFound": (1, 404),
    "ArtifactIntegrityError": (1, 500),
    "UnsafeArtifact": (1, 500),
    "DataError": (2, 400),  # the data the user named cannot be used: bad input
    "DataChecksFailed": (1, 400),  # a fail_on rule tripped, as `data validate` exits 1
    "TrainingError": (1, 500),
    "GateFailed": (1, 500),
    "AuditError": (1, 500),
    "AuditChainBroken": (1, 409),  # a change refused over HTTP while the chain is broken
    "AuditKeyMismatch": (1, 500),
    "RolloutError": (1, 500),
    "RolloutFailed": (1, 500),
    "JudgeError": (1, 502),
    "RolloutTimedOut": (3, 500),
    "EngineError": (1, 503),
    "EngineOverloaded": (1, 503),
    "UpstreamError": (1, 502),
    "UpstreamBusy": (1, 503),
    "UpstreamTimeout": (1, 504),
    "RateLimited": (1, 429),
    "LimitsUnavailable": (1, 503),
    "SessionsUnavailable": (1, 503),
    "BudgetExceeded": (1, 429),
    "RequestTimeout": (1, 504),
    "TooManyBatches": (1, 429),
    "ShuttingDown": (1, 503),
}


def _drawn_tree() -> dict[str, str | None]:
    """Each class drawn in the module docstring, with the class it is drawn under."""
    assert errors.__doc__ is not None
    drawn: dict[str, str | None] = {}
    parents: list[str] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^    ((?:│   |    )*)(?:[├└]── )?([A-Z]\w+)", line)
        if match is None or (not parents and match.group(2) != "ModelyardError"):
            continue
        depth = len(match.group(1)) // 4 + (0 if match.group(2) == "ModelyardError" else 1)
        del parents[depth:]
        name = match.group(2)
        assert name not in drawn, f"{name} is drawn twice"
        drawn[name] = parents[-1] if parents else None
        parents.append(name)
    return drawn


def test_every_class_is_drawn_under_its_parent_and_nothing_else_is_drawn() -> None:
    drawn = _drawn_tree()
    assert set(drawn) == set(CLASSES), set(drawn) ^ set(CLASSES)
    for name, parent in drawn.items():
        cls = CLASSES[name]
        first_base = cls.__bases__[0]
        expected = None if first_base is Exception else first_base.__name__
        assert parent == expected, f"{name} is drawn under {parent}, derives from {expected}"
    assert set(errors.__all__) >= set(CLASSES)


def test_every_class_resolves_to_its_exit_code_and_http_status() -> None:
    assert set(EXPECTED) == set(CLASSES)
    for name, cls in CLASSES.items():
        assert issubclass(cls, ModelyardError), f"{name} is outside the tree"
        found = status_of(cls)
        assert (found.exit_code, found.http_status) == EXPECTED[name], name
        assert found.type  # an OpenAI error type for every class
    assert status_of(StoreUnavailable("no store")) == ErrorStatus(1, 503, "server_error")


def test_a_subclass_answers_like_its_nearest_mapped_ancestor() -> None:
    class StaleVersion(ModelVersionNotFound):
        code = "stale_version"

    class DiskFull(StoreUnavailable):
        code = "disk_full"

    assert status_of(StaleVersion("gone")) == STATUSES[NotFound]
    assert status_of(DiskFull) == STATUSES[StoreUnavailable]
    assert status_of(RolloutFailed) == STATUSES[ModelyardError]
    # an entry of its own wins over the parent's
    assert status_of(RolloutTimedOut).exit_code == 3


def test_a_rate_limit_names_its_limit_as_the_openai_type() -> None:
    tokens = RateLimited("over", retry_after=3, limit="tokens")
    assert status_of(tokens) == ErrorStatus(1, 429, "tokens")
    assert status_of(RateLimited).type == "requests"


def test_engine_error_lives_in_the_tree_and_is_still_served_by_serving() -> None:
    assert EngineError is errors.EngineError
    assert EngineError.__module__ == "modelyard.errors"


def test_the_docs_table_is_the_table() -> None:
    text = (DOCS / "cli.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (\d+) \| (\d+) \| `(\w+)`", text, re.M)
    documented = {name: (int(code), int(status), kind) for name, code, status, kind in rows}
    table = {cls.__name__: (s.exit_code, s.http_status, s.type) for cls, s in STATUSES.items()}
    assert documented == table


# -- the CLI's exit codes, through the table -------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def world(home: Path) -> Store:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, versions=2, template=None)
    return store


def test_cli_exit_codes_come_from_the_table(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (("endpoints", "set-traffic", "support", "--shadow", "2", "--shadow-fraction", "1.5"),
         ConfigError, 2),
        (("rollout", "start", "support", "--to", "bot:9"), NotFound, 1),
    ]  # fmt: skip
    for argv, kind, code in cases:
        got, err = _run(capsys, *argv)
        assert got == code and err.startswith("error: "), (argv, got, err)
        with pytest.raises(kind) as info:  # --debug lets the error itself out
            main(["--debug", *argv])
        assert status_of(info.value).exit_code == code


def test_rollout_wait_exits_through_the_tree(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "rollout", "start", "support", "--to", "bot:2", "--bake", "1h")[0] == 0
    code, err = _run(capsys, "rollout", "wait", "support", "--timeout", "0.2s", "--poll", "0.05")
    assert code == 3 and "error: timed out after 0.2s: support → bot:2: running" in err
    # no controller runs on this store: the hint says what would move the rollout
    assert "start `modelyard controller`" in err and "then wait again" in err
    with pytest.raises(RolloutTimedOut):
        main(["--debug", "rollout", "wait", "support", "--timeout", "0.1s", "--poll", "0.05"])

    assert _run(capsys, "rollout", "abort", "support", "--reason", "wrong data")[0] == 0
    code, err = _run(capsys, "rollout", "wait", "support", "--timeout", "5s")
    assert code == 1
    assert "the rollout of support to bot:2 ended aborted (wrong data)" in err
    assert "`modelyard rollout status support`" in err
    with pytest.raises(RolloutFailed):
        main(["--debug", "rollout", "wait", "support", "--timeout", "5s"])


# -- the HTTP statuses, through the same table -----------------------------------------------


def test_a_server_whose_store_went_away_answers_503_in_openai_form(tmp_path: Path) -> None:
    where = tmp_path / "store"
    where.mkdir()
    store = Store.open(f"sqlite:///{where / 's.db'}")
    fake_world(store)
    _, key = create_api_key(store, "acme")
    limits = ServerLimits(key_cache_seconds=0)  # every request asks the store for its key
    app = create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with BackgroundServer(app) as server:
            assert httpx.get(server.base_url + "/v1/models", headers=auth).status_code == 200
            # The database goes away under the running server: its directory is removed,
            # then the pooled connections (which keep the removed file open) are closed.
            shutil.rmtree(where)
            store.close()
            r = httpx.get(server.base_url + "/v1/models", headers=auth)
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["type"] == "server_error" and error["code"] == "store_unavailable"
            assert "cannot use its store" in error["message"]
            # nothing of the store reaches the caller: not its path, not the operator's hint
            assert str(tmp_path) not in r.text and "MODELYARD_STORE_URL" not in r.text
            assert r.headers["retry-after"] == "1"
            ready = httpx.get(server.base_url + "/ready")
            assert ready.status_code == 503 and str(tmp_path) not in ready.text
    finally:
        store.close()
