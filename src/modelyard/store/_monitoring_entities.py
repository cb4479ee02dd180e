"""Monitoring entities returned by the store (re-exported by ``entities``): a record's
drift features, hour and day profiles with their judged quality, drift results, alert
states and notifications, retention policies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RecordFeatures:
    """Drift features of one request, taken from the raw text before the storage policy.

    Shares are in [0, 1]; ``unknown_token_rate`` and ``cache_hit`` are None when
    the engine cannot tell; ``embedding`` is a float16 sentence embedding, if any.
    """

    prompt_chars: int = 0
    response_chars: int = 0
    prompt_non_ascii: float = 0.0
    prompt_digits: float = 0.0
    response_non_ascii: float = 0.0
    response_digits: float = 0.0
    unknown_token_rate: float | None = None
    cache_hit: bool | None = None
    embedding: bytes | None = None


@dataclass(frozen=True)
class JudgedQuality:
    """What one judge's current revision made of a profile's records: how many of them it
    scored (each record once, its newest score) and the mean of those scores (1 to 5)."""

    scored: int
    mean: float


@dataclass(frozen=True)
class Profile:
    """Aggregates of one window (``hour`` or ``day`` from ``start``) of an endpoint's
    records for one version and tenant: its users' requests, or with ``shadow`` the copies
    mirrored to the version as the endpoint's shadow (answered, never returned: its own
    numbers, in none of the endpoint's). ``judges`` (``judge.NAME`` -> its quality) is read
    from the judgements when the profiles are listed, not stored with them."""

    window: str
    start: datetime
    endpoint_name: str
    version: str | None
    tenant: str | None
    requests: int
    errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tokens_in: int
    tokens_out: int
    cost: float | None
    cache_hits: int
    cache_known: int
    feedback_count: int
    feedback_sum: float
    updated_at: datetime
    tool_calls: int = 0  # calls the answers made
    format_checked: int = 0  # answers that had to be JSON or a call
    format_failures: int = 0  # of those, the ones that were not (cut short, say)
    judges: Mapping[str, JudgedQuality] = field(default_factory=dict)  # judge.NAME -> quality
    ended: int | None = None  # ok, error or timeout; None in profiles made before 0024
    shadow: bool = False  # a shadow version's profile of the copies mirrored to it

    @property
    def answered(self) -> int:
        """The requests that ended (ok, error or timeout): refused ones (a client's mistake)
        and cancelled ones say nothing of the version. Every request, in profiles computed
        before they were counted."""
        return self.requests if self.ended is None else self.ended

    @property
    def error_rate(self) -> float:
        """Errors and timeouts over the requests that ended, as alerts and guards count."""
        return self.errors / self.answered if self.answered else 0.0

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_hits / self.cache_known if self.cache_known else None

    @property
    def feedback_mean(self) -> float | None:
        return self.feedback_sum / self.feedback_count if self.feedback_count else None


@dataclass(frozen=True)
class RecordSummary:
    """An endpoint's records created in a window, aggregated in the database: what alert
    rules read. ``latency_ms`` and ``ttft_ms`` map a percentile to its value (numpy's
    ``percentile``, linear interpolation) over the records answered ok (``answered_ok``:
    never a refusal, a cancelled request or a failure), and those of them with a time to
    first token; ``latency_mean_ms`` is theirs too. A percentile is missing when there is
    no such record."""

    records: int  # every record, whatever its status
    ended: int  # ok, error or timeout
    failed: int  # error or timeout
    latency_mean_ms: float | None
    tokens_in: int
    tokens_out: int
    feedback_count: int
    feedback_sum: float
    latency_ms: Mapping[int, float] = field(default_factory=dict)
    ttft_ms: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HourLatency:
    """One hour of an endpoint's records (every version and tenant together): how many
    there are (whatever their status) and the exact percentiles (numpy's linear) of the
    latency and time to first token of those answered ok (``answered_ok``)."""

    start: datetime
    records: int
    latency_ms: Mapping[int, float]
    ttft_ms: Mapping[int, float]


@dataclass(frozen=True)
class DriftResult:
    """One feature's drift test in one run.

    ``status`` is ok, drift, not_enough_data or no_reference; ``threshold`` is None where
    no method applied (``method`` is ``-``). ``scheduled``: the monitoring tick made the
    run; where an endpoint has such runs, its latest one is what alerts, gauges and the
    report read, not a later run made by hand.
    """

    run_id: str
    computed_at: datetime
    endpoint_name: str
    version: str | None
    tenant: str | None
    reference: str
    window_start: datetime
    window_end: datetime
    feature: str
    method: str
    value: float | None
    threshold: float | None
    drifted: bool | None
    status: str
    n_reference: int
    n_current: int
    details: Mapping[str, Any] = field(default_factory=dict)
    scheduled: bool = False  # made by the monitoring tick (the rules file's drift:)


@dataclass(frozen=True)
class AlertState:
    """One alert: a rule for one set of labels (``state``: pending, firing, resolved)."""

    id: str
    rule: str
    labels: Mapping[str, str]
    severity: str
    state: str
    value: float | None
    summary: str
    active_since: datetime | None
    fired_at: datetime | None
    resolved_at: datetime | None
    last_evaluated: datetime


@dataclass(frozen=True)
class AlertNotification:
    """One delivery (or failed delivery) of an alert's change of state."""

    alert_id: str
    rule: str
    state: str
    target: str
    sent_at: datetime
    ok: bool
    attempts: int
    error: str | None


@dataclass(frozen=True)
class RetentionPolicy:
    tenant: str
    raw_days: int
    updated_at: datetime


__all__ = [
    "AlertNotification",
    "AlertState",
    "DriftResult",
    "JudgedQuality",
    "Profile",
    "RecordFeatures",
    "RetentionPolicy",
]
