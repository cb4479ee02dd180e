"""What budgets count as spent is kept per tenant, key, version and day (``usage_days``),
by every record path, and survives a retention purge; ``budgets recount`` counts it again
from the records; migration 0027 fills it from the records a store had. On SQLite and
PostgreSQL (``store_url``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clihelp import modelyard
from conftest import statements
from modelyard.access import create_api_key
from modelyard.audit import AccessPolicy
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._budgets import period_start
from test_upgrade_with_data import at_revision, put, record, world_0001  # noqa: F401
from worlds import fake_world

# A fixed month, so that "earlier this month" exists whatever today is.
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EARLY = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


@pytest.fixture
def ops(store_url: str) -> Iterator[Store]:
    """A store as the admin ``ops``, base ``tiny`` priced 1 per 1,000 prompt tokens and 2
    per 1,000 completion tokens, model ``bot`` version 1, tenant ``acme``."""
    with Store.open(store_url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as s:
        s.add_actor("ops", "admin")
        fake_world(s, tenant="acme", model="bot", endpoint=None, versions=1)
        s.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)
        yield s


def _record(store: Store, rid: str, at: datetime, **extra: Any) -> NewInferenceRecord:
    """1,000 prompt and 500 completion tokens of ``bot`` 1 for ``acme``: costs 2."""
    fields: dict[str, Any] = {
        "id": rid, "endpoint_name": "support", "route": "completions", "latency_ms": 1.0,
        "status": "ok", "http_status": 200, "tenant_id": store.get_tenant("acme").id,
        "version_id": store.get_model_version("bot", 1).id, "prompt_tokens": 1000,
        "completion_tokens": 500, "created_at": at,
    }  # fmt: skip
    return NewInferenceRecord(**(fields | extra))


def _usage(store: Store) -> list[tuple[Any, ...]]:
    with store._engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT day, key_id, requests, prompt_tokens, completion_tokens "
                "FROM usage_days ORDER BY day, key_id"
            )
        )
        return [(str(r[0])[:10], *r[1:]) for r in rows]


def test_a_purge_does_not_give_a_tenant_its_money_back(ops: Store) -> None:
    """A tenant keeping its records one day has spent this month what it spent on the 3rd,
    after the purge too: a server that seeds its total then (a restart) must not let it
    spend that again."""
    ops.set_budget("acme", "month", 10.0)
    ops.add_inference_records([_record(ops, "early", EARLY), _record(ops, "now", NOW)])
    month = period_start("month", NOW)
    assert ops.spent("acme", month) == pytest.approx(4.0)
    ops.set_retention("acme", 1)
    assert ops.purge_records("acme", NOW - timedelta(days=1)) == 1
    assert ops.count_inference_records() == 1
    assert ops.spent("acme", month) == pytest.approx(4.0)  # the 3rd's 2 still spent
    [status] = ops.budget_statuses(ops.list_budgets("acme"), NOW)
    assert (status["spent"], status["used_percent"]) == (pytest.approx(4.0), pytest.approx(40))
    assert ops.spent("acme", period_start("day", NOW)) == pytest.approx(2.0)


def test_every_record_path_keeps_the_usage_its_records_give(ops: Store) -> None:
    """Written (shadow copies and refusals without a version not counted), running then
    ended, closed after its server died, and discarded by a resumed batch job: the usage
    is what the records give, and counting it again from them changes nothing."""
    key = create_api_key(ops, "acme")[0].id
    ops.add_inference_records([
        _record(ops, "plain", NOW, api_key_id=key),
        _record(ops, "shadow", NOW, shadow=True),
        _record(ops, "refused", NOW, status="refused", http_status=429, version_id=None),
        _record(ops, "early", EARLY),
    ])  # fmt: skip
    assert _usage(ops) == [("2026-11-03", "", 1, 1000, 500), ("2026-11-20", key, 1, 1000, 500)]
    # the request journal: inserted running (not counted), then ended (counted once)
    started = [_record(ops, "long", NOW, completion_tokens=0), _record(ops, "dies", NOW)]
    ops.add_monitored_records([], started=started, server_id="srv-a")
    assert _usage(ops)[1] == ("2026-11-20", key, 1, 1000, 500)
    ended = _record(ops, "long", NOW, completion_tokens=700)
    ops.add_monitored_records([(ended, None)], running={"long"}, server_id="srv-a")
    assert _usage(ops)[0:2] == [("2026-11-03", "", 1, 1000, 500), ("2026-11-20", "", 1, 1000, 700)]
    # its server died: the running record closes as an error, with the tokens it had
    assert ops.close_running_records(["srv-a"], "the server stopped") == 1
    assert ("2026-11-20", "", 2, 2000, 1200) in _usage(ops)
    # a resumed batch job discards its first answers: their usage goes with them
    ops.add_inference_records([_record(ops, f"job-{i}", NOW, job_id="job-1") for i in range(3)])
    assert ("2026-11-20", "", 5, 5000, 2700) in _usage(ops)
    assert ops.discard_job_records("job-1", ["job-0", "job-2", "unknown"]) == 2
    assert ("2026-11-20", "", 3, 3000, 1700) in _usage(ops)
    before = _usage(ops)
    done = ops.recount_usage("acme", EARLY)
    assert done["records"] == 7 and _usage(ops) == before  # refused and shadow: counted, 0
    assert ops.spent("acme", EARLY) == pytest.approx(1000 * 4 / 1000 + 2200 * 2 / 1000 + 2)


def _older_release_records(url: str, tenant_id: int, version_id: int) -> None:
    """Records as a replica of a release before 0027 writes them: no usage."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for i in range(3):
                conn.execute(
                    sa.text(
                        "INSERT INTO inference_records (id, created_at, tenant_id, "
                        "endpoint_name, version_id, route, prompt_tokens, completion_tokens, "
                        "latency_ms, status, http_status, shadow, source) VALUES (:id, :at, "
                        ":tenant, 'support', :version, 'completions', 1000, 500, 1.0, 'ok', "
                        "200, :shadow, 'api')"
                    ).bindparams(sa.bindparam("at", type_=sa.DateTime(timezone=True))),
                    {"id": f"old-{i}", "at": datetime.now(UTC), "tenant": tenant_id,
                     "version": version_id, "shadow": False},
                )  # fmt: skip
    finally:
        engine.dispose()


