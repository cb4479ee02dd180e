"""Notifying alerts: the log always, and the webhook (a JSON POST with a timeout, retried
with backoff on connection errors, timeouts and 5xx answers). Each delivery is kept in the
store; a firing alert whose last webhook delivery failed is sent again at each evaluation
(``undelivered``) until one gets through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx

from modelyard.store import AlertNotification, AlertState, Store

log = logging.getLogger("modelyard.alerts")


class Webhook(Protocol):
    """Where and how alerts are POSTed (``_alerts.WebhookConfig``)."""

    @property
    def url(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def backoff_s(self) -> float: ...


class RuleShown(Protocol):
    """What a notification says of the alert's rule (``_alerts.Rule``; None for a rule no
    longer in the rules file, ``_alerts.GONE``)."""

    @property
    def metric(self) -> str | None: ...
    @property
    def comparison(self) -> str | None: ...
    @property
    def threshold(self) -> float | None: ...


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    error: str | None


def post_webhook(config: Webhook, payload: Mapping[str, Any]) -> Delivery:
    """POST ``payload``; retry connection errors, timeouts and 5xx answers with backoff."""
    error: str | None = None
    attempts = 0
    with httpx.Client(timeout=config.timeout_s) as client:
        for attempt in range(config.retries + 1):
            attempts = attempt + 1
            try:
                reply = client.post(config.url, json=dict(payload))
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status_code < 300:
                    return Delivery(True, attempts, None)
                error = f"HTTP {reply.status_code}"
                if reply.status_code < 500:
                    break  # the receiver refused it; sending again changes nothing
            if attempt < config.retries:
                time.sleep(config.backoff_s * (2**attempt))
    return Delivery(False, attempts, error)


def _payload(alert: AlertState, rule: RuleShown, now: datetime) -> dict[str, Any]:
    return {
        "status": alert.state,
        "alert": {
            "id": alert.id,
            "rule": alert.rule,
            "labels": dict(alert.labels),
            "severity": alert.severity,
            "metric": rule.metric,
            "value": alert.value,
            "comparison": rule.comparison,
            "threshold": rule.threshold,
            "summary": alert.summary,
            "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        },
        "sent_at": now.isoformat(),
    }


def undelivered(
    store: Store, hook: Webhook | None, alerts: Sequence[AlertState], now: datetime
) -> set[str]:
    """The ids of ``alerts`` whose webhook's last delivery of this firing (or, for a day,
    resolved) state failed: each is sent again at each evaluation until one gets through.
    One read for them all (``Store.last_deliveries``)."""
    if hook is None:
        return set()
    due = {
        a.id: a
        for a in alerts
        if a.state == "firing"
        or (a.state == "resolved" and (a.resolved_at or now) >= now - timedelta(days=1))
    }
    last = store.last_deliveries(sorted(due), hook.url)
    return {i for i, note in last.items() if note.state == due[i].state and not note.ok}


def notify(
    store: Store,
    hook: Webhook | None,
    rule: RuleShown,
    alert: AlertState,
    now: datetime,
    *,
    log_too: bool = True,
) -> int:
    """Tell every target about ``alert``'s new state; each delivery is kept in the store.
    ``log_too=False``: the webhook only (a failed delivery sent again)."""
    payload = _payload(alert, rule, now)
    sent = 0
    if log_too:
        level = logging.WARNING if alert.state == "firing" else logging.INFO
        log.log(level, "alert %s %s: %s", alert.rule, alert.state, alert.summary)
        store.add_alert_notification(
            AlertNotification(alert.id, alert.rule, alert.state, "log", now, True, 1, None)
        )
        sent = 1
    if hook is not None:
        d = post_webhook(hook, payload)
        if not d.ok:
            log.error(
                "alert %s: webhook %s failed after %d tries: %s",
                alert.rule,
                hook.url,
                d.attempts,
                d.error,
            )
        store.add_alert_notification(
            AlertNotification(
                alert.id, alert.rule, alert.state, hook.url, now, d.ok, d.attempts, d.error
            )
        )
        sent += 1
    return sent
