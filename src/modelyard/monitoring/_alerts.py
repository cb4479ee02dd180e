"""Alert rules (YAML), their evaluation, and notifications (log, webhook, Alertmanager).

An alert is one rule for one endpoint. Its state moves
``inactive → pending → firing → resolved``: the condition must hold for the
rule's ``for`` before it fires; it resolves when the condition stops holding.
Only the moves to ``firing`` and to ``resolved`` are notified, once each
(deduplicated by the state kept in the store), to every target: the log
always, and the webhook (a JSON POST, retried with backoff, with a timeout); every
firing alert goes to Alertmanager at every evaluation (``_alertmanager``).
A firing rule may start a retraining command, or ``modelyard pipeline run`` on a
pipeline file (``pipeline:``, the alert's id passed on); that start is audited.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import operator
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelyard.durations import parse_duration
from modelyard.errors import ConfigError
from modelyard.metric_names import TRAFFIC_METRICS, canonical, hint, judge_name
from modelyard.monitoring._alertmanager import AlertmanagerConfig, check_label_names, send_alerts
from modelyard.monitoring._drift import parse_reference
from modelyard.monitoring._features import FEATURE_NAMES
from modelyard.monitoring._judging import OnlineJudging
from modelyard.monitoring._notify import (
    WebhookConfig,
    WebhookRound,
    check_annotations,
    metric_span,
    notify,
    undelivered,
)
from modelyard.monitoring._rule_reads import drift_of, traffic_of
from modelyard.monitoring._rule_reads import record_metrics as record_metrics
from modelyard.store import (
    AlertNotification,
    AlertState,
    DriftResult,
    Store,
)

log = logging.getLogger("modelyard.alerts")

RECORD_METRICS: dict[str, str] = dict(TRAFFIC_METRICS)  # canonical names; aliases accepted
DRIFT_METRICS: dict[str, str] = {
    "drifted_features": "features drifted in the endpoint's latest drift run in the window",
} | {
    f"drift.{f}": f"drift value of {f} in the latest run"
    for f in (*FEATURE_NAMES, "prompt_embedding")
}
BUDGET_METRICS: dict[str, str] = {
    "budget_used": "fraction of a tenant's or key's budget spent in its current day or month "
    "(one alert per budget: labels tenant, key, period)",
}
METRICS = RECORD_METRICS | DRIFT_METRICS | BUDGET_METRICS
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class NotifyConfig(_Section):
    webhook: WebhookConfig | None = None
    alertmanager: AlertmanagerConfig | None = None


LONGEST = timedelta(days=366)
"""The longest window, ``for`` or drift period a rules file may give."""


def _at_most_a_year(length: timedelta, text: str, field: str | None = None) -> None:
    if length > LONGEST:
        where = f"{field}: " if field else ""
        raise ValueError(f"{where}{text!r} is too long: at most {LONGEST.days} days, e.g. 1h or 7d")


class DriftSchedule(_Section):
    """Drift runs the tick makes for the rules that read drift metrics."""

    reference: str = "eval"
    window: str = "1h"
    every: str = "10m"
    semantic: bool = False  # also the MiniLM prompt-embedding test (prompt_embedding)


RESERVED_LABELS = frozenset({"endpoint", "severity", "tenant", "key", "period"})


class Rule(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    metric: str
    window: str = "5m"
    comparison: Literal[">", ">=", "<", "<=", "==", "!="] = ">"
    threshold: float = Field(allow_inf_nan=False)  # nan never compares: a rule never firing
    for_: str = Field(default="0s", alias="for")
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)  # runbook_url, dashboard, ...
    endpoint: str | None = None
    summary: str | None = None
    retrain: list[str] | None = None
    pipeline: Path | None = None  # `modelyard pipeline run` on it (docs/closing-the-loop.md)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        name = canonical(value)  # latency_p95_ms, as rule files say it, is p95_latency_ms
        if judge_name(name) is not None:
            return name  # a judge's mean score of the endpoint's records (judging:)
        if name not in METRICS:
            raise ValueError(
                f"unknown metric {value!r}{hint(value, METRICS)}; use one of "
                f"{', '.join(METRICS)}, or judge.NAME"
            )
        return name

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        if self.retrain and self.pipeline is not None:
            raise ValueError("give retrain or pipeline, not both: each starts one process")
        return self

    @model_validator(mode="after")
    def _budgets_have_no_endpoint(self) -> Rule:
        if self.metric in BUDGET_METRICS and self.endpoint is not None:
            raise ValueError(
                f"{self.metric} is evaluated per budget, not per endpoint: remove endpoint"
            )
        return self

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_annotations(value))

    @field_validator("labels")
    @classmethod
    def _own_labels(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(set(value) & RESERVED_LABELS)
        if taken:  # the evaluation sets them: the rule's own would be overwritten silently
            raise ValueError(
                f"{', '.join(taken)} set by the evaluation ({', '.join(sorted(RESERVED_LABELS))}); "
                "use the rule's endpoint and severity, or another label name"
            )
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        _at_most_a_year(parse_duration(value), value)
        return value

    @field_validator("for_")
    @classmethod
    def _for(cls, value: str) -> str:
        _at_most_a_year(parse_duration(value, allow_zero=True), value)
        return value

    @field_validator("retrain", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @property
    def window_td(self) -> timedelta:
        return parse_duration(self.window)

    @property
    def for_td(self) -> timedelta:
        return parse_duration(self.for_, allow_zero=True)


class AlertRules(_Section):
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    drift: DriftSchedule = Field(default_factory=DriftSchedule)
    judging: list[OnlineJudging] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return rules

    @property
    def uses_drift(self) -> bool:
        return any(r.metric in DRIFT_METRICS for r in self.rules)

    @classmethod
    def parse(cls, data: Any, source: str = "alert rules") -> AlertRules:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping with a 'rules' list", field="rules")
        try:
            rules = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "rules"
            msg = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{source}: {key}: {msg}", field=key) from None
        if rules.notify.alertmanager is not None:  # it refuses alerts with such labels
            check_label_names(rules.rules, source)
        try:
            parse_reference(rules.drift.reference, datetime.now(UTC))
        except ConfigError as exc:  # it speaks of the CLI's --reference: say where it is
            why = exc.message.removeprefix(f"invalid --reference {rules.drift.reference!r}: ")
            raise ConfigError(
                f"{source}: drift.reference: invalid {rules.drift.reference!r}: {why}",
                field="drift.reference",
            ) from None
        kind, _, arg = rules.drift.reference.partition(":")
        lengths = [("drift.window", rules.drift.window), ("drift.every", rules.drift.every)]
        for key, text in lengths + ([("drift.reference", arg)] if kind == "previous" else []):
            try:
                _at_most_a_year(parse_duration(text, field=key), text, key)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}", field=key) from None
        return rules

    @classmethod
    def load(cls, path: Path) -> AlertRules:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"no alert rules file at {path}",
                hint="Write one (see docs/monitoring.md).",
                field="rules",
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}", field="rules") from None
        return cls.parse(data, str(path))


def alert_id(rule: str, labels: Mapping[str, str]) -> str:
    key = json.dumps([rule, sorted(labels.items())])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- metrics -----------------------------------------------------------------------------------


def drift_values(latest: Sequence[DriftResult], start: datetime) -> dict[str, float | None]:
    """The drift metrics of an endpoint's latest drift run (``latest``) made since ``start``."""
    results = [r for r in latest if r.computed_at >= start]
    out: dict[str, float | None] = dict.fromkeys(DRIFT_METRICS)
    tested = [r for r in results if r.drifted is not None]  # a test with too few: no news
    if tested:
        out["drifted_features"] = float(sum(1 for r in tested if r.drifted))
    for r in results:
        out[f"drift.{r.feature}"] = r.value
    return out


