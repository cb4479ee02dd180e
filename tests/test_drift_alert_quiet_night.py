"""A drift test with too few requests (a quiet night) is no news: a ``drifted_features``
alert that fires stays firing until a test with enough data says otherwise.

Before, a run whose every feature was ``not_enough_data`` counted 0 drifted features, so
the alert resolved every night and fired again in the morning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelyard.monitoring import AlertRules
from modelyard.monitoring._alerts import evaluate_rules
from modelyard.store import DriftResult, Store
from worlds import fake_world


def _run(run: str, at: datetime, *, drifted: bool | None) -> list[DriftResult]:
    status = {True: "drift", False: "ok", None: "not_enough_data"}[drifted]
    return [
        DriftResult(run, at, "support", "bot:1", "acme", "eval", at - timedelta(hours=1), at,
                    feature, "psi", None if drifted is None else 0.5 if drifted else 0.01,
                    0.2, drifted, status, 500, 3 if drifted is None else 400)
        for feature in ("prompt_chars", "response_chars")
    ]  # fmt: skip


def test_a_run_without_enough_data_keeps_a_drift_alert_firing(store: Store) -> None:
    (v1, _) = fake_world(store)
    rules = AlertRules.parse({"rules": [{
        "name": "inputs-drifted", "metric": "drifted_features", "window": "1d",
        "comparison": ">=", "threshold": 1, "severity": "warning",
    }]})  # fmt: skip
    now = datetime.now(UTC)

    def state(at: datetime) -> str:
        evaluate_rules(store, rules, at)
        (alert,) = [a for a in store.list_alert_states() if a.rule == "inputs-drifted"]
        return alert.state

    store.add_drift_results(_run("evening", now - timedelta(hours=10), drifted=True), v1.id)
    assert state(now - timedelta(hours=10)) == "firing"
    store.add_drift_results(_run("night", now - timedelta(hours=4), drifted=None), v1.id)
    assert state(now - timedelta(hours=4)) == "firing"  # was "resolved"
    store.add_drift_results(_run("morning", now, drifted=False), v1.id)
    assert state(now) == "resolved"
