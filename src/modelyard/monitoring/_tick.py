"""``tick``: one idempotent step of the monitoring loop, and the Prometheus gauges it feeds.

The rollout controller calls ``tick(store)`` every loop; ``modelyard monitor
tick`` runs it once. A step: update the profiles that can have changed,
delete raw records past each tenant's retention (only where their hour's
profile is final), run the drift checks that alert rules read (at most every
``drift.every`` per endpoint), judge the sampled share of records the rules file's
``judging:`` asks for, evaluate the rules and notify changes.
Running it again at once changes nothing and notifies nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.artifacts import ArtifactStore, artifacts_from_settings
from modelyard.durations import parse_duration
from modelyard.errors import ConfigError, ModelyardError
from modelyard.monitoring._alerts import (
    AlertRules,
    Transition,
    endpoints_for_drift,
    evaluate_rules,
)
from modelyard.monitoring._drift import DriftReport, compute_drift
from modelyard.monitoring._judging import JudgingResult, judge_online, missing_judges
from modelyard.monitoring._profiles import (
    LATENESS,
    ProfileUpdate,
    floor_day,
    floor_hour,
    update_profiles,
)
from modelyard.monitoring._rules_file import rules_from
from modelyard.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    profiles: ProfileUpdate
    purged: dict[str, int] = field(default_factory=dict)
    drift: tuple[DriftReport, ...] = ()
    drift_errors: dict[str, str] = field(default_factory=dict)
    transitions: tuple[Transition, ...] = ()
    judged: tuple[JudgingResult, ...] = ()
    judging_errors: dict[str, str] = field(default_factory=dict)


def apply_retention(store: Store, now: datetime, lateness: timedelta = LATENESS) -> dict[str, int]:
    """Delete raw records past each tenant's retention whose hour profiles are final."""
    final_before = floor_hour(now - lateness)
    purged: dict[str, int] = {}
    for policy in store.list_retention():
        if now - datetime.min.replace(tzinfo=UTC) <= timedelta(days=policy.raw_days):
            continue  # kept longer than the calendar goes back (no datetime is that old)
        cutoff = min(now - timedelta(days=policy.raw_days), final_before)
        n = store.purge_records(policy.tenant, cutoff)
        if n:
            purged[policy.tenant] = n
    return purged


def _due_drift(
    store: Store, rules: AlertRules, now: datetime, artifacts: ArtifactStore | None
) -> tuple[list[DriftReport], dict[str, str]]:
    every = parse_duration(rules.drift.every, field="drift.every")
    window = parse_duration(rules.drift.window, field="drift.window")
    reports, errors = [], {}
    last_runs = store.last_drift_runs()  # every endpoint's in one read
    for endpoint in endpoints_for_drift(rules, store):
        at, scheduled = last_runs.get(endpoint, (None, False))
        if at is not None and scheduled and now - at < every:
            continue  # (a run made by hand since is not the tick's: it does not count)
        try:
            reports.append(
                compute_drift(
                    store,
                    endpoint,
                    reference=rules.drift.reference,
                    window=window,
                    now=now,
                    artifacts=artifacts,
                    scheduled=True,
                    semantic=rules.drift.semantic,
                )
            )
        except ModelyardError as exc:  # one endpoint's bad reference must not stop the loop
            errors[endpoint] = exc.one_line()
            log.warning("drift of %s skipped: %s", endpoint, exc.one_line())
    return reports, errors


