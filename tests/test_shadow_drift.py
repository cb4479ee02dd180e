"""Drift reads what users sent: the requests a version answered for them on the endpoint,
never the copies mirrored to it as the endpoint's shadow.

A version both in the plan (a canary) and the endpoint's shadow answers two kinds of
requests: its users' share, and copies of the requests the other versions answered
(recorded ``shadow``, never returned, served beside the live traffic). Drift mixed them:
the shadow copies' numbers (their latency, their answers) made the version's features
drift though nothing its users sent or got had changed, and ``monitor drift
--fail-on-drift`` failed a CI job or cron on it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.monitoring import compute_drift, text_features
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world, home_store

N = 40  # answers a side: enough for every method (min_samples 30)


def _canary_also_shadowed(store: Store, now: datetime) -> None:
    """acme-support: acme-bot 1 and 2 half each, and 2 also the shadow. Version 2's users
    got answers in 100-139 ms in the hour before and in the last hour alike; in the last
    hour it also answered N shadow copies, in 2-2.04 s."""
    store.set_traffic("acme-support", {1: 50, 2: 50})
    store.set_shadow("acme-support", 2, 1.0)
    tid = store.get_tenant("acme").id
    v2 = store.get_model_version("acme-bot", 2).id

    def record(rid: str, at: datetime, latency: float, shadow: bool = False) -> NewInferenceRecord:
        return NewInferenceRecord(
            id=rid, endpoint_name="acme-support", route="chat.completions", latency_ms=latency,
            status="ok", http_status=200, tenant_id=tid, version_id=v2, prompt=None,
            prompt_tokens=10, completion_tokens=5, created_at=at, shadow=shadow,
        )  # fmt: skip

    before, last = now - timedelta(minutes=110), now - timedelta(minutes=50)
    items = [
        (record(f"b{i}", before + timedelta(seconds=i), 100.0 + i), text_features("hi", "ok"))
        for i in range(N)
    ]
    items += [
        (record(f"l{i}", last + timedelta(seconds=i), 100.0 + i), text_features("hi", "ok"))
        for i in range(N)
    ]
    items += [
        (record(f"x{i}-shadow", last + timedelta(seconds=i), 2000.0 + i, shadow=True),
         text_features("hi", "ok"))
        for i in range(N)
    ]  # fmt: skip
    store.add_monitored_records(items)


def test_a_shadow_copy_is_in_none_of_a_version_s_drift(
    acme_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    with home_store(acme_home) as store:
        _canary_also_shadowed(store, now)
    args = ["monitor", "drift", "--endpoint", "acme-support", "--version", "2",
            "--reference", "previous:1h", "--end", now.isoformat()]  # fmt: skip
    code = main([*args, "--fail-on-drift", "--json"])
    out = capsys.readouterr().out
    features = {f["feature"]: f for f in json.loads(out)["features"]}
    latency = features["latency_ms"]
    assert (latency["n_reference"], latency["n_current"]) == (N, N)  # the users' answers
    assert latency["drifted"] is False
    assert code == 0, out  # nothing drifted: a CI job or cron on it passes

    # the run it stored, as alert rules read it
    with home_store(acme_home) as store:
        report = compute_drift(
            store, "acme-support", version="2", reference="previous:1h", now=now, save=False
        )
    assert report.drifted_features == []
    assert all(r.n_current in (0, N) for r in report.results)


def test_migration_0029_marks_the_features_of_shadow_copies_recorded_before(
    store_url: str,
) -> None:
    """Features written before 0029 say nothing of a shadow: their record does."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from modelyard.store._engine import _alembic_config

    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    engine = create_engine(store_url)
    try:
        cfg = _alembic_config(engine)
        with Store.open(store_url) as store:
            fake_world(store, model="acme-bot", endpoint="acme-support")
            tid = store.get_tenant("acme").id
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0028")
        with engine.begin() as conn:  # a user's request and a shadow's copy, as 0028 wrote them
            for rid, shadow in (("live", False), ("live-shadow", True)):
                conn.execute(
                    text(
                        "INSERT INTO inference_records (id, created_at, tenant_id, "
                        "endpoint_name, route, prompt_tokens, completion_tokens, latency_ms, "
                        "status, http_status, shadow, source) VALUES (:id, :t, :tid, "
                        "'acme-support', 'completions', 7, 3, :ms, 'ok', 200, :shadow, 'api')"
                    ),
                    {"id": rid, "t": at, "tid": tid, "ms": 900.0 if shadow else 12.5,
                     "shadow": shadow},
                )  # fmt: skip
                conn.execute(
                    text(
                        "INSERT INTO record_features (record_id, endpoint_name, version_id, "
                        "status, created_at, prompt_tokens, completion_tokens, latency_ms, "
                        "prompt_chars, response_chars, prompt_non_ascii, prompt_digits, "
                        "response_non_ascii, response_digits) VALUES (:id, 'acme-support', "
                        "NULL, 'ok', :t, 7, 3, :ms, 40, 10, 0, 0, 0, 0)"
                    ),
                    {"id": rid, "t": at, "ms": 900.0 if shadow else 12.5},
                )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    with Store.open(store_url) as store:
        cols = store.feature_columns(
            endpoint="acme-support",
            version_id=None,
            since=at - timedelta(minutes=1),
            until=at + timedelta(minutes=1),
        )
    assert cols["latency_ms"] == (12.5,)  # the user's request alone
