"""Sending alerts to Prometheus Alertmanager (the rules file's ``notify.alertmanager``), the
way Prometheus does.

At every evaluation, each firing alert is POSTed to each Alertmanager's v2 API
(``/api/v2/alerts``, a JSON list) with ``endsAt`` = now + 4 x the longer of
``evaluation_interval`` and a minute (Prometheus's resend delay): Alertmanager keeps it
active while modelyard evaluates, even when an evaluation is held up a while, and resolves
it by itself when modelyard stops. An alert that resolved in the last 15 minutes is sent
with ``endsAt`` = the time it resolved, at every evaluation too (Prometheus's resolved
retention), so an Alertmanager that was down for a while still hears of it. Nothing is
kept in the store: what did not get through goes again at the next evaluation.

Failures never stop the evaluation nor the other channels: an Alertmanager that is down
(no connection, a timeout, a 5xx after the retries) is one log line per evaluation; an
alert it refuses (a 400: an invalid label, say) is a log line naming the alert and
Alertmanager's message.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.durations import parse_duration
from modelyard.errors import ConfigError
from modelyard.monitoring._notify import (
    fill_annotations,
    http_url,
    metric_span,
    request_headers,
)
from modelyard.store import AlertState

log = logging.getLogger("modelyard.alerts")

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""A Prometheus label name; Alertmanager refuses an alert with any other."""
API_PATH = "/api/v2/alerts"
RESEND_DELAY = timedelta(minutes=1)
"""Prometheus's ``--rules.alert.resend-delay`` (default): ``endsAt`` is 4 of it ahead at
least, however short the evaluation interval."""
RESOLVED_RETENTION = timedelta(minutes=15)
"""How long a resolved alert is sent again at each evaluation (as Prometheus does)."""
BATCH = 256
"""Alerts per POST (Prometheus's notifier sends at most as many in one)."""
SHOWN = 10
"""Refused alerts logged one by one in an evaluation, per Alertmanager; the rest counted."""


class AlertmanagerConfig(BaseModel):
    """The rules file's ``notify.alertmanager``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: list[str] = Field(
        description="an Alertmanager's base URL (http://am:9093), or a list: each of an HA "
        "set gets every alert"
    )
    # bounded: the evaluation waits for each POST, its tries and their backoff (doubling)
    timeout_s: float = Field(default=5.0, gt=0, le=60, allow_inf_nan=False)
    retries: int = Field(default=1, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0, le=10, allow_inf_nan=False)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)  # may hold secrets
    evaluation_interval: str = "1m"  # how often the rules are evaluated (``valid_for``)

    @field_validator("url", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValueError("give a URL, e.g. http://alertmanager:9093, or a list of URLs")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return request_headers(value)

    @field_validator("url")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("give at least one Alertmanager URL, e.g. http://alertmanager:9093")
        for url in urls:
            parsed = httpx.URL(http_url(url))
            if parsed.query or parsed.fragment:
                raise ValueError(f"{url!r}: give the Alertmanager's URL without a query or "
                                 "fragment, e.g. http://alertmanager:9093")  # fmt: skip
            if "/api/" in f"{parsed.path.rstrip('/')}/":
                raise ValueError(
                    f"{url!r}: give the Alertmanager's base URL, e.g. "
                    f"http://alertmanager:9093; modelyard adds {API_PATH}"
                )
        bases = [u.rstrip("/") for u in urls]
        repeated = sorted({u for u in bases if bases.count(u) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} given more than once")
        return urls

    @field_validator("evaluation_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        length = parse_duration(value)
        if not timedelta(seconds=1) <= length <= timedelta(days=1):
            raise ValueError(f"{value!r} must be between 1s and 1d: how often the rules are "
                             "evaluated (the serve loop: 15s; a cron job: its period)")  # fmt: skip
        return value

    @property
    def urls(self) -> list[str]:
        """Where the alerts are POSTed: each base URL's ``/api/v2/alerts``."""
        return [u.rstrip("/") + API_PATH for u in self.url]

    @property
    def valid_for(self) -> timedelta:
        """How far ahead of each evaluation a firing alert's ``endsAt`` is: 4 x the longer
        of the evaluation interval and the resend delay, as Prometheus does (a 15 s
        evaluation held up by a slow drift run or webhook must not let Alertmanager resolve
        an alert that still fires)."""
        return 4 * max(parse_duration(self.evaluation_interval), RESEND_DELAY)