# Started retraining processes, kept so they are reaped (polled) rather than left as zombies.
_RUNNING: list[subprocess.Popen[bytes]] = []


@atexit.register
def _reap() -> None:
    """At exit, reap the retraining processes that have ended (those still running go on:
    each was started in a session of its own)."""
    for proc in _RUNNING:
        proc.poll()


def start_retraining(store: Store, rule: Rule, alert: AlertState) -> int | None:
    """Start the rule's retraining command, or its pipeline (not waited for); the start is
    audited."""
    _RUNNING[:] = [p for p in _RUNNING if p.poll() is None]
    command = rule.retrain or pipeline_command(rule, alert)
    payload: dict[str, Any] = {
        "command": command,
        "alert_id": alert.id,
        "labels": dict(alert.labels),
        "value": alert.value,
    }
    if rule.pipeline is not None:
        payload["pipeline"] = str(rule.pipeline)
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        store.record_audit_event("alert.retrain_failed", rule.name, payload | {"error": str(exc)})
        log.error("alert %s: cannot start %s: %s", rule.name, command, exc)
        return None
    _RUNNING.append(proc)
    store.record_audit_event("alert.retrain_started", rule.name, payload | {"pid": proc.pid})
    return proc.pid


def pipeline_command(rule: Rule, alert: AlertState) -> list[str]:
    """``modelyard pipeline run FILE --alert ID`` with this interpreter (no PATH needed)."""
    assert rule.pipeline is not None
    run = ["pipeline", "run", str(rule.pipeline), "--alert", alert.id]
    return [sys.executable, "-m", "modelyard", *run]


# -- evaluation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    alert: AlertState
    before: str

    @property
    def notified(self) -> bool:
        return self.alert.state in ("firing", "resolved")


