"""Monitoring in the store: profiles match their records, retention, drift methods, alerts."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from modelyard.errors import ConfigError
from modelyard.monitoring import (
    AlertRules,
    DriftConfig,
    FeatureRule,
    compare,
    default_method,
    post_webhook,
    text_features,
    tick,
    update_profiles,
)
from modelyard.monitoring._alerts import record_metrics
from modelyard.monitoring._stats import METHODS, Pair, SortedValues
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _setup(store: Store) -> int:
    fake_world(store, model="acme-bot", endpoint="acme-support")
    return store.get_tenant("acme").id


def _add(store: Store, tenant_id: int, rows: list[dict[str, Any]]) -> None:
    v1 = store.get_model_version("acme-bot", 1).id
    v2 = store.get_model_version("acme-bot", 2).id
    items = []
    for i, r in enumerate(rows):
        prompt = r.get("prompt", "hello there")
        rec = NewInferenceRecord(
            id=r.get("id", f"r{i}-{r['at'].timestamp()}"),
            endpoint_name="acme-support",
            route="chat.completions",
            latency_ms=r["latency"],
            status=r.get("status", "ok"),
            http_status=200 if r.get("status", "ok") == "ok" else 503,
            tenant_id=tenant_id,
            version_id=v2 if r.get("v") == 2 else v1,
            prompt=None,
            prompt_tokens=r.get("tin", 10),
            completion_tokens=r.get("tout", 5),
            ttft_ms=r.get("ttft"),
            created_at=r["at"],
        )
        items.append((rec, text_features(prompt, "ok")))
    store.add_monitored_records(items)


@pytest.fixture
def db(store: Store) -> Store:
    """The store on SQLite and on PostgreSQL (``MODELYARD_TEST_POSTGRES_URL``)."""
    return store


def test_a_first_profile_run_over_a_year_of_history_profiles_only_its_hours(db: Store) -> None:
    """The first run starts at the oldest record: it recomputed every hour since, one query
    each, empty or not (a year is 8,760; `monitor profiles` took half a minute on a store
    with two hours of records a year apart). It computes the hours that hold records."""
    tenant_id = _setup(db)
    old = T0 - timedelta(days=365)
    _add(db, tenant_id, [{"at": old + timedelta(minutes=m), "latency": 10.0} for m in (1, 2)]
         + [{"at": T0 + timedelta(minutes=m), "latency": 20.0} for m in (1, 2, 3)])  # fmt: skip
    update = update_profiles(db, now=T0 + timedelta(minutes=30))
    assert (update.hours, update.days) == (2, 2)
    hours = db.list_profiles(window="hour", endpoint="acme-support")
    assert [(p.start, p.requests) for p in hours] == [(old, 2), (T0, 3)]
    days = db.list_profiles(window="day", endpoint="acme-support")
    assert [p.requests for p in days] == [2, 3]


def test_profiles_match_the_records_and_updates_are_incremental(db: Store) -> None:
    tid = _setup(db)
    db.set_token_price("tiny", input_per_1k=0.5, output_per_1k=2.0)
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for i in range(200):
        hour = i % 2
        rows.append(
            {
                "id": f"rec{i}",
                "at": T0 + timedelta(hours=hour, seconds=i),
                "latency": float(rng.lognormal(4, 0.5)),
                "ttft": float(rng.uniform(1, 9)),
                "status": "error" if i % 10 == 0 else "ok",
                "v": 2 if i % 3 == 1 else 1,
                "tin": int(rng.integers(5, 50)),
                "tout": int(rng.integers(1, 20)),
            }
        )
    _add(db, tid, rows)
    db.add_feedback("rec2", tenant="acme", score=1.0)
    db.add_feedback("rec4", tenant="acme", score=-0.5)
    now = T0 + timedelta(hours=3)
    first = update_profiles(db, now=now)
    # the two hours with records (10:00, 11:00); 12:00 and 13:00 have none to profile
    assert first.hours == 2 and first.days == 1
    hours = db.list_profiles(window="hour", endpoint="acme-support")
    assert {(p.start, p.version) for p in hours} == {
        (T0 + timedelta(hours=h), f"acme-bot:{v}") for h in (0, 1) for v in (1, 2)
    }
    for p in hours:
        mine = [
            r
            for r in rows
            if p.start <= r["at"] < p.start + timedelta(hours=1)
            and f"acme-bot:{r['v']}" == p.version
        ]
        ok = [r for r in mine if r["status"] == "ok"]  # latency: of the requests answered ok
        lat = np.array([r["latency"] for r in ok])
        assert p.requests == len(mine)
        assert p.errors == sum(r["status"] == "error" for r in mine)
        assert p.latency_p50_ms == pytest.approx(np.percentile(lat, 50))
        assert p.latency_p95_ms == pytest.approx(np.percentile(lat, 95))
        assert p.latency_p99_ms == pytest.approx(np.percentile(lat, 99))
        assert p.ttft_p50_ms == pytest.approx(np.percentile([r["ttft"] for r in ok], 50))
        assert p.tokens_in == sum(r["tin"] for r in mine)
        assert p.tokens_out == sum(r["tout"] for r in mine)
        assert p.cost == pytest.approx((p.tokens_in * 0.5 + p.tokens_out * 2.0) / 1000)
    fb = {p.version: (p.feedback_count, p.feedback_sum) for p in hours if p.start == T0}
    assert fb["acme-bot:1"] == (1, 1.0)  # rec2: hour 0, version 1
    assert fb["acme-bot:2"] == (1, -0.5)  # rec4: hour 0, version 2
    day = db.list_profiles(window="day", endpoint="acme-support")
    assert sum(p.requests for p in day) == 200
    assert sum(p.errors for p in day) == 20
    all_lat = np.array([r["latency"] for r in rows if r["v"] == 1 and r["status"] == "ok"])
    v1_day = next(p for p in day if p.version == "acme-bot:1")
    assert v1_day.latency_p95_ms == pytest.approx(np.percentile(all_lat, 95), rel=0.05)

    # Running again without changes rewrites only the hours near the watermark: same numbers.
    again = update_profiles(db, now=now)
    # 10:00 (its feedback is newer than the watermark); 12:00 and 13:00, near the watermark,
    # have neither records nor profiles
    assert again.hours == 1

    def numbers(ps: list[Any]) -> list[tuple[Any, ...]]:
        return [(p.start, p.version, p.requests, p.errors, p.latency_p95_ms, p.cost) for p in ps]

    assert numbers(db.list_profiles(window="hour")) == numbers(hours)
    # Feedback on an old record is picked up by the next run.
    db.add_feedback("rec1", tenant="acme", score=1.0)  # hour 1, version 2 (1 % 3 == 1)
    update_profiles(db, now=now + timedelta(minutes=1))
    h1 = next(
        p
        for p in db.list_profiles(window="hour")
        if p.start == T0 + timedelta(hours=1) and p.version == "acme-bot:2"
    )
    assert (h1.feedback_count, h1.feedback_sum) == (1, 1.0)


def test_a_profiles_error_rate_is_the_alerts_refused_and_cancelled_left_out(db: Store) -> None:
    """Refused requests (a client's mistake) and cancelled ones say nothing of a version:
    the profiles, the report and `monitor profiles` divide by the requests that ended, as
    alert rules and rollout guards do (the profiles counted every request: 3/13, not 3/9)."""
    tid = _setup(db)
    statuses = ["ok"] * 6 + ["error"] * 2 + ["timeout", "cancelled"] + ["refused"] * 3
    _add(db, tid, [{"at": T0 + timedelta(seconds=i), "latency": 10.0, "status": st}
                   for i, st in enumerate(statuses)])  # fmt: skip
    update_profiles(db, now=T0 + timedelta(hours=3))
    (hour,) = db.list_profiles(window="hour", endpoint="acme-support")
    (day,) = db.list_profiles(window="day", endpoint="acme-support")
    alerting = record_metrics(db, "acme-support", T0, T0 + timedelta(hours=1))
    assert (hour.requests, hour.answered, hour.errors) == (13, 9, 3)
    assert hour.error_rate == day.error_rate == alerting["error_rate"] == 3 / 9


def test_retention_deletes_old_raw_records_after_profiling_and_keeps_the_audit_chain(
    db: Store,
) -> None:
    tid = _setup(db)
    now = datetime.now(UTC)
    old = [
        {"id": f"old{i}", "at": now - timedelta(days=3, minutes=i), "latency": 10.0}
        for i in range(5)
    ]
    new = [
        {"id": f"new{i}", "at": now - timedelta(minutes=30 + i), "latency": 10.0} for i in range(3)
    ]
    _add(db, tid, old + new)
    db.add_feedback("old1", tenant="acme", score=1.0)
    with pytest.raises(ConfigError, match="at least 1 day"):
        db.set_retention("acme", 0)
    db.set_retention("acme", 2)
    events_before = len(db.list_audit_events(limit=None))
    report = tick(db, now=now, rules=None, home=Path("/nonexistent"))
    assert report.purged == {"acme": 5}
    left = {r["id"] for r in db.query_records(limit=None)}
    assert left == {f"new{i}" for i in range(3)}
    # the profiles of the deleted records stay
    assert sum(p.requests for p in db.list_profiles(window="day")) == 8
    events = db.list_audit_events(limit=None)
    assert len(events) == events_before + 1
    assert events[0].action == "records.purged" and events[0].payload["records"] == 5
    assert db.verify_audit_chain().ok
    assert tick(db, now=now, home=Path("/nonexistent")).purged == {}


def test_drift_methods_agree_with_scipy_and_evidently_defaults() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.3, 1, 2500)
    pair = Pair(SortedValues.of(a), SortedValues.of(b))
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="sturges")
    ra = np.histogram(a, edges)[0] / a.size
    rb = np.histogram(b, edges)[0] / b.size
    ra, rb = np.where(ra == 0, 1e-4, ra), np.where(rb == 0, 1e-4, rb)
    assert METHODS["psi"].compute(pair, False) == pytest.approx(np.sum((ra - rb) * np.log(ra / rb)))
    assert METHODS["jensenshannon"].compute(pair, False) == pytest.approx(jensenshannon(ra, rb))
    assert METHODS["wasserstein"].compute(pair, False) == pytest.approx(
        stats.wasserstein_distance(a, b) / np.std(a)
    )
    assert METHODS["ks"].compute(pair, False) == pytest.approx(
        stats.ks_2samp(a, b).pvalue, rel=0.2, abs=1e-12
    )
    assert default_method(500, 100) == "ks" and default_method(500, 3) == "chisquare"
    assert default_method(5000, 100) == "wasserstein"
    assert default_method(5000, 2) == "jensenshannon"
    # the verdicts: same distribution no, shifted yes, few samples no verdict
    same = compare("latency_ms", rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))
    shifted = compare("latency_ms", rng.normal(0, 1, 2000), rng.normal(1, 1, 2000))
    few = compare("latency_ms", rng.normal(0, 1, 2000), rng.normal(1, 1, 10))
    assert (same["method"], same["drifted"], same["status"]) == ("wasserstein", False, "ok")
    assert (shifted["drifted"], shifted["status"]) == (True, "drift")
    assert (few["drifted"], few["status"], few["value"]) == (None, "not_enough_data", None)


def _hook_server() -> tuple[ThreadingHTTPServer, list[dict[str, Any]], list[int]]:
    received: list[dict[str, Any]] = []
    answers: list[int] = []  # status codes to answer first (then 200)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = answers.pop(0) if answers else 200
            if code == 200:
                received.append(json.loads(body))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received, answers


def test_an_alert_fires_and_resolves_once_each_with_webhook_retries_and_audited_retraining(
    db: Store, tmp_path: Path
) -> None:
    tid = _setup(db)
    server, received, answers = _hook_server()
    marker = tmp_path / "retrained"
    rules = AlertRules.parse(
        {
            "notify": {
                "webhook": {
                    "url": f"http://127.0.0.1:{server.server_port}/hook",
                    "timeout_s": 2,
                    "retries": 2,
                    "backoff_s": 0.01,
                }
            },
            "rules": [
                {
                    "name": "errors-high",
                    "metric": "error_rate",
                    "window": "5m",
                    "comparison": ">",
                    "threshold": 0.2,
                    "for": "1m",
                    "severity": "critical",
                    "labels": {"team": "support"},
                    "retrain": [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"],
                }
            ],
        }
    )
    try:
        t1 = T0 + timedelta(hours=1)
        _add(
            db,
            tid,
            [
                {
                    "at": t1 - timedelta(seconds=i),
                    "latency": 5.0,
                    "status": "error" if i % 2 else "ok",
                }
                for i in range(20)
            ],
        )
        first = tick(db, now=t1, rules=rules, home=tmp_path)
        assert [(t.before, t.alert.state) for t in first.transitions] == [("inactive", "pending")]
        assert received == []
        answers.append(503)  # the webhook fails once: retried
        fired = tick(db, now=t1 + timedelta(minutes=1, seconds=30), rules=rules, home=tmp_path)
        assert [t.alert.state for t in fired.transitions] == ["firing"]
        assert [r["status"] for r in received] == ["firing"]
        alert = received[0]["alert"]
        assert alert["rule"] == "errors-high" and alert["value"] == pytest.approx(0.5)
        assert alert["labels"] == {
            "endpoint": "acme-support",
            "severity": "critical",
            "team": "support",
        }
        hook_notes = [n for n in db.list_alert_notifications() if n.target != "log"]
        assert [(n.state, n.ok, n.attempts) for n in hook_notes] == [("firing", True, 2)]
        # deduplicated: still firing, nothing new sent
        assert tick(db, now=t1 + timedelta(minutes=2), rules=rules, home=tmp_path).transitions == ()
        assert len(received) == 1
        assert db.list_alert_states(state="firing")[0].rule == "errors-high"
        # healthy traffic later: resolved, notified once
        t2 = t1 + timedelta(minutes=20)
        _add(db, tid, [{"at": t2 - timedelta(seconds=i), "latency": 5.0} for i in range(10)])
        resolved = tick(db, now=t2, rules=rules, home=tmp_path)
        assert [t.alert.state for t in resolved.transitions] == ["resolved"]
        assert [r["status"] for r in received] == ["firing", "resolved"]
        tick(db, now=t2 + timedelta(minutes=1), rules=rules, home=tmp_path)
        assert len(received) == 2
    finally:
        server.shutdown()
        server.server_close()
    started = db.list_audit_events(action="alert.retrain_started")
    assert len(started) == 1 and started[0].subject == "errors-high"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "x"


def test_bad_alert_rules_get_one_clear_error() -> None:
    with pytest.raises(
        ConfigError, match=r"rules\.0\.metric: unknown metric 'eror_rate'.*error_rate"
    ):
        AlertRules.parse({"rules": [{"name": "x", "metric": "eror_rate", "threshold": 1}]})
    with pytest.raises(ConfigError, match=r"rules\.0\.window"):
        AlertRules.parse(
            {"rules": [{"name": "x", "metric": "error_rate", "threshold": 1, "window": "5 min"}]}
        )
    with pytest.raises(ConfigError, match=r"notify\.webhook\.url"):
        AlertRules.parse({"notify": {"webhook": {"url": "ftp://x"}}, "rules": []})


def test_the_default_reference_is_the_versions_evaluation_dataset(
    db: Store, tmp_path: Path
) -> None:
    import hashlib

    from modelyard.artifacts import ArtifactStore
    from modelyard.data._templates import template_named
    from modelyard.monitoring import DriftConfig, compute_drift

    tid = _setup(db)
    rng = np.random.default_rng(3)
    words = ["printer", "invoice", "account", "password", "order", "refund", "delivery", "screen"]
    rows = [
        {
            "instruction": " ".join(rng.choice(words, int(rng.integers(3, 9)))),
            "input": "",
            "output": " ".join(rng.choice(words, int(rng.integers(2, 6)))),
        }
        for _ in range(80)
    ]
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    (tmp_path / "eval.jsonl").write_bytes(data)
    artifacts = ArtifactStore(tmp_path / "artifacts")
    blob = artifacts.put_file(tmp_path / "eval.jsonl", kind="dataset")
    digest = hashlib.sha256(data).hexdigest()
    db.register_dataset(
        "support-eval",
        digest=digest,
        artifact_digest=blob.digest,
        format="alpaca",
        n_rows=len(rows),
        report={},
    )
    db.create_model_version(
        "acme-bot",
        kind="adapter",
        artifact_digest="00" * 32,
        base_model="tiny",
        run_id=None,
        lineage={"prompt_template": "alpaca", "dataset": {"eval_digest": digest}},
        metrics={},
    )
    db.set_traffic("acme-support", {3: 100})
    v3 = db.get_model_version("acme-bot", 3).id
    template = template_named("alpaca")
    now = datetime.now(UTC)

    def traffic(prompts: list[str], prefix: str) -> None:
        db.add_monitored_records(
            [
                (
                    NewInferenceRecord(
                        id=f"{prefix}{i}",
                        endpoint_name="acme-support",
                        route="completions",
                        latency_ms=5.0,
                        status="ok",
                        http_status=200,
                        tenant_id=tid,
                        version_id=v3,
                        created_at=now - timedelta(seconds=i + 1),
                    ),
                    text_features(p, "order refund"),
                )
                for i, p in enumerate(prompts)
            ]
        )

    like_eval = [
        template.prompt(
            {"instruction": " ".join(rng.choice(words, int(rng.integers(3, 9)))), "output": "x"}
        )
        for _ in range(60)
    ]
    traffic(like_eval, "a")
    config = DriftConfig.parse(methods=["prompt_chars=ks"])
    same = compute_drift(
        db, "acme-support", window=timedelta(minutes=5), now=now, artifacts=artifacts, config=config
    )
    by = {r.feature: r for r in same.results}
    assert same.version == "acme-bot:3" and same.reference == "eval"
    assert by["prompt_chars"].n_reference == 80 and by["prompt_chars"].n_current == 60
    assert by["prompt_chars"].drifted is False
    assert by["latency_ms"].status == "no_reference"  # not in a dataset: no verdict
    longer = [
        template.prompt({"instruction": " ".join(rng.choice(words, 40)), "output": "x"})
        for _ in range(60)
    ]
    traffic(longer, "b")
    later = compute_drift(
        db, "acme-support", window=timedelta(minutes=5), now=now, artifacts=artifacts, config=config
    )
    assert {r.feature: r.drifted for r in later.results}["prompt_chars"] is True
    assert [r.run_id for r in db.list_drift_results(latest=True)] == [later.results[0].run_id] * 10


def test_drift_methods_register_by_name_and_bad_ones_are_refused() -> None:
    from modelyard.monitoring import Method, register_method

    def mean_shift(pair: Pair, categorical: bool) -> float:
        return abs(float(pair.cur.values.mean() - pair.ref.values.mean()))

    try:
        register_method(Method("mean_shift", "absolute mean shift", 0.5, "above", mean_shift))
        rng = np.random.default_rng(0)
        out = compare(
            "latency_ms",
            rng.normal(0, 1, 500),
            rng.normal(1, 1, 500),
            FeatureRule(method="mean_shift"),
        )
        assert (out["method"], out["drifted"], out["threshold"]) == ("mean_shift", True, 0.5)
        with pytest.raises(ConfigError, match="exists already"):
            register_method(Method("mean_shift", "again", 0.5, "above", mean_shift))
        with pytest.raises(ConfigError, match="invalid drift method name"):
            register_method(Method("Mean Shift", "bad", 0.5, "above", mean_shift))
    finally:
        METHODS.pop("mean_shift", None)
    with pytest.raises(ConfigError, match="unknown drift method 'psy'"):
        DriftConfig.parse(methods=["prompt_chars=psy"])
    with pytest.raises(ConfigError, match="invalid --threshold 'prompt_chars=high'"):
        DriftConfig.parse(thresholds=["prompt_chars=high"])


def test_a_hanging_webhook_times_out_and_the_failure_is_kept() -> None:
    from modelyard.monitoring._alerts import WebhookConfig

    gate = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            gate.wait(5)  # longer than the timeout
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = WebhookConfig(
            url=f"http://127.0.0.1:{server.server_port}/", timeout_s=0.3, retries=1, backoff_s=0.0
        )
        started = time.monotonic()
        delivery = post_webhook(hook, {"status": "firing"})
        elapsed = time.monotonic() - started
    finally:
        gate.set()
        server.shutdown()
        server.server_close()
    assert (delivery.ok, delivery.attempts) == (False, 2)
    assert delivery.error is not None and "Timeout" in delivery.error
    assert elapsed < 3


def test_migration_0007_copies_record_columns_onto_existing_features(store_url: str) -> None:
    """Features written before 0007 get their record's endpoint, version, time and numbers."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from modelyard.store._engine import _alembic_config

    engine = create_engine(store_url)
    try:
        cfg = _alembic_config(engine)
        # The world is made by today's store at head, then the schema goes back to 0006
        # (today's store code cannot write a 0006 schema: it keeps the audit head, 0009).
        with Store.open(store_url) as store:
            _setup(store)
            tid = store.get_tenant("acme").id
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        with engine.begin() as conn:  # a record and its features as 0005/0006 wrote them
            conn.execute(
                text(
                    "INSERT INTO inference_records (id, created_at, tenant_id, endpoint_name, "
                    "route, prompt_tokens, completion_tokens, latency_ms, status, http_status, "
                    "shadow) VALUES ('old1', :t, :tid, 'acme-support', 'completions', 7, 3, 12.5, "
                    "'ok', 200, :f)"
                ),
                {"t": T0, "tid": tid, "f": False},
            )
            conn.execute(
                text(
                    "INSERT INTO record_features (record_id, prompt_chars, response_chars, "
                    "prompt_non_ascii, prompt_digits, response_non_ascii, response_digits) "
                    "VALUES ('old1', 40, 10, 0, 0, 0, 0)"
                )
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
            since=T0 - timedelta(minutes=1),
            until=T0 + timedelta(minutes=1),
        )
    assert cols["prompt_chars"] == (40,) and cols["prompt_tokens"] == (7,)
    assert cols["latency_ms"] == (12.5,)