def test_budgets_recount_counts_what_an_older_release_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"MODELYARD_STORE_URL": url, "MODELYARD_AUDIT_KEY": "5e" * 32}
    monkeypatch.setenv("MODELYARD_AUDIT_KEY", env["MODELYARD_AUDIT_KEY"])
    assert modelyard("init", home=home, env=env).code == 0
    with Store.open(url) as store:
        fake_world(store, tenant="acme", model="bot", endpoint=None, versions=1)
        store.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)
        tid, vid = store.get_tenant("acme").id, store.get_model_version("bot", 1).id
    assert modelyard("budgets", "set", "acme", "--amount", "20", home=home, env=env).code == 0
    _older_release_records(url, tid, vid)
    r = modelyard("budgets", "list", "--json", home=home, env=env)
    assert [row["spent"] for row in json.loads(r.out)] == [0.0]
    # money: an approver's
    r = modelyard("--actor", "dev", "budgets", "recount", "acme", "--since", "1d", home=home,
                  env=env)  # fmt: skip
    assert r.code == 1 and "needs role approver" in r.err, (r.out, r.err)
    r = modelyard("budgets", "recount", "acme", "--since", "1d", home=home, env=env)
    assert r.code == 0, r.err
    assert "recounted the usage of acme" in r.out and "3 records" in r.out, r.out
    assert "(all keys) per day: 6 spent of 20 (30 %)" in r.out, r.out
    r = modelyard("budgets", "list", "--json", home=home, env=env)
    assert [row["spent"] for row in json.loads(r.out)] == [6.0]
    # twice is once: counted again, not added again
    r = modelyard("budgets", "recount", "acme", "--since", "1d", "--json", home=home, env=env)
    assert r.code == 0 and json.loads(r.out)["budgets"][0]["spent"] == 6.0
    r = modelyard("audit", "log", "--json", home=home, env=env)
    assert [e["action"] for e in json.loads(r.out)].count("usage.recounted") == 2
    # days a purge emptied: their usage stays, and is not counted again
    with Store.open(url) as store:
        assert store.purge_records("acme", datetime.now(UTC) + timedelta(seconds=1)) == 3
    r = modelyard("budgets", "recount", "acme", "--since", "1d", home=home, env=env)
    assert r.code == 2 and "were purged (retention)" in r.err and "recount from" in r.err
    assert "Traceback" not in r.err
    r = modelyard("budgets", "recount", "acme", "--since", "someday", home=home, env=env)
    assert r.code == 2 and "--since" in r.err and "Traceback" not in r.err


def test_migration_0027_counts_the_records_a_store_had(at_revision: Any) -> None:  # noqa: F811
    old = at_revision("0026")
    day = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    with old.engine.begin() as conn:
        world_0001(conn)
        put(conn, "token_prices", {"base_model": "tiny-base", "input_per_1k": 1.0,
                                    "output_per_1k": 2.0, "updated_at": day})  # fmt: skip
        for row in (
            record("a", day),
            record("b", day + timedelta(hours=15)),  # the next day
            record("c", day, api_key_id=None, status="error", http_status=500),
            record("shadow", day, shadow=True),
            record("running", day, status="running"),
            record("unrouted", day, version_id=None, status="refused", http_status=404),
        ):  # one at a time: a row's own columns
            put(conn, "inference_records", row)  # fmt: skip
    old.upgrade()
    with Store.open(old.url) as store:
        assert _usage(store) == [
            ("2026-11-25", "", 1, 7, 3), ("2026-11-25", "Ab3dEf6hIj9k", 1, 7, 3),
            ("2026-11-26", "Ab3dEf6hIj9k", 1, 7, 3),
        ]  # fmt: skip
        assert store.spent("acme", day) == pytest.approx(3 * 13 / 1000)


def test_reading_spend_reads_the_usage_not_the_records(ops: Store) -> None:
    """A month's spend is read from at most a row per day, key and version: neither
    ``spent`` (a server's seed) nor ``budget_statuses`` (``/budgets``, the alert rule)
    reads a record."""
    ops.set_budget("acme", "month", 10.0)
    ops.add_inference_records(
        [_record(ops, f"r{i}", EARLY + timedelta(hours=i)) for i in range(30)]
    )
    with statements(ops) as sent:
        assert ops.spent("acme", period_start("month", NOW)) == pytest.approx(60.0)
        [status] = ops.budget_statuses(ops.list_budgets("acme"), NOW)
    assert status["spent"] == pytest.approx(60.0)
    read = " ".join(s for s, _ in sent)
    assert "usage_days" in read and "inference_records" not in read