class RuleLabels(Protocol):
    """A rule as the label check reads it (``_alerts.Rule``)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


class RuleShown(RuleLabels, Protocol):
    """A rule as an alert's description reads it (``_alerts.Rule``)."""

    @property
    def metric(self) -> str: ...
    @property
    def comparison(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def window(self) -> str: ...
    @property
    def for_(self) -> str: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


def check_label_names(rules: Sequence[RuleLabels], source: str) -> None:
    """Refuse (a ConfigError naming ``rules.N.labels``) a rule whose labels Alertmanager
    would refuse: a name that is no Prometheus label name, or ``alertname`` (the rule's
    name there)."""
    for i, rule in enumerate(rules):
        for name in rule.labels:
            if name == "alertname":
                why = "is the rule's name in Alertmanager; use another label name"
            elif not LABEL_NAME.fullmatch(name):
                fixed = re.sub(r"[^a-zA-Z0-9_]", "_", name)
                fixed = fixed if LABEL_NAME.fullmatch(fixed) else f"_{fixed}"
                why = (f"is not a Prometheus label name (letters, digits and _, not starting "
                       f"with a digit), which notify.alertmanager needs; rename it, e.g. "
                       f"{fixed!r}")  # fmt: skip
            else:
                continue
            field = f"rules.{i}.labels"
            raise ConfigError(f"{source}: {field}: label {name!r} of rule {rule.name} {why}",
                              field=field)  # fmt: skip


def _rfc3339(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe(rule: RuleShown) -> str:
    held = f" for {rule.for_}" if rule.for_ not in ("0", "0s") else ""
    span = metric_span(rule.metric, rule.window)
    return (f"modelyard rule {rule.name}: {rule.metric} {span} "
            f"{rule.comparison} {rule.threshold:g}{held}")  # fmt: skip


def postable(
    alert: AlertState, rule: RuleShown | None, now: datetime, until: datetime
) -> dict[str, Any]:
    """``alert`` as Alertmanager's v2 API takes it (a ``postableAlert``): firing, valid
    until ``until``; resolved, ended when it resolved."""
    labels = {k: v for k, v in alert.labels.items() if v != ""}  # "" is no label there
    labels = {"severity": alert.severity, **labels, "alertname": alert.rule}
    annotations = {**fill_annotations(rule, alert.labels, alert.value), "summary": alert.summary}
    if rule is not None:
        annotations["description"] = _describe(rule)
    if alert.value is not None:
        annotations["value"] = f"{alert.value:g}"
    ends = until if alert.state == "firing" else alert.resolved_at or now
    starts = min(alert.fired_at or alert.active_since or ends, ends)
    return {"labels": labels, "annotations": annotations, "startsAt": _rfc3339(starts),
            "endsAt": _rfc3339(ends)}  # fmt: skip


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def send_alerts(
    config: AlertmanagerConfig,
    alerts: Iterable[AlertState],
    rules: Sequence[RuleShown],
    now: datetime,
) -> int:
    """POST the firing alerts, and those resolved in the last 15 minutes, to every
    Alertmanager of ``config``; return how many Alertmanagers took them all."""
    since = now - RESOLVED_RETENTION
    due = [
        a
        for a in alerts
        if a.state == "firing"
        or (a.state == "resolved" and a.resolved_at is not None and _aware(a.resolved_at) >= since)
    ]
    if not due:
        return 0
    by_name = {r.name: r for r in rules}
    until = now + config.valid_for
    sent = [(a, postable(a, by_name.get(a.rule), now, until)) for a in due]
    return sum(_send(config, url, sent) for url in config.urls)


@dataclass(frozen=True)
class _Answer:
    ok: bool
    error: str | None = None  # why not
    down: bool = False  # every try failed: no connection, a timeout or a 5xx
    status: int | None = None  # a 4xx


def _post(client: httpx.Client, config: AlertmanagerConfig, url: str, body: list[Any]) -> _Answer:
    """POST ``body``; retry connection errors, timeouts and 5xx answers with backoff."""
    error = ""
    for attempt in range(config.retries + 1):
        try:
            reply = client.post(url, json=body)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if reply.status_code < 300:
                return _Answer(True)
            said = _message(reply)
            error = f"HTTP {reply.status_code}: {said}"
            if reply.status_code < 500:
                return _Answer(False, error, status=reply.status_code)
        if attempt < config.retries:
            time.sleep(config.backoff_s * (2**attempt))
    return _Answer(False, f"{error} (after {config.retries + 1} tries)", down=True)


def _message(reply: httpx.Response) -> str:
    """What Alertmanager said: a JSON string (a 400), an object's ``message`` (a 422)."""
    try:
        said = reply.json()
    except ValueError:
        said = reply.text
    if isinstance(said, dict):
        said = said.get("message", said)
    return str(said).strip()[:300]


def _named(alert: AlertState) -> str:
    where = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return f"alert {alert.rule} [{where}]"


INVALID = (400, 422)
"""Alertmanager's answers to alerts it refuses (invalid labels, times): about the alerts.
Any other 4xx (a 404 for a route prefix it does not have, a proxy's 401 or 403) is about
the request, whatever alerts it holds."""


def _send(config: AlertmanagerConfig, url: str, sent: Sequence[tuple[AlertState, Any]]) -> bool:
    """Every alert of ``sent`` to one Alertmanager, in batches; the first that finds it
    down, or that it refuses for a reason not of the alerts, ends this evaluation's
    sending there (one log line)."""
    refused: list[tuple[AlertState, str]] = []
    with httpx.Client(timeout=config.timeout_s, headers=dict(config.headers)) as client:
        for i in range(0, len(sent), BATCH):
            batch = sent[i : i + BATCH]
            answer = _post(client, config, url, [body for _, body in batch])
            if answer.ok:
                continue
            if answer.down or answer.status not in INVALID:
                if answer.down:
                    log.error("alerts: alertmanager %s is down (%s): %d alert(s) not sent; "
                              "the firing ones are sent again at the next evaluation", url,
                              answer.error, len(sent) - i)  # fmt: skip
                else:
                    log.error("alerts: alertmanager %s answered %s: %d alert(s) not sent; "
                              "check notify.alertmanager.url (the base URL, with its "
                              "--web.route-prefix) and any proxy in front of it", url,
                              answer.error, len(sent) - i)  # fmt: skip
                _say_refused(url, refused)
                return False
            if len(batch) > 1:  # which alert? each alone
                for alert, body in batch:  # (Alertmanager took the valid ones already)
                    alone = _post(client, config, url, [body])
                    if not alone.ok:
                        refused.append((alert, alone.error or ""))
            else:
                refused += [(alert, answer.error or "") for alert, _ in batch]
    _say_refused(url, refused)
    return not refused


def _say_refused(url: str, refused: Sequence[tuple[AlertState, str]]) -> None:
    for alert, error in refused[:SHOWN]:
        log.error("%s: alertmanager %s refused it: %s", _named(alert), url, error)
    if len(refused) > SHOWN:
        log.error("alerts: alertmanager %s refused %d more alert(s)", url, len(refused) - SHOWN)
