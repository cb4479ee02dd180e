"""Notifying alerts: the log always, and the webhook (a JSON POST with a timeout, retried
with backoff on connection errors, timeouts and 5xx answers). Each delivery is kept in the
store; a firing alert whose last webhook delivery failed is sent again at each evaluation
(``undelivered``) until one gets through. Within one evaluation (``WebhookRound``), once a
delivery failed every try for a reason of the receiver's (no connection, a timeout, a
5xx), the others are not tried: each is kept as not delivered and goes at the next
evaluation. The evaluation waits for one delivery's tries, not for every alert's.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.store import AlertNotification, AlertState, Store

log = logging.getLogger("modelyard.alerts")


def http_url(value: str) -> str:
    """``value`` if it is an http:// or https:// URL with a host, else a ValueError."""
    try:  # a URL httpx cannot parse raised out of every tick that notified
        host = httpx.URL(value).host if value.startswith(("http://", "https://")) else ""
    except httpx.InvalidURL:
        host = ""
    if not host:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    return value


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
_SET_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})
_FROM_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def request_headers(value: Mapping[str, str]) -> dict[str, str]:
    """A channel's ``headers`` (``Authorization: Bearer ${ONCALL_TOKEN}``): each
    ``${NAME}`` replaced by that environment variable, so a secret need not be written in
    the rules file; a ValueError for a name HTTP does not allow, a header the POST sets
    itself, a line break in a value, or a variable that is not set."""
    out = {}
    for name, raw in value.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if name.lower() in _SET_HEADERS:
            raise ValueError(f"{name} is set by the POST itself; remove it")
        missing = [m for m in _FROM_ENV.findall(raw) if m not in os.environ]
        if missing:
            raise ValueError(
                f"header {name} names the environment variable {missing[0]}, which is not set"
            )
        filled = _FROM_ENV.sub(lambda m: os.environ[m.group(1)], raw)
        if any(c in filled for c in "\r\n\0"):
            raise ValueError(f"the value of header {name} holds a line break or a NUL")
        out[name] = filled
    return out


class WebhookConfig(BaseModel):
    """The rules file's ``notify.webhook``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str = Field(description="where alerts are POSTed as JSON")
    # bounded: the tick waits for each delivery, its tries and their backoff (doubling)
    timeout_s: float = Field(default=5.0, gt=0, le=60, allow_inf_nan=False)
    retries: int = Field(default=3, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0, le=10, allow_inf_nan=False)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)  # may hold secrets

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return http_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return request_headers(value)


class Webhook(Protocol):
    """Where and how alerts are POSTed (``WebhookConfig``)."""

    @property
    def url(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def backoff_s(self) -> float: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


class RuleShown(Protocol):
    """What a notification says of the alert's rule (``_alerts.Rule``; None for a rule no
    longer in the rules file, ``_alerts.GONE``)."""

    @property
    def metric(self) -> str | None: ...
    @property
    def comparison(self) -> str | None: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


ANNOTATION_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
SET_ANNOTATIONS = frozenset({"summary", "description", "value"})
"""Annotations every notification carries already: the rule's ``summary`` sets the first."""


def check_annotations(value: Mapping[str, str]) -> Mapping[str, str]:
    """A rule's own ``annotations`` (a runbook_url, a dashboard): names Alertmanager takes,
    none of the ones set for every alert (a ValueError naming it)."""
    for name in value:
        if name in SET_ANNOTATIONS:
            raise ValueError(
                f"{name!r} is set for every alert ({', '.join(sorted(SET_ANNOTATIONS))}); "
                "give the rule's summary instead, or another annotation name"
            )
        if not ANNOTATION_NAME.fullmatch(name):
            raise ValueError(
                f"annotation {name!r} is not a name Alertmanager takes (letters, digits and _, "
                "not starting with a digit)"
            )
    return value


def fill_annotations(
    rule: RuleShown | None, labels: Mapping[str, str], value: float | None
) -> dict[str, str]:
    """The rule's annotations with ``{endpoint}``, ``{value}`` (and any label) filled in,
    as its summary is; a template that cannot be filled is sent as written."""
    out: dict[str, str] = {}
    for name, template in (rule.annotations if rule is not None else {}).items():
        threshold = rule.threshold if rule is not None else None
        try:
            out[name] = template.format(value=value, threshold=threshold, **labels)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            out[name] = template
    return out


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    error: str | None
    receiver_down: bool = False  # failed every try: no connection, a timeout or a 5xx


