"""An alert whose rule left the rules file (or no longer gives its labels) is resolved at
the next evaluation, with the reason, and notified as any resolve is; before, it stayed
firing forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelyard.monitoring import AlertRules, alert_id, evaluate_rules
from modelyard.store import AlertState, NewInferenceRecord, Store
from worlds import fake_world

HOOK = {"webhook": {"url": "http://127.0.0.1:9/hook"}}


def _errors(store: Store, now: datetime) -> None:
    fake_world(store, model="acme-bot", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    store.add_inference_records([
        NewInferenceRecord(
            id=f"e{i}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=10.0, status="error", http_status=503, tenant_id=tid, version_id=vid,
            created_at=now - timedelta(seconds=i + 1),
        )
        for i in range(3)
    ])  # fmt: skip


def _rules(*rules: dict[str, Any]) -> AlertRules:
    return AlertRules.parse({"notify": HOOK, "rules": list(rules)})


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from modelyard.monitoring import _notify

    sent: list[dict[str, Any]] = []

    def post(config: Any, payload: Any) -> _notify.Delivery:
        sent.append(payload)
        return _notify.Delivery(True, 1, None)

    monkeypatch.setattr(_notify, "post_webhook", post)
    return sent


ERRORS = {"name": "errors", "metric": "error_rate", "threshold": 0.5, "window": "1h"}
QUIET = {"name": "quiet", "metric": "requests", "comparison": "<", "threshold": 0, "window": "1h"}


def test_a_firing_alert_whose_rule_was_removed_is_resolved_and_notified_once(
    store: Store, posted: list[dict[str, Any]]
) -> None:
    now = datetime.now(UTC)
    _errors(store, now)
    evaluate_rules(store, _rules(ERRORS, QUIET), now)
    (alert,) = store.list_alert_states(state="firing")
    assert [p["status"] for p in posted] == ["firing"]

    moved = evaluate_rules(store, _rules(QUIET), now + timedelta(minutes=1))
    found = {a.rule: a for a in store.list_alert_states()}["errors"]
    assert found.state == "resolved" and found.resolved_at is not None
    assert "rule errors is no longer in the alert rules" in found.summary
    assert [(t.alert.rule, t.before, t.alert.state) for t in moved] == [
        ("errors", "firing", "resolved")
    ]
    assert [p["status"] for p in posted] == ["firing", "resolved"]
    assert posted[-1]["alert"]["id"] == alert.id
    assert "no longer in the alert rules" in posted[-1]["alert"]["summary"]
    notes = store.list_alert_notifications(alert_id=alert.id)
    assert sorted((n.state, n.target) for n in notes) == sorted([
        ("firing", "log"), ("firing", HOOK["webhook"]["url"]),
        ("resolved", "log"), ("resolved", HOOK["webhook"]["url"]),
    ])  # fmt: skip

    evaluate_rules(store, _rules(QUIET), now + timedelta(minutes=2))  # once, not each time
    assert [p["status"] for p in posted] == ["firing", "resolved"]
    assert store.list_alert_states(state="firing") == []


def test_a_pending_alert_whose_rule_was_removed_goes_back_to_inactive_unnotified(
    store: Store, posted: list[dict[str, Any]]
) -> None:
    now = datetime.now(UTC)
    _errors(store, now)
    evaluate_rules(store, _rules({**ERRORS, "for": "10m"}), now)
    assert [a.state for a in store.list_alert_states()] == ["pending"]
    evaluate_rules(store, _rules(), now + timedelta(minutes=1))
    (alert,) = store.list_alert_states()
    assert alert.state == "inactive" and "no longer in the alert rules" in alert.summary
    assert posted == []


def test_an_alert_whose_labels_the_rule_no_longer_gives_is_resolved(
    store: Store, posted: list[dict[str, Any]]
) -> None:
    """A rule's severity changed: its alert is another (labels), and the old one stayed
    firing beside the new one."""
    now = datetime.now(UTC)
    _errors(store, now)
    evaluate_rules(store, _rules(ERRORS), now)
    evaluate_rules(store, _rules({**ERRORS, "severity": "critical"}), now + timedelta(minutes=1))
    states = sorted((a.severity, a.state) for a in store.list_alert_states())
    assert states == [("critical", "firing"), ("warning", "resolved")]
    old = next(a for a in store.list_alert_states() if a.severity == "warning")
    assert "no longer gives these labels" in old.summary


def test_a_firing_alert_whose_window_has_no_data_stays_firing_until_data_says_otherwise(
    store: Store, posted: list[dict[str, Any]]
) -> None:
    """No records in the window (the traffic stopped) is not good news: an error-rate alert
    neither fires nor resolves on it, as docs/monitoring.md says; it resolved."""
    now = datetime.now(UTC)
    _errors(store, now)
    evaluate_rules(store, _rules(ERRORS), now)
    later = now + timedelta(hours=2)  # the three errors left the 1h window
    evaluate_rules(store, _rules(ERRORS), later)
    (alert,) = store.list_alert_states()
    assert (alert.state, alert.value) == ("firing", None)
    assert alert.summary.startswith("error_rate over 1h has no data (the rule: > 0.5) [")
    assert [p["status"] for p in posted] == ["firing"]
    tid, vid = store.get_tenant("acme").id, store.get_model_version("acme-bot", 1).id
    store.add_inference_records([
        NewInferenceRecord(
            id="ok1", endpoint_name="acme-support", route="chat.completions", latency_ms=5.0,
            status="ok", http_status=200, tenant_id=tid, version_id=vid,
            created_at=later + timedelta(seconds=30),
        )
    ])  # fmt: skip
    evaluate_rules(store, _rules(ERRORS), later + timedelta(minutes=1))
    (alert,) = store.list_alert_states()
    assert (alert.state, alert.value) == ("resolved", 0.0)
    assert [p["status"] for p in posted] == ["firing", "resolved"]


def test_the_controllers_rollback_alert_is_not_an_orphan_of_the_rules_file(
    store: Store, posted: list[dict[str, Any]]
) -> None:
    """It resolves when a later rollout succeeds (docs/delivery.md), not at the next
    evaluation because no rule of alerts.yml raised it."""
    from modelyard.delivery import _alerting
    from modelyard.monitoring import _alerts

    assert _alerting.RULE in _alerts.RAISED_ELSEWHERE
    now = datetime.now(UTC)
    fake_world(store, model="acme-bot", endpoint="acme-support")
    labels = {"endpoint": "acme-support", "version": "acme-bot:2"}
    store.save_alert_state(AlertState(
        alert_id(_alerting.RULE, labels), _alerting.RULE, labels, "critical", "firing", None,
        "rolled back", now, now, None, now,
    ))  # fmt: skip
    evaluate_rules(store, _rules(QUIET), now + timedelta(minutes=1))
    (alert,) = [a for a in store.list_alert_states() if a.rule == _alerting.RULE]
    assert alert.state == "firing" and alert.summary == "rolled back"
    assert posted == []
