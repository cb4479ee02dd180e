"""Alert metrics of an endpoint's traffic are aggregated in the database (no row object
per record), and say what numpy said of the raw records: counts, sums and means, and
percentiles to the last bit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from modelyard.monitoring import AlertRules, evaluate_rules
from modelyard.monitoring._alerts import record_metrics
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._aggregates import linear_percentile
from worlds import fake_world

STATUSES = ("ok", "ok", "ok", "error", "timeout", "cancelled", "refused", "running")


def _numpy_metrics(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """What record_metrics computed before: numpy over the records of the window (the
    latency and time to first token of those answered ok)."""
    statuses = [r["status"] for r in rows]
    n = sum(1 for st in statuses if st in ("ok", "error", "timeout"))
    errors = sum(1 for st in statuses if st in ("error", "timeout"))
    timed = [r for r in rows if r["status"] == "ok"]
    latency = np.array([r["latency_ms"] for r in timed], dtype=float)
    ttft = np.array([r["ttft_ms"] for r in timed if r["ttft_ms"] is not None], dtype=float)
    scores = [r["score"] for r in rows if r["score"] is not None]

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if a.size else None

    return {
        "requests": float(n),
        "errors": float(errors),
        "error_rate": errors / n if n else None,
        "p50_latency_ms": pct(latency, 50),
        "p95_latency_ms": pct(latency, 95),
        "p99_latency_ms": pct(latency, 99),
        "mean_latency_ms": float(latency.mean()) if latency.size else None,
        "p95_ttft_ms": pct(ttft, 95),
        "tokens_in": float(sum(r["prompt_tokens"] for r in rows)),
        "tokens_out": float(sum(r["completion_tokens"] for r in rows)),
        "feedback_score": sum(scores) / len(scores) if scores else None,
        "feedback_count": float(len(scores)),
    }


def _traffic(store: Store, n: int, now: datetime, seed: int) -> list[dict[str, Any]]:
    """``n`` records of acme-support in the last 30 minutes (ties, no ttft on some,
    feedback on some), and one outside the window either side."""
    rng = np.random.default_rng(seed)
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    rows: list[dict[str, Any]] = []
    for i in range(n):
        latency = float(rng.choice([12.5, 40.0])) if i % 7 == 0 else float(rng.lognormal(4, 1))
        rows.append({
            "id": f"r{seed}-{i}", "status": STATUSES[i % len(STATUSES)], "latency_ms": latency,
            "ttft_ms": None if i % 3 == 0 else float(rng.uniform(1, 300)),
            "prompt_tokens": int(rng.integers(0, 500)),
            "completion_tokens": int(rng.integers(0, 900)),
            "score": float(rng.choice([-1.0, 0.5, 1.0])) if i % 4 == 0 else None,
            "created_at": now - timedelta(seconds=float(rng.uniform(1, 1800))),
        })  # fmt: skip
    outside = [now - timedelta(hours=2), now + timedelta(seconds=5)]
    store.add_inference_records([
        NewInferenceRecord(
            id=r["id"], endpoint_name="acme-support", route="chat.completions",
            latency_ms=r["latency_ms"], ttft_ms=r["ttft_ms"], status=r["status"],
            http_status=200, tenant_id=tid, version_id=vid, prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"], created_at=r["created_at"],
        )
        for r in rows
    ] + [
        NewInferenceRecord(
            id=f"out{seed}-{i}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=99_999.0, ttft_ms=99_999.0, status="error", http_status=503,
            tenant_id=tid, version_id=vid, prompt_tokens=7, created_at=at,
        )
        for i, at in enumerate(outside)
    ])  # fmt: skip
    for r in rows:
        if r["score"] is not None:
            store.add_feedback(r["id"], tenant="acme", score=r["score"])
    return rows


def _same(got: dict[str, float | None], want: dict[str, float | None]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if value is None:
            assert got[name] is None, name
        elif "mean" in name or name == "feedback_score":  # summed in SQL, in its order
            assert got[name] == pytest.approx(value, rel=1e-12), name
        else:
            assert got[name] == value, name  # percentiles and counts: to the last bit


@pytest.mark.parametrize("n", [0, 1, 2, 3, 21, 101, 397])
def test_record_metrics_match_numpy_over_the_raw_records(store: Store, n: int) -> None:
    fake_world(store, model="acme-bot", endpoint="acme-support")
    now = datetime.now(UTC)
    rows = _traffic(store, n, now, seed=n)
    got = record_metrics(store, "acme-support", now - timedelta(hours=1), now)
    _same(got, _numpy_metrics(rows))


def test_record_metrics_read_no_record_row(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """They loaded the whole window's records (every column) to compute a dozen numbers."""
    fake_world(store, model="acme-bot", endpoint="acme-support")
    now = datetime.now(UTC)
    rows = _traffic(store, 40, now, seed=5)

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("record_metrics read the records one by one")

    monkeypatch.setattr(type(store), "query_records", refuse)
    _same(
        record_metrics(store, "acme-support", now - timedelta(hours=1), now), _numpy_metrics(rows)
    )


def test_an_alert_s_value_is_the_p95_numpy_gives_of_the_window(store: Store) -> None:
    """What a user sees: the alert's value (monitor alerts, the admin API) is the p95 of
    the latencies of the window's requests answered ok."""
    fake_world(store, model="acme-bot", endpoint="acme-support")
    now = datetime.now(UTC)
    rows = _traffic(store, 150, now, seed=11)
    rules = AlertRules.parse({
        "rules": [{"name": "slow", "metric": "p95_latency_ms", "threshold": 1.0, "window": "1h"}]
    })  # fmt: skip
    evaluate_rules(store, rules, now)
    (alert,) = store.list_alert_states()
    ok = [r["latency_ms"] for r in rows if r["status"] == "ok"]
    assert alert.value == float(np.percentile(ok, 95))
    assert alert.state == "firing"


def test_the_percentile_of_the_values_numpy_reads_is_numpy_s_to_the_last_bit() -> None:
    rng = np.random.default_rng(3)
    for n in [*range(1, 60), 97, 1000, 12_345]:
        values = np.sort(rng.lognormal(3, 2, n))
        for q in (1, 5, 25, 50, 75, 90, 95, 99, 100):
            at = dict(enumerate(values.tolist()))
            assert linear_percentile(n, q, at) == float(np.percentile(values, q)), (n, q)