class WebhookRound:
    """One evaluation's deliveries to ``hook`` (the module's docstring): after a delivery
    that found the receiver down, the others are kept as not sent, without a try."""

    def __init__(self, hook: Webhook) -> None:
        self.hook = hook
        self.down: str | None = None  # why the receiver is taken as down
        self.skipped = 0

    def post(self, payload: Mapping[str, Any]) -> Delivery:
        if self.down is not None:
            self.skipped += 1
            return Delivery(False, 0, f"not tried: the webhook failed earlier in this "
                            f"evaluation ({self.down}); sent at the next evaluation")  # fmt: skip
        delivery = post_webhook(self.hook, payload)
        if delivery.receiver_down:
            self.down = delivery.error
        return delivery

    def close(self) -> None:
        """Say (once) how many deliveries were left for the next evaluation."""
        if self.skipped:
            log.error("alerts: webhook %s is down (%s): %d more notification(s) of this "
                      "evaluation were not tried; they are sent at the next evaluation",
                      self.hook.url, self.down, self.skipped)  # fmt: skip


def post_webhook(config: Webhook, payload: Mapping[str, Any]) -> Delivery:
    """POST ``payload``; retry connection errors, timeouts and 5xx answers with backoff."""
    error: str | None = None
    attempts = 0
    with httpx.Client(timeout=config.timeout_s, headers=dict(config.headers)) as client:
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
                    return Delivery(False, attempts, error)  # refused: again changes nothing
            if attempt < config.retries:
                time.sleep(config.backoff_s * (2**attempt))
    return Delivery(False, attempts, error, receiver_down=True)


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
            "annotations": fill_annotations(rule, alert.labels, alert.value),
            "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        },
        "sent_at": now.isoformat(),
    }


def undelivered(
    store: Store, hook: Webhook | None, alerts: Sequence[AlertState], now: datetime
) -> set[str]:
    """The ids of ``alerts`` whose firing (or, for a day, resolved) state the webhook has
    not been told of: its last delivery to it failed, is of the other state or of an
    earlier firing, or, for a firing alert, there was none (the process stopped between
    saving the state and notifying it, or the webhook is new). Each is sent again at each
    evaluation until one gets through. One read for them all (``Store.last_deliveries``)."""
    if hook is None:
        return set()
    due = {
        a.id: a
        for a in alerts
        if a.state == "firing"
        or (a.state == "resolved" and (a.resolved_at or now) >= now - timedelta(days=1))
    }
    last = store.last_deliveries(sorted(due), hook.url)
    owed = set()
    for aid, alert in due.items():
        note = last.get(aid)
        began = alert.fired_at if alert.state == "firing" else alert.resolved_at
        if note is None:
            if alert.state == "firing":  # a resolve of a firing it never heard of: no
                owed.add(aid)
        elif note.state != alert.state or not note.ok or (began and note.sent_at < began):
            owed.add(aid)
    return owed


def notify(
    kept: list[AlertNotification],
    webhook: WebhookRound | None,
    rule: RuleShown,
    alert: AlertState,
    now: datetime,
    *,
    log_too: bool = True,
) -> int:
    """Tell every target about ``alert``'s new state; each delivery goes to ``kept``,
    which the evaluation keeps in the store at its end, in one transaction.
    ``log_too=False``: the webhook only (a failed delivery sent again)."""
    payload = _payload(alert, rule, now)
    sent = 0
    if log_too:
        level = logging.WARNING if alert.state == "firing" else logging.INFO
        log.log(level, "alert %s %s: %s", alert.rule, alert.state, alert.summary)
        kept.append(AlertNotification(alert.id, alert.rule, alert.state, "log", now, True, 1, None))
        sent = 1
    if webhook is not None:
        url = webhook.hook.url
        d = webhook.post(payload)
        if not d.ok and d.attempts:
            log.error("alert %s: webhook %s failed after %d tries: %s", alert.rule, url,
                      d.attempts, d.error)  # fmt: skip
        note = AlertNotification(
            alert.id, alert.rule, alert.state, url, now, d.ok, d.attempts, d.error
        )
        kept.append(note)
        sent += 1
    return sent


def metric_span(metric: str, window: str, period: str | None = None) -> str:
    """What a rule's value is measured over: its window, or for ``budget_used`` the budget's
    current day or month (the rule's window plays no part there: "over 5m is 1.2" would read
    as 120 % of a day's budget spent in five minutes)."""
    if metric != "budget_used":
        return f"over {window}"
    if period in ("day", "month"):
        return f"in the budget's current {period} (UTC)"
    return "in each budget's current day or month (UTC)"