def tick(
    store: Store,
    *,
    now: datetime | None = None,
    rules: AlertRules | Path | str | None = None,
    home: Path | None = None,
    artifacts: ArtifactStore | None = None,
) -> TickReport:
    """One step of the monitoring loop (see the module docstring); safe to call repeatedly.

    ``rules`` defaults to ``<home>/alerts.yml`` when it exists (no rules otherwise);
    ``home`` and ``artifacts`` to the settings' (the eval reference reads datasets there).
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if home is None or artifacts is None:
        from modelyard.settings import load_settings

        settings = load_settings()
        home = home or settings.home
        if artifacts is None and (settings.artifacts_on_s3 or settings.artifacts_dir.is_dir()):
            artifacts = artifacts_from_settings(settings)  # the eval reference's data
    loaded = rules_from(rules, home)
    profiles = update_profiles(store, now=now)
    purged = apply_retention(store, now)
    if loaded is None:
        return TickReport(profiles, purged)
    drift: list[DriftReport] = []
    errors: dict[str, str] = {}
    if loaded.uses_drift:
        drift, errors = _due_drift(store, loaded, now, artifacts)
    judged, judging_errors = judge_online(store, loaded.judging, now)
    judging_errors |= missing_judges(store, {r.name: r.metric for r in loaded.rules})
    transitions = evaluate_rules(store, loaded, now)
    return TickReport(
        profiles, purged, tuple(drift), errors, tuple(transitions), tuple(judged), judging_errors
    )


class MonitoringCollector(Collector):
    """What the store knows and the CLI shows, as Prometheus gauges read at each scrape.

    ``modelyard_drift_value``/``modelyard_drift_detected`` per endpoint, version,
    feature and method (the latest run of each endpoint), ``modelyard_alert_firing``
    per rule, endpoint and severity; the traffic plans (``modelyard_traffic_weight_ratio``,
    ``modelyard_shadow_fraction``), the active rollouts (``modelyard_rollout_active``,
    ``modelyard_rollout_step_ratio``; the percent-valued ``modelyard_traffic_weight`` and
    ``modelyard_rollout_step_percent`` are kept, deprecated, for existing dashboards), the
    budgets (``modelyard_budget_amount``), and
    today's (UTC) feedback and judge means per endpoint and version from the day
    profiles (``modelyard_feedback_score``, ``modelyard_judge_score``). Register it on a
    server's registry, or print it with ``modelyard monitor metrics``.

    Each scrape reads the store (a few queries, however many endpoints), unless
    ``max_age_s``: then a scrape within that many seconds (``clock``) of the last read
    gets what it read, and scrapes at once of one process read the store once.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (max_age_s >= 0 and math.isfinite(max_age_s)):
            raise ConfigError(
                f"max_age_s must be 0 (read the store at every scrape) or a number of "
                f"seconds above it, got {max_age_s}",
                field="max_age_s",
            )
        self.store = store
        self.max_age_s = max_age_s
        self._clock = clock
        self._read: tuple[float, list[Metric]] | None = None  # when, and what
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        """The families that have samples (a scrape while the store is down gets none)."""
        if not self.max_age_s:
            yield from self._fresh() or []
            return
        with self._lock:
            now = self._clock()
            if self._read is None or not (0 <= now - self._read[0] < self.max_age_s):
                families = self._fresh()
                self._read = None if families is None else (now, families)  # down: not kept
            else:
                families = self._read[1]
        yield from families or []

    def _fresh(self) -> list[Metric] | None:
        try:
            return [f for f in self._families() if f.samples]
        except ModelyardError as exc:
            log.warning("no drift or alert gauges in this scrape: %s", exc.one_line())
            return None

    def _families(self) -> Iterator[Metric]:
        labels = ["endpoint", "version", "feature", "method"]
        value = GaugeMetricFamily("modelyard_drift_value", "Latest drift statistic", labels=labels)
        detected = GaugeMetricFamily(
            "modelyard_drift_detected", "1 when the latest drift test says drifted", labels=labels
        )
        for endpoint, version, feature, method, x, drifted in self.store.latest_drift_values():
            names = [endpoint, version or "", feature, method]
            value.add_metric(names, x)
            detected.add_metric(names, 1.0 if drifted else 0.0)
        # scope (tenant/key/period) tells budget alerts apart (they have no endpoint): with
        # rule, endpoint and severity alone, two budgets of one rule were one series, twice
        firing = GaugeMetricFamily(
            "modelyard_alert_firing",
            "1 while the alert fires",
            labels=["rule", "endpoint", "severity", "scope"],
        )
        for a in self.store.list_alert_states():
            budget = [a.labels.get(k) for k in ("tenant", "key", "period")]
            firing.add_metric(
                [
                    a.rule,
                    str(a.labels.get("endpoint", "")),
                    a.severity,
                    "/".join(str(b) for b in budget) if all(budget) else "",
                ],
                1.0 if a.state == "firing" else 0.0,
            )
        yield value
        yield detected
        yield firing
        yield from _delivery_families(self.store)
        yield from _quality_families(self.store)


