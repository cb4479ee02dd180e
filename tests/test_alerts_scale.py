"""Alert rules and the drift tick at many endpoints (journey 5: a base shared by 200
tenants, an endpoint each): an evaluation of rules on every endpoint's traffic, drift and
judge scores, and the tick's look for the drift runs that are due, cost as many queries
for 50 endpoints as for 5, and give each endpoint the values (and pick the endpoints) an
endpoint-at-a-time reading gives. On SQLite and PostgreSQL (``store_url``)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import modelyard.monitoring._tick as tick_module
from conftest import selects, statements
from modelyard.monitoring import AlertRules, evaluate_rules
from modelyard.monitoring._alerts import record_metrics
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._judges import Judgement
from modelyard.store.entities import DriftResult
from worlds import fake_world

NOW = datetime.now(UTC)
FEATURES = ("prompt_tokens", "latency_ms", "prompt_chars", "response_chars")
STATUSES = ("ok", "ok", "ok", "ok", "error", "timeout", "cancelled", "refused")
RULES = AlertRules.parse({
    "drift": {"every": "1h", "window": "1h", "reference": "previous:1d"},
    "rules": [
        {"name": "errors", "metric": "error_rate", "comparison": ">", "threshold": 0.1,
         "window": "10m"},
        {"name": "slow", "metric": "p95_latency_ms", "comparison": ">", "threshold": 60,
         "window": "30m"},
        {"name": "ttft", "metric": "p95_ttft_ms", "comparison": ">", "threshold": 25,
         "window": "30m"},
        {"name": "liked", "metric": "feedback_score", "comparison": "<", "threshold": 0.5,
         "window": "30m"},
        {"name": "drifting", "metric": "drifted_features", "comparison": ">=",
         "threshold": 2, "window": "2h"},
        {"name": "lat", "metric": "drift.latency_ms", "comparison": ">", "threshold": 0.1,
         "window": "2h"},
        {"name": "judged", "metric": "judge.quality", "comparison": "<", "threshold": 3,
         "window": "1h"},
        {"name": "one", "metric": "requests", "comparison": "<", "threshold": 5,
         "window": "30m", "endpoint": "e000"},
    ],
})  # fmt: skip


@pytest.fixture
def acme(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as store:
        fake_world(store, versions=2, endpoint=None)
        store.put_judge("quality", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
        yield store


def _drift(name: str, run: int, at: datetime, scheduled: bool, drifted: int) -> list[DriftResult]:
    """A drift run of ``name`` at ``at``: four features, ``drifted`` of them drifted."""
    return [
        DriftResult(f"{name}-{run:04d}", at, name, f"{name}:1", "acme", "previous:1d",
                    at - timedelta(hours=1), at, FEATURES[f], "psi", 0.05 * (f + run), 0.1,
                    f < drifted, "ok", 100, 100, {}, scheduled)
        for f in range(4)
    ]  # fmt: skip


def _endpoints(store: Store, first: int, count: int) -> list[str]:
    """Endpoints e<first>.. on bot:1 with a mix of records in the last 40 minutes (every
    status, ties, no time to first token on some, feedback and a judge's score on some),
    drift runs (a scheduled one, then one by hand; some with none at all)."""
    rng = random.Random(first)
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("bot", 1).id
    revision = store.get_judge("quality").revision
    names, records = [], []
    for i in range(first, first + count):
        name = f"e{i:03d}"
        names.append(name)
        store.create_endpoint(name, model_ref="bot:1", tenant="acme")
        for j in range(rng.randint(0, 30)):
            records.append(NewInferenceRecord(
                id=f"{name}-{j}", endpoint_name=name, route="completions",
                latency_ms=rng.choice([12.5, 40.0]) if j % 5 == 0 else rng.lognormvariate(3.5, 0.6),
                ttft_ms=None if j % 3 == 0 else rng.uniform(5, 40), status=rng.choice(STATUSES),
                http_status=200, tenant_id=tid, version_id=vid, prompt_tokens=j,
                completion_tokens=2 * j, created_at=NOW - timedelta(minutes=rng.uniform(0, 40)),
            ))  # fmt: skip
        if i % 4 != 3:
            store.add_drift_results(_drift(name, 1, NOW - timedelta(minutes=30 + i), True,
                                           i % 4), vid)  # fmt: skip
            store.add_drift_results(_drift(name, 2, NOW - timedelta(minutes=5), False, 3), vid)
    store.add_inference_records(records)
    judged = []
    for k, r in enumerate(records):
        if r.status in ("refused", "error", "timeout", "cancelled"):
            continue
        if k % 3 == 0:
            store.add_feedback(r.id, tenant="acme", score=rng.choice([-1.0, 1.0, 0.5]))
        if k % 2 == 0:
            judged.append(Judgement("quality", revision, f"h{r.id}", r.id, float(rng.randint(1, 5)),
                                    "", None, 10, 2, 0.0, 1.0))  # fmt: skip
    store.save_judgements(judged)
    return names


def _one_at_a_time(store: Store, endpoint: str, rule: Any) -> float | None:
    """The rule's value for ``endpoint``, read for that endpoint alone."""
    start = NOW - rule.window_td
    if rule.metric.startswith("judge."):
        return store.judge_mean("quality", endpoint, start, NOW)[0]
    values = record_metrics(store, endpoint, start, NOW)
    results = [
        r
        for r in store.list_drift_results(endpoint=endpoint, latest=True)
        if r.computed_at >= start
    ]
    tested = [r for r in results if r.drifted is not None]
    values["drifted_features"] = float(sum(1 for r in tested if r.drifted)) if tested else None
    values |= {f"drift.{r.feature}": r.value for r in results}
    return values.get(rule.metric)


def test_alert_rules_cost_the_same_queries_for_5_or_50_endpoints(acme: Store) -> None:
    """``evaluate_rules`` read each endpoint's traffic (three queries a window), drift run
    and judge mean with queries of its own: 50 endpoints cost ten times 5's."""
    costs, names = [], []
    for first, count in ((0, 5), (5, 45)):  # 5 endpoints, then 50
        names += _endpoints(acme, first, count)
        with statements(acme) as sent:
            evaluate_rules(acme, RULES, NOW)
        costs.append(len(selects(sent)))
    assert costs[0] == costs[1], costs
    states = {(a.rule, a.labels.get("endpoint")): a for a in acme.list_alert_states()}
    rules = {r.name: r for r in RULES.rules}
    assert len(states) == 7 * 50 + 1
    for (rule, endpoint), alert in states.items():
        assert alert.value == _one_at_a_time(acme, endpoint, rules[rule]), (rule, endpoint)
    values = [a.value for a in states.values()]
    assert sum(v is None for v in values) > 10 and sum(v is not None for v in values) > 200
    assert {a.state for a in states.values()} == {"firing", "inactive"}


def test_the_drift_tick_costs_the_same_queries_for_5_or_50_endpoints(
    acme: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tick read each endpoint's last drift run with queries of its own to see whether
    a run was due; the endpoints it runs are those whose last scheduled run is older than
    ``drift.every`` or that have none (a run by hand since does not count)."""
    ran: list[str] = []

    def compute(store: Store, endpoint: str, **kw: Any) -> None:
        ran.append(endpoint)

    monkeypatch.setattr(tick_module, "compute_drift", compute)
    costs, names = [], []
    for first, count in ((0, 5), (5, 45)):
        names += _endpoints(acme, first, count)
        ran.clear()
        with statements(acme) as sent:
            tick_module._due_drift(acme, RULES, NOW, None)
        costs.append(len(selects(sent)))
    assert costs[0] == costs[1], costs
    # no scheduled run (i % 4 == 3): due; the others' ran 30 + i minutes ago: due past 60
    due = [n for i, n in enumerate(names) if i % 4 == 3 or 30 + i >= 60]
    assert ran == due and len(due) > 10
    ran.clear()
    tick_module._due_drift(acme, RULES, NOW + timedelta(hours=2), None)
    assert ran == names  # an hour past every run


@pytest.mark.parametrize(
    ("kept", "unread"),
    [({"drifting", "lat"}, "inference_records"), ({"errors", "slow", "one"}, "drift_results")],
    ids=["drift rules read no records", "traffic rules read no drift runs"],
)
def test_rules_read_only_what_their_metrics_need(acme: Store, kept: set[str], unread: str) -> None:
    """An evaluation read every window's record summaries and the drift runs for any rule
    on an endpoint's records or drift: a drift rule's a window of every endpoint's
    traffic, which it never uses (a few queries over a busy store's records), and a
    traffic rule's the drift runs."""
    _endpoints(acme, 0, 8)
    rules = RULES.model_copy(update={"rules": [r for r in RULES.rules if r.name in kept]})
    with statements(acme) as sent:
        evaluate_rules(acme, rules, NOW)
    read = selects(sent)
    assert not [s for s in read if unread in s], [s[:120] for s in read if unread in s]
    states = {(a.rule, a.labels.get("endpoint")): a for a in acme.list_alert_states()}
    by_name = {r.name: r for r in rules.rules}
    assert {rule for rule, _ in states} == kept
    for (rule, endpoint), alert in states.items():
        assert alert.value == _one_at_a_time(acme, endpoint, by_name[rule]), (rule, endpoint)
    assert any(a.value is not None for a in states.values())
