"""What one scrape of the store's gauges (``MonitoringCollector``, on every replica's
``/metrics``) costs the store, and that it exports every endpoint.

Before, a scrape sent a few queries per endpoint (its traffic plan; its model, tenant
and shadow version) and per active rollout (its timeline; its endpoint, target and
model): 1,817 statements at 500 endpoints. And the drift gauges came from the newest
10,000 drift rows only: with more endpoints than that holds latest runs of (500
endpoints of 40 features and methods hold 20,000), or one endpoint drift-checked far
more often than another, the other endpoints' gauges were left out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import Mock

import pytest
from prometheus_client import CollectorRegistry

from conftest import statements
from modelyard.delivery import start_rollout
from modelyard.errors import ConfigError, StoreError
from modelyard.monitoring import MonitoringCollector
from modelyard.store import Store
from modelyard.store.entities import DriftResult
from worlds import fake_world


def scrape(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(store))
    return registry


def endpoint_with_rollout(store: Store, name: str) -> None:
    fake_world(store, tenant=f"{name}-t", model=f"{name}-m", endpoint=name, versions=3)
    store.set_traffic(name, {1: 90, 2: 10})
    store.set_shadow(name, 2, 0.25)
    start_rollout(store, name, f"{name}-m:3", steps="10,50,100")


def test_a_scrape_sends_as_many_queries_for_five_endpoints_as_for_one(store: Store) -> None:
    endpoint_with_rollout(store, "e0")
    list(MonitoringCollector(store).collect())  # warm
    with statements(store) as one:
        list(MonitoringCollector(store).collect())
    for i in range(1, 5):
        endpoint_with_rollout(store, f"e{i}")
    registry = scrape(store)
    with statements(store) as five:
        weights = [
            registry.get_sample_value(
                "modelyard_traffic_weight",
                {"endpoint": f"e{i}", "model": f"e{i}-m", "version": f"e{i}-m:{v}"},
            )
            for i in range(5)
            for v in (1, 2, 3)
        ]
    # get_sample_value scrapes once per call: 15 scrapes, each the same queries
    assert len(five) == 15 * len(one), (len(one), len(five))
    assert weights == [90, 10, None] * 5  # the rollouts prepare: the plans are unchanged
    value = registry.get_sample_value
    for i in range(5):
        labels = {"endpoint": f"e{i}", "model": f"e{i}-m", "version": f"e{i}-m:2"}
        assert value("modelyard_shadow_fraction", labels) == 0.25
        target = {"endpoint": f"e{i}", "target": f"e{i}-m:3"}
        assert value("modelyard_rollout_step_percent", target) == 10
        active = {**target, "strategy": "canary", "status": "running", "phase": "preparing"}
        assert value("modelyard_rollout_active", active) == 1


def drift_run(run: str, endpoint: str, at: datetime, features: int) -> list[DriftResult]:
    value = 0.5 if run.startswith("old") else 0.01
    common: dict[str, Any] = {
        "run_id": run, "computed_at": at, "endpoint_name": endpoint, "version": "bot:1",
        "tenant": "acme", "reference": "baseline", "window_start": at - timedelta(hours=1),
        "window_end": at, "method": "psi", "value": value, "threshold": 0.2, "drifted": False,
        "status": "ok", "n_reference": 9, "n_current": 9, "details": {},
    }  # fmt: skip
    return [DriftResult(feature=f"f{i}", **common) for i in range(features)]


def test_every_endpoint_s_latest_drift_run_is_exported_however_many_rows_others_have(
    store: Store,
) -> None:
    (v1, _) = fake_world(store)
    now = datetime.now(UTC)
    store.add_drift_results(drift_run("old-quiet", "quiet", now - timedelta(days=2), 3), v1.id)
    store.add_drift_results(drift_run("new-quiet", "quiet", now - timedelta(days=1), 3), v1.id)
    store.add_drift_results(drift_run("new-busy", "busy", now, 10_001), v1.id)
    registry = scrape(store)
    labels = {"endpoint": "quiet", "version": "bot:1", "feature": "f2", "method": "psi"}
    assert registry.get_sample_value("modelyard_drift_value", labels) == 0.01
    busy = {"endpoint": "busy", "version": "bot:1", "feature": "f10000", "method": "psi"}
    assert registry.get_sample_value("modelyard_drift_detected", busy) == 0.0
    assert [r.run_id for r in store.list_drift_results(endpoint="quiet", latest=True)] == [
        "new-quiet"
    ] * 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_with_a_max_age_scrapes_within_it_read_the_store_once(store: Store) -> None:
    """Opt-in (``max_age_s``); without it every scrape reads the store (the test above,
    and tests/test_monitoring_gauges.py, see each change at the next scrape)."""
    fake_world(store, versions=2)
    store.set_traffic("support", {1: 90, 2: 10})
    clock = Clock()
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(store, max_age_s=15, clock=clock))
    labels = {"endpoint": "support", "model": "bot", "version": "bot:2"}

    def weight() -> float | None:
        return registry.get_sample_value("modelyard_traffic_weight", labels)

    assert weight() == 10
    store.set_traffic("support", {1: 50, 2: 50})
    clock.now += 14.9
    with statements(store) as sent:
        assert weight() == 10
    assert sent == []
    clock.now += 0.1
    assert weight() == 50


def test_a_scrape_while_the_store_is_down_is_not_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_world(store)
    collector = MonitoringCollector(store, max_age_s=60, clock=Clock())
    monkeypatch.setattr(store, "list_budgets", Mock(side_effect=StoreError("the store is down")))
    assert list(collector.collect()) == []
    monkeypatch.undo()
    names = [f.name for f in collector.collect()]
    assert "modelyard_traffic_weight" in names


@pytest.mark.parametrize("age", [-1.0, float("nan"), float("inf")])
def test_a_max_age_that_is_no_number_of_seconds_is_refused_naming_it(
    store: Store, age: float
) -> None:
    with pytest.raises(ConfigError, match="max_age_s must be 0") as caught:
        MonitoringCollector(store, max_age_s=age)
    assert caught.value.context["field"] == "max_age_s"