def _delivery_families(store: Store) -> Iterator[Metric]:
    """Traffic plans, active rollouts and budgets: what ``endpoints list``, ``rollout
    status`` and ``budgets list`` show."""
    route_labels = ["endpoint", "model", "version"]
    share = GaugeMetricFamily(
        "modelyard_traffic_weight_ratio", "Share of the endpoint's traffic a version gets (0 to 1)",
        labels=route_labels,
    )  # fmt: skip
    weight = GaugeMetricFamily(
        "modelyard_traffic_weight",
        "Deprecated, use modelyard_traffic_weight_ratio: percent of the endpoint's traffic a "
        "version gets",
        labels=route_labels,
    )
    shadow = GaugeMetricFamily(
        "modelyard_shadow_fraction", "Share of requests mirrored to the shadow version",
        labels=route_labels,
    )  # fmt: skip
    for e in store.list_endpoints():
        for r in e.routes:
            names = [e.name, e.model, f"{e.model}:{r.version}"]
            share.add_metric(names, r.weight / 100)
            weight.add_metric(names, float(r.weight))
        if e.shadow_version is not None:
            shadow.add_metric([e.name, e.model, f"{e.model}:{e.shadow_version}"],
                              e.shadow_fraction)  # fmt: skip
    labels = ["endpoint", "target", "strategy", "status", "phase"]
    active = GaugeMetricFamily(
        "modelyard_rollout_active", "1 for each rollout in progress", labels=labels
    )
    step_ratio = GaugeMetricFamily(
        "modelyard_rollout_step_ratio",
        "Share of traffic the rollout's step gives its target (0 to 1)",
        labels=["endpoint", "target"],
    )
    step = GaugeMetricFamily(
        "modelyard_rollout_step_percent",
        "Deprecated, use modelyard_rollout_step_ratio: percent of traffic the rollout's step "
        "gives its target",
        labels=["endpoint", "target"],
    )
    for ro in store.list_rollouts(active=True, limit=10_000):
        target = f"{ro.model}:{ro.target}"
        active.add_metric([ro.endpoint, target, ro.strategy, ro.status, ro.phase], 1.0)
        if ro.steps:
            percent = ro.steps[min(ro.step_index, len(ro.steps) - 1)]
            step_ratio.add_metric([ro.endpoint, target], percent / 100)
            step.add_metric([ro.endpoint, target], float(percent))
    amount = GaugeMetricFamily(
        "modelyard_budget_amount", "A tenant's or key's budget per period (the prices' currency)",
        labels=["tenant", "key", "period"],
    )  # fmt: skip
    for b in store.list_budgets():
        amount.add_metric([b.tenant, b.key_id or "", b.period], b.amount)
    yield from (share, weight, shadow, active, step_ratio, step, amount)


def _quality_families(store: Store) -> Iterator[Metric]:
    """Today's (UTC) feedback and judge means per endpoint and version, from the day
    profiles the monitoring loop keeps (``monitor profiles --window day``)."""
    feedback = GaugeMetricFamily(
        "modelyard_feedback_score", "Mean feedback score today (UTC), -1 to 1",
        labels=["endpoint", "version"],
    )  # fmt: skip
    judged = GaugeMetricFamily(
        "modelyard_judge_score", "Mean judge score today (UTC), on the judge's scale",
        labels=["endpoint", "version", "judge"],
    )  # fmt: skip
    today = floor_day(datetime.now(UTC))
    fb: dict[tuple[str, str], list[float]] = {}
    scores: dict[tuple[str, str, str], list[float]] = {}
    for p in store.list_profiles(window="day", since=today):
        where = (p.endpoint_name, p.version or "")
        total = fb.setdefault(where, [0.0, 0.0])
        total[0] += p.feedback_sum
        total[1] += p.feedback_count
        for name, quality in p.judges.items():
            if quality.scored:
                acc = scores.setdefault((*where, name), [0.0, 0.0])
                acc[0] += quality.mean * quality.scored
                acc[1] += quality.scored
    for where, (summed, count) in fb.items():
        if count:
            feedback.add_metric(list(where), summed / count)
    for key, (summed, count) in scores.items():
        judged.add_metric(list(key), summed / count)
    yield from (feedback, judged)