def _summary(rule: Rule, labels: Mapping[str, str], value: float | None, holds: bool) -> str:
    """What the alert says; a value that no longer meets the condition says "not", so that a
    resolved alert's notification does not read "is 0.01 (> 0.05)"."""
    if rule.summary:
        try:
            return rule.summary.format(value=value, threshold=rule.threshold, **labels)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            return rule.summary  # e.g. {value:.2f} with no data: the template as written
    where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    condition = f"{'' if holds or value is None else 'not '}{rule.comparison} {rule.threshold:g}"
    span = metric_span(rule.metric, rule.window, labels.get("period"))
    if value is None:  # a firing alert stays firing on no data (traffic stopped, say)
        return f"{rule.metric} {span} has no data (the rule: {condition}) [{where}]"
    return f"{rule.metric} {span} is {value:.4g} ({condition}) [{where}]"


def evaluate_rules(store: Store, rules: AlertRules, now: datetime) -> list[Transition]:
    """Evaluate every rule for every endpoint; save states, notify the changes that matter.
    The states are saved together before anyone is notified (one transaction however
    many budgets or endpoints), and the failed deliveries to send again read together."""
    states = {a.id: a for a in store.list_alert_states()}
    endpoints = [e.name for e in store.list_endpoints()]
    cache: dict[tuple[str, str, timedelta], dict[str, float | None]] = {}  # kind, endpoint
    cache_drift: list[dict[str, list[DriftResult]] | None] = [None]  # every endpoint's, once
    evaluated: dict[str, tuple[Rule, AlertState, str]] = {}  # id: rule, new state, before
    for rule in rules.rules:
        for value, where in _values(store, rule, endpoints, (cache, cache_drift), now):
            labels = {**rule.labels, **where, "severity": rule.severity}
            aid = alert_id(rule.name, labels)
            old = states.get(aid)
            holds = value is not None and _COMPARISONS[rule.comparison](value, rule.threshold)
            new = _step(old, rule, aid, labels, value, holds, now)
            evaluated[aid] = (rule, new, old.state if old else "inactive")
    store.save_alert_states([new for _, new, _ in evaluated.values()])
    hook = rules.notify.webhook
    webhook = WebhookRound(hook) if hook is not None else None
    unchanged = [new for _, new, before in evaluated.values() if new.state == before]
    again = undelivered(store, hook, unchanged, now)
    transitions: list[Transition] = []
    kept: list[AlertNotification] = []  # the deliveries of this evaluation
    try:
        for rule, new, before in evaluated.values():
            if new.id in again:
                notify(kept, webhook, rule, new, now, log_too=False)  # the webhook was down
            if new.state != before:
                transitions.append(Transition(new, before))
                if new.state in ("firing", "resolved"):
                    notify(kept, webhook, rule, new, now)
                if new.state == "firing" and (rule.retrain or rule.pipeline is not None):
                    start_retraining(store, rule, new)
        named = {r.name for r in rules.rules}
        gone = [a for a in states.values() if a.id not in evaluated]
        stale = [a for a in gone if a.rule not in RAISED_ELSEWHERE]
        transitions += _orphans(store, kept, webhook, stale, named, now)
    finally:
        if webhook is not None:
            webhook.close()
        store.add_alert_notifications(kept)  # what was sent, kept together
    if rules.notify.alertmanager is not None:  # every firing alert, at every evaluation
        final = states | {a.id: a for _, a, _ in evaluated.values()}
        final |= {t.alert.id: t.alert for t in transitions}
        send_alerts(rules.notify.alertmanager, final.values(), rules.rules, now)
    return transitions


# Alerts no rule of the rules file raises, so no evaluation of it may resolve them: the
# controller's rollback alert (delivery/_alerting.py) resolves when a later rollout succeeds.
RAISED_ELSEWHERE = frozenset({"rollout_rolled_back"})


@dataclass(frozen=True)
class _Gone:
    """What a notification says of a rule no longer evaluated: nothing of its metric."""

    metric: str | None = None
    comparison: str | None = None
    threshold: float | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


GONE = _Gone()


