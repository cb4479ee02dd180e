"""The store suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from modelyard.errors import (
    ConfigError,
    Conflict,
    EndpointNotFound,
    ModelVersionNotFound,
    StoreUnavailable,
    TenantNotFound,
)
from modelyard.store import NewInferenceRecord, Store, head_revision
from worlds import gate_metrics


def _seed_model(store: Store, name: str = "support", tenant: str | None = "acme") -> None:
    if tenant and tenant not in {t.name for t in store.list_tenants()}:
        store.create_tenant(tenant)
    store.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    store.create_registered_model(name, tenant=tenant, description="routes tickets")


def _add_version(store: Store, name: str = "support", digest: str = "cd" * 32) -> int:
    v = store.create_model_version(
        name,
        kind="adapter",
        artifact_digest=digest,
        base_model="tiny",
        run_id=None,
        lineage={"seed": 1},
        metrics={**gate_metrics(True), "exact_match": 1.0},  # gates passed: promotable
    )
    return v.version


def test_migrations_are_applied_and_idempotent(store: Store, store_url: str) -> None:
    assert store.schema_revision() == head_revision()
    assert store.migrate() == (head_revision(), head_revision())
    engine = create_engine(store_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"tenants", "model_versions", "endpoints", "inference_records"} <= tables


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        engine = store._engine
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_versions_are_auto_numbered_and_immutable_entities(store: Store) -> None:
    _seed_model(store)
    assert [_add_version(store), _add_version(store), _add_version(store)] == [1, 2, 3]
    v2 = store.get_model_version("support", 2)
    assert v2.ref == "support:2"
    assert v2.lineage == {"seed": 1}
    assert v2.created_at.tzinfo is not None
    with pytest.raises(AttributeError):
        v2.version = 9  # type: ignore[misc]


def test_refs_resolve_by_alias_number_and_latest(store: Store) -> None:
    _seed_model(store)
    _add_version(store)
    _add_version(store)
    store.set_alias("support", "champion", 1)
    assert store.resolve_model_ref("support@champion").version == 1
    assert store.resolve_model_ref("support:2").version == 2
    assert store.resolve_model_ref("support").version == 2
    store.set_alias("support", "champion", 2)  # moving an alias
    assert store.resolve_model_ref("support@champion").version == 2
    assert store.get_registered_model("support").aliases == {"champion": 2}


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        ("support@nope", ModelVersionNotFound),
        ("support:9", ModelVersionNotFound),
        ("missing@champion", ModelVersionNotFound),
        ("bad ref::", ConfigError),
    ],
)
def test_bad_refs_raise_domain_errors(store: Store, ref: str, error: type[Exception]) -> None:
    _seed_model(store)
    _add_version(store)
    with pytest.raises(error):
        store.resolve_model_ref(ref)


def test_duplicates_are_conflicts_not_driver_errors(store: Store) -> None:
    _seed_model(store)
    with pytest.raises(Conflict, match="exists already"):
        store.create_tenant("acme")
    with pytest.raises(Conflict):
        store.create_registered_model("support")
    with pytest.raises(Conflict, match="different weights"):
        store.register_base_model("tiny", "/elsewhere", {"model.safetensors": "ff" * 32})


def test_invalid_names_and_policies_are_rejected(store: Store) -> None:
    with pytest.raises(ConfigError, match="invalid tenant name"):
        store.create_tenant("Bad Name")
    with pytest.raises(ConfigError, match="storage policy"):
        store.create_tenant("ok", storage_policy="everything")  # type: ignore[arg-type]
    with pytest.raises(TenantNotFound):
        store.create_registered_model("m", tenant="ghost")


def test_endpoint_traffic_plan(store: Store) -> None:
    _seed_model(store)
    _add_version(store)
    _add_version(store)
    store.set_alias("support", "champion", 1)
    ep = store.create_endpoint("support-api", model_ref="support@champion", tenant="acme")
    assert [(r.version, r.weight) for r in ep.routes] == [(1, 100)]
    ep = store.set_traffic("support-api", {1: 90, 2: 10})
    assert [(r.version, r.weight) for r in ep.routes] == [(1, 90), (2, 10)]
    with pytest.raises(ConfigError, match="sum to 100"):
        store.set_traffic("support-api", {1: 50})
    assert [(r.version, r.weight) for r in store.get_endpoint("support-api").routes] == [
        (1, 90),
        (2, 10),
    ]
    with pytest.raises(EndpointNotFound):
        store.get_endpoint("nope")
    assert [e.name for e in store.list_endpoints(tenant="acme")] == ["support-api"]


def test_datasets_are_versioned_by_content(store: Store) -> None:
    kw = {"artifact_digest": "ee" * 32, "format": "alpaca", "n_rows": 10, "report": {"rows": 10}}
    d1 = store.register_dataset("claims", digest="11" * 32, **kw)  # type: ignore[arg-type]
    again = store.register_dataset("claims", digest="11" * 32, **kw)  # type: ignore[arg-type]
    d2 = store.register_dataset("claims", digest="22" * 32, **kw)  # type: ignore[arg-type]
    assert (d1.version, again.version, d2.version) == (1, 1, 2)
    assert again.id == d1.id


def test_runs_record_config_environment_and_metrics(store: Store) -> None:
    _seed_model(store)
    run = store.create_run(
        "run-1",
        base_model="tiny",
        dataset_id=None,
        config={"method": {"type": "lora"}},
        seed=7,
        environment={"torch": "2.13.0"},
    )
    assert run.status == "running"
    done = store.finish_run("run-1", status="finished", metrics={"train_loss": 0.1})
    assert done.status == "finished" and done.finished_at is not None
    assert store.get_run("run-1").metrics == {"train_loss": 0.1}


def test_api_keys_store_hashes_and_revoke(store: Store) -> None:
    store.create_tenant("acme")
    key = store.create_api_key("k1", tenant="acme", key_hash="h" * 64, scopes=["infer"])
    assert key.scopes == ("infer",)
    assert store.get_api_key("k1") is not None
    assert store.get_api_key("nope") is None
    revoked = store.revoke_api_key("k1")
    assert revoked.revoked_at is not None
    assert [k.id for k in store.list_api_keys("acme")] == ["k1"]


def test_inference_records_batch_insert_and_query(store: Store) -> None:
    _seed_model(store)
    _add_version(store)
    tenant = store.get_tenant("acme")
    version = store.get_model_version("support", 1)
    records = [
        NewInferenceRecord(
            id=f"rec-{i}",
            endpoint_name="support-api",
            route="chat.completions",
            latency_ms=12.5,
            status="ok",
            http_status=200,
            tenant_id=tenant.id,
            version_id=version.id,
            prompt="hi",
            response="network",
            prompt_tokens=3,
            completion_tokens=1,
            created_at=datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC),
        )
        for i in range(5)
    ]
    assert store.add_inference_records(records) == 5
    assert store.count_inference_records(endpoint="support-api") == 5
    listed = store.list_inference_records(endpoint="support-api", tenant="acme", limit=2)
    assert [r.id for r in listed] == ["rec-4", "rec-3"]
    assert listed[0].version == "support:1" and listed[0].tenant == "acme"
    with pytest.raises(Conflict) as same_id:
        store.add_inference_records(records[:1])  # same id twice
    message = str(same_id.value)
    assert "cannot write 1 inference records: an inference record with this id exists" in message
    assert "INSERT" not in message and "duplicate key" not in message.lower()


def test_archived_version_cannot_take_alias_or_traffic(store: Store, store_url: str) -> None:
    _seed_model(store)
    _add_version(store)
    _add_version(store)
    store.create_endpoint("ep", model_ref="support:1", tenant="acme")
    engine = create_engine(store_url)
    with engine.begin() as conn:  # archiving arrives with the registry issue
        conn.execute(text("UPDATE model_versions SET status='archived' WHERE version=2"))
    engine.dispose()
    with pytest.raises(Conflict, match="archived"):
        store.set_alias("support", "champion", 2)
    with pytest.raises(Conflict, match="archived"):
        store.set_traffic("ep", {1: 50, 2: 50})


def _in_parallel(n: int, work: Callable[[Store, int], object], url: str) -> list[object]:
    """Run ``work(store, i)`` in ``n`` threads, each with its own store (connections),
    started together; returns the results (or the exceptions) in order."""
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        with Store.open(url, migrate=False) as s:
            barrier.wait(timeout=60)
            try:
                results[i] = work(s, i)
            except Exception as exc:  # reported by the assertions of the caller
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


def test_parallel_version_registrations_get_consecutive_numbers(store_url: str) -> None:
    with Store.open(store_url) as s:
        _seed_model(s)
    results = _in_parallel(6, lambda s, _i: _add_version(s), store_url)
    assert not [r for r in results if isinstance(r, Exception)], results  # no lost race
    assert sorted(int(str(r)) for r in results) == [1, 2, 3, 4, 5, 6]
    with Store.open(store_url) as s:
        assert [v.version for v in s.list_model_versions("support")] == [1, 2, 3, 4, 5, 6]
        events = s.list_audit_events(action="model_version.registered", limit=None)
        assert sorted(e.subject for e in events) == [f"support:{i}" for i in range(1, 7)]
        assert s.verify_audit_chain().ok


def test_parallel_tags_on_one_version_are_all_kept(store_url: str) -> None:
    with Store.open(store_url) as s:
        _seed_model(s)
        _add_version(s)
    results = _in_parallel(
        8, lambda s, i: s.set_version_tags("support:1", {f"t-{i}": "x"}), store_url
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    with Store.open(store_url) as s:
        tags = s.get_model_version("support", 1).tags
        events = s.list_audit_events(action="model_version.tagged", limit=None)
    assert tags == {f"t-{i}": "x" for i in range(8)}  # every audited change is in the store
    assert len(events) == 8


def test_parallel_gate_verdicts_tags_and_alias_moves_lose_nothing(store_url: str) -> None:
    with Store.open(store_url) as s:
        _seed_model(s)
        for _ in range(3):
            _add_version(s)
        s.set_alias("support", "staging", 1)

    def work(s: Store, i: int) -> object:
        if i % 3 == 0:
            verdict = {"gate": f"g{i}", "passed": True}
            return s.record_gate_verdicts("support", 2, [verdict], passed=True)
        if i % 3 == 1:
            return s.set_version_tags("support:2", {f"t-{i}": str(i)})
        return s.set_alias("support", "staging", 2 if i % 2 else 3)

    results = _in_parallel(9, work, store_url)
    assert not [r for r in results if isinstance(r, Exception)], results
    with Store.open(store_url) as s:
        v2 = s.get_model_version("support", 2)
        moves = s.list_audit_events(action="alias.set", limit=None, newest_first=False)
        final = s.get_registered_model("support").aliases["staging"]
    assert v2.tags == {f"t-{i}": str(i) for i in (1, 4, 7)}
    assert v2.metrics["exact_match"] == 1.0 and "gates" in v2.metrics  # merged, not replaced
    # each move names the version the alias really left: the moves form one sequence
    versions = [e.payload["version"] for e in moves]
    previous = [e.payload["previous"] for e in moves]
    assert previous == [None, *versions[:-1]] and versions[-1] == final


def test_a_lost_race_for_a_name_is_a_clear_conflict(store: Store, store_url: str) -> None:
    results = _in_parallel(4, lambda s, _i: s.create_tenant("acme"), store_url)
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(conflicts) == 3 and len([r for r in results if r is not None]) == 4
    for c in conflicts:
        assert "tenant 'acme' exists already" in str(c)
    twins = _in_parallel(
        4,
        lambda s, _i: s.register_base_model("tiny", "/m/tiny", {"w": "ab" * 32}).id,
        store_url,
    )
    assert len(set(twins)) == 1 and isinstance(twins[0], int), twins  # idempotent, no conflict


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(StoreUnavailable, match=r"cannot use the store at .*127\.0\.0\.1:9"):
        Store.open("postgresql://u:secret@127.0.0.1:9/db")


def test_password_is_never_shown(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as info:
        Store.open("postgresql://u:hunter2@127.0.0.1:9/db")
    assert "hunter2" not in str(info.value)


def test_missing_sqlite_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        Store.open(f"sqlite:///{tmp_path / 'nope' / 's.db'}")


def test_unsupported_url_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported store database"):
        Store.open("mysql://localhost/db")
    with pytest.raises(ConfigError, match="not a database URL"):
        Store.open("::::")