def _orphans(
    store: Store,
    kept: list[AlertNotification],
    webhook: WebhookRound | None,
    alerts: Sequence[AlertState],
    named: set[str],
    now: datetime,
) -> list[Transition]:
    """Alerts this evaluation did not produce: their rule left the rules file, or no longer
    gives their labels (its labels or severity changed, its endpoint or budget is gone).
    Nothing would ever evaluate them again, so a firing one is resolved (and notified as
    any resolve is), a pending one goes back to inactive, each with the reason in its
    summary; a resolved one whose webhook delivery failed is sent again as any is."""
    ended = [a for a in alerts if a.state not in ("firing", "pending")]
    again = undelivered(store, webhook.hook if webhook else None, ended, now)
    for old in ended:
        if old.id in again:
            notify(kept, webhook, GONE, old, now, log_too=False)
    moved = []
    for old in alerts:
        if old.state not in ("firing", "pending"):
            continue
        why = (
            f"rule {old.rule} no longer gives these labels (its labels, severity, "
            "endpoint or budget changed or are gone)"
            if old.rule in named
            else f"rule {old.rule} is no longer in the alert rules"
        )
        if old.state == "firing":
            new = replace(old, state="resolved", resolved_at=now, active_since=None,
                          last_evaluated=now, summary=f"{why}: resolved")  # fmt: skip
        else:
            new = replace(old, state="inactive", active_since=None, last_evaluated=now,
                          summary=f"{why}: no longer pending")  # fmt: skip
        moved.append(Transition(new, old.state))
    store.save_alert_states([t.alert for t in moved])
    for t in moved:
        if t.alert.state == "resolved":
            notify(kept, webhook, GONE, t.alert, now)
    return moved


def _values(
    store: Store,
    rule: Rule,
    endpoints: Sequence[str],
    caches: tuple[
        dict[tuple[str, str, timedelta], dict[str, float | None]],
        list[dict[str, list[DriftResult]] | None],
    ],
    now: datetime,
) -> Iterator[tuple[float | None, dict[str, str]]]:
    """The rule's metric where it applies, with the labels that say where: per endpoint,
    or per budget (``budget_used``: what was spent of it in its current period). Every
    endpoint's is read together (``_rule_reads``), each window once per evaluation, and only
    what the metric needs: a drift rule's the drift runs, a traffic rule's the records'."""
    if rule.metric in BUDGET_METRICS:
        budgets = store.list_budgets()  # their spend read together: a few queries in all
        for budget, status in zip(budgets, store.budget_statuses(budgets, now), strict=True):
            where = {"tenant": budget.tenant, "key": budget.key_id or "*",
                     "period": budget.period}  # fmt: skip
            # to 12 places: 2.4 spent of 3 is the 0.8 a person reads, not 0.7999999999999999
            yield round(status["spent"] / budget.amount, 12), where
        return
    judge = judge_name(rule.metric)
    if rule.endpoint and rule.endpoint not in endpoints:  # a typo would never page anyone
        log.warning(
            "alert rule %s names endpoint %r, which does not exist: not evaluated "
            "(endpoints: %s)", rule.name, rule.endpoint, ", ".join(endpoints) or "none",
        )  # fmt: skip
        return
    targets = [rule.endpoint] if rule.endpoint else list(endpoints)
    start = now - rule.window_td
    if judge is not None:
        means = store.judge_means(judge, targets, start, now)
        for endpoint in targets:
            yield means[endpoint][0], {"endpoint": endpoint}
        return
    cache, kept = caches  # a drift rule reads no traffic, a traffic rule no drift runs
    kind = "drift" if rule.metric in DRIFT_METRICS else "traffic"
    missing = [e for e in targets if (kind, e, rule.window_td) not in cache]
    if missing and kind == "drift":
        drift, kept[0] = drift_of(store, missing, kept[0])
        cache |= {(kind, e, rule.window_td): drift_values(drift[e], start) for e in missing}
    elif missing:
        traffic = traffic_of(store, missing, start, now)
        cache |= {(kind, e, rule.window_td): traffic[e] for e in missing}
    for endpoint in targets:
        yield cache[(kind, endpoint, rule.window_td)][rule.metric], {"endpoint": endpoint}


def _step(
    old: AlertState | None,
    rule: Rule,
    aid: str,
    labels: Mapping[str, str],
    value: float | None,
    holds: bool,
    now: datetime,
) -> AlertState:
    base = old or AlertState(
        aid, rule.name, dict(labels), rule.severity, "inactive", None, "", None, None, None, now
    )
    base = replace(
        base,
        value=value,
        last_evaluated=now,
        severity=rule.severity,
        summary=_summary(rule, labels, value, holds),
    )
    state = base.state
    if holds:
        if state in ("inactive", "resolved"):
            base = replace(base, state="pending", active_since=now, resolved_at=None)
            state = "pending"
        if (
            state == "pending"
            and base.active_since is not None
            and now - base.active_since >= rule.for_td
        ):
            base = replace(base, state="firing", fired_at=now)
        return base
    if state == "firing":
        if value is None:  # no data is not good news (traffic stopped): it stays firing
            return base
        return replace(base, state="resolved", resolved_at=now, active_since=None)
    if state == "pending":
        return replace(base, state="inactive", active_since=None)
    return base


def endpoints_for_drift(rules: AlertRules, store: Store) -> Sequence[str]:
    named = {r.endpoint for r in rules.rules if r.metric in DRIFT_METRICS}
    if None in named:
        return [e.name for e in store.list_endpoints()]
    return sorted(n for n in named if n)
