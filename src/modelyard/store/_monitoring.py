"""Monitoring: profiles, drift results, the monitor's own state and token prices; the
aggregates of the raw records that alert rules and the report read are ``_aggregates``'s.

Changing a price is audited; what the monitor computes is not (it is derived
from the records and can be computed again).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Row,
    and_,
    delete,
    false,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError
from modelyard.store._aggregates import RecordAggregateStore
from modelyard.store._judges import JudgementRow, JudgeRow
from modelyard.store._rows import in_scope, lock_name, tenant_names, version_info
from modelyard.store._schema import (
    BaseModelRow,
    DriftResultRow,
    InferenceRecordRow,
    MonitorStateRow,
    ProfileRow,
    TokenPriceRow,
    utcnow,
)
from modelyard.store.entities import (
    DriftResult,
    JudgedQuality,
    Profile,
    TokenPrice,
)

PROFILE_WINDOWS = ("hour", "day")
_SPANS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# start, endpoint, version, tenant, shadow
_ProfileKey = tuple[datetime, str, int | None, int | None, bool]


def _window_start(window: str, t: datetime) -> datetime:
    start = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if window == "day" else start


JUDGE_CLOCK_SKEW = timedelta(hours=1)


def _judged_quality(
    s: Session, window: str, rows: Sequence[ProfileRow], scope: Mapping[str, Any]
) -> dict[_ProfileKey, dict[str, JudgedQuality]]:
    """Per profile of ``rows``: what each judge's current revision made of its records
    (a shadow profile's: the shadow answers ``rollout compare --shadow --judge`` scored).

    Read from the judgements at read time, not stored with the profile: a judge's scores
    arrive after the hour's profile was computed (online judging, rollout guards), and a
    new revision of a judge makes what the old one said count nowhere. Each record counts
    once per judge (its newest score), with the window its record was made in."""
    if not rows:
        return {}
    j, rec = JudgementRow, InferenceRecordRow
    since = min(r.start for r in rows)
    until = max(r.start for r in rows) + _SPANS[window]
    current = (JudgeRow.name == j.judge) & (JudgeRow.revision == j.revision)
    newest = select(func.max(j.id)).join(JudgeRow, current).join(rec, rec.id == j.record_id)
    newest = in_scope(newest, s, rec, rec.created_at, since=since, until=until, **scope)
    # A judgement is made after its record: its own time bounds the read by an index
    # (0019), not every judgement ever stored; the margin covers clocks of other machines.
    newest = newest.where(j.score.is_not(None), j.created_at >= since - JUDGE_CLOCK_SKEW)
    newest = newest.group_by(j.judge, j.record_id)
    found = s.execute(
        select(rec.created_at, rec.endpoint_name, rec.version_id, rec.tenant_id, rec.shadow,
               j.judge, j.score)
        .join(rec, rec.id == j.record_id)
        .where(j.id.in_(newest))
    ).all()  # fmt: skip
    sums: dict[_ProfileKey, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for created, endpoint, version_id, tenant_id, copy, judge, score in found:
        if score is None:  # never: only scored judgements are read
            continue
        key = (_window_start(window, created), endpoint, version_id, tenant_id, bool(copy))
        sums[key][f"judge.{judge}"].append(float(score))
    return {
        key: {
            metric: JudgedQuality(len(scores), sum(scores) / len(scores))
            for metric, scores in sorted(judges.items())
        }
        for key, judges in sums.items()
    }


class MonitoringStore(RecordAggregateStore):
    """Profiles, drift, alerts and prices (and, through ``RecordAggregateStore``, the
    aggregates of the raw records alert rules and the report read)."""

    # -- profiles ---------------------------------------------------------------------------

    def replace_profiles(
        self,
        window: str,
        start: datetime,
        end: datetime,
        rows: Iterable[Mapping[str, Any]],
        *,
        keep_tenants: Collection[int] = (),
    ) -> int:
        """Replace the ``window`` profile rows that start in [start, end) by ``rows``; the
        rows of ``keep_tenants`` (by id) stay as they are (``rows`` has none of theirs)."""
        check_window(window)
        values = [{**row, "window": window, "updated_at": utcnow()} for row in rows]
        kept = sorted(keep_tenants)
        if any(v.get("tenant_id") in kept for v in values):
            raise ValueError("replace_profiles: rows of a tenant whose rows are kept")
        with self._write(f"write {window} profiles") as s:
            gone = [ProfileRow.window == window, ProfileRow.start >= start, ProfileRow.start < end]
            if kept:
                gone.append(or_(ProfileRow.tenant_id.is_(None), ProfileRow.tenant_id.not_in(kept)))
            s.execute(delete(ProfileRow).where(*gone))
            if values:
                s.execute(insert(ProfileRow), values)
        return len(values)

    def profile_rows(self, window: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Raw profile rows (histograms included) of ``window`` starting in [start, end)."""
        check_window(window)
        with self._session("read profiles") as s:
            query = select(ProfileRow).where(
                ProfileRow.window == window, ProfileRow.start >= start, ProfileRow.start < end
            )
            return [
                {c.name: getattr(p, c.key) for c in ProfileRow.__table__.columns}
                for p in s.scalars(query)
            ]

    def list_profiles(
        self,
        *,
        window: str = "hour",
        endpoint: str | None = None,
        tenant: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        shadow: bool | None = False,
    ) -> list[Profile]:
        """Profiles, oldest window first, each with what the judges made of its records
        (``Profile.judges``: each judge's current revision, read from its judgements).
        ``shadow``: False (default) the profiles of users' requests, an endpoint's numbers;
        True those of the copies mirrored to shadow versions; None both (``Profile.shadow``)."""
        check_window(window)
        p = ProfileRow
        query = select(p).where(p.window == window).order_by(p.start, p.endpoint_name, p.id)
        if shadow is not None:
            query = query.where(p.shadow.is_(shadow))
        with self._session("list profiles") as s:
            query = in_scope(query, s, p, p.start, tenant=tenant, endpoint=endpoint,
                             version_id=version_id, since=since, until=until)  # fmt: skip
            rows = list(s.scalars(query))
            refs = version_info(s, {r.version_id for r in rows})
            tenants = tenant_names(s)
            scope = {"tenant": tenant, "endpoint": endpoint, "version_id": version_id}
            judged = _judged_quality(s, window, rows, scope)
            return [
                Profile(
                    r.window,
                    r.start,
                    r.endpoint_name,
                    refs[r.version_id][0] if r.version_id in refs else None,
                    tenants.get(r.tenant_id),
                    r.requests,
                    r.errors,
                    r.latency_p50_ms,
                    r.latency_p95_ms,
                    r.latency_p99_ms,
                    r.ttft_p50_ms,
                    r.ttft_p95_ms,
                    r.tokens_in,
                    r.tokens_out,
                    r.cost,
                    r.cache_hits,
                    r.cache_known,
                    r.feedback_count,
                    r.feedback_sum,
                    r.updated_at,
                    tool_calls=r.tool_calls,
                    format_checked=r.format_checked,
                    format_failures=r.format_failures,
                    ended=r.ended,
                    judges=judged.get(
                        (r.start, r.endpoint_name, r.version_id, r.tenant_id, r.shadow), {}
                    ),
                    shadow=r.shadow,
                )
                for r in rows
            ]

    # -- small state of the monitoring loop -------------------------------------------------

    def get_monitor_state(self, key: str) -> dict[str, Any] | None:
        with self._session(f"read monitor state {key!r}") as s:
            row = s.get(MonitorStateRow, key)
            return dict(row.value) if row is not None else None

    def set_monitor_state(self, key: str, value: Mapping[str, Any]) -> None:
        with self._write(f"write monitor state {key!r}") as s:
            lock_name(s, "monitor_state", key)  # insert-or-update: one writer at a time
            row = s.get(MonitorStateRow, key, populate_existing=True)
            if row is None:
                s.add(MonitorStateRow(key=key, value=dict(value), updated_at=utcnow()))
            else:
                row.value, row.updated_at = dict(value), utcnow()

    # -- drift results ----------------------------------------------------------------------

    def add_drift_results(self, results: Sequence[DriftResult], version_id: int | None) -> int:
        if not results:
            return 0
        with self._write(f"write {len(results)} drift results") as s:
            tenants = {name: tid for tid, name in tenant_names(s).items()}
            s.execute(
                insert(DriftResultRow),
                [
                    {
                        "run_id": d.run_id,
                        "computed_at": d.computed_at,
                        "endpoint_name": d.endpoint_name,
                        "version_id": version_id,
                        "tenant_id": tenants.get(d.tenant) if d.tenant else None,
                        "reference": d.reference[:200],
                        "window_start": d.window_start,
                        "window_end": d.window_end,
                        "feature": d.feature,
                        "method": d.method,
                        "value": None if d.value is None or not math.isfinite(d.value) else d.value,
                        "threshold": 0.0 if d.threshold is None else d.threshold,  # NOT NULL
                        "drifted": d.drifted,
                        "status": d.status,
                        "n_reference": d.n_reference,
                        "n_current": d.n_current,
                        "details": dict(d.details),
                        "scheduled": d.scheduled,
                    }
                    for d in results
                ],
            )
        return len(results)

    def list_drift_results(
        self,
        *,
        endpoint: str | None = None,
        run_id: str | None = None,
        latest: bool = False,
        limit: int | None = 1000,
    ) -> list[DriftResult]:
        """Drift results, newest first (at most ``limit``; None: all); ``latest`` keeps each
        endpoint's last run only (by endpoint, features in their order; the tick's last run
        where the endpoint has one, see ``DriftResult.scheduled``): the newest ``limit``
        rows of those runs, found from each endpoint's last times on the index, however
        many rows other runs have."""
        d = DriftResultRow
        query = select(*d.__table__.columns).order_by(d.computed_at.desc(), d.id.desc())
        where = [] if endpoint is None else [d.endpoint_name == endpoint]
        where += [] if run_id is None else [d.run_id == run_id]
        with self._session("list drift results") as s:
            if latest:
                where.append(_last_runs_at(s, where))
            rows = list(s.execute(query.where(*where).limit(limit)))
            refs = version_info(s, {r.version_id for r in rows})
            tenants = tenant_names(s)
        if latest:
            rows = _last_runs(rows)
        return [
            DriftResult(
                r.run_id,
                r.computed_at,
                r.endpoint_name,
                refs[r.version_id][0] if r.version_id in refs else None,
                tenants.get(r.tenant_id),
                r.reference,
                r.window_start,
                r.window_end,
                r.feature,
                r.method,
                r.value,
                None if r.method == "-" else r.threshold,  # no method: stored as 0.0
                r.drifted,
                r.status,
                r.n_reference,
                r.n_current,
                dict(r.details),
                r.scheduled,
            )
            for r in rows
        ]

    def last_drift_runs(self) -> dict[str, tuple[datetime, bool]]:
        """Each endpoint's last drift run as ``list_drift_results(latest=True)`` picks it
        (the tick's last where the endpoint has any): (its time, whether the tick made it),
        every endpoint's in one query (the tick asks which runs are due)."""
        with self._session("read the last drift runs") as s:
            return {e: (at, scheduled) for e, (scheduled, at) in _last_times(s, []).items()}

    def latest_drift_values(self) -> list[tuple[str, str | None, str, str, float, bool | None]]:
        """Each endpoint's last drift run, as its gauges show it: (endpoint, version ref,
        feature, method, value, drifted) of the features that have a value, by endpoint,
        features in their order. ``list_drift_results(latest=True, limit=None)`` without
        what the gauges do not show (each replica's ``/metrics`` reads it at every scrape)."""
        d = DriftResultRow
        query = select(
            d.run_id, d.endpoint_name, d.version_id, d.feature, d.method, d.value, d.drifted
        ).order_by(d.endpoint_name, d.id)
        with self._session("read the latest drift values") as s:
            rows = s.execute(query.where(_last_runs_at(s, []))).all()
            last = {r.endpoint_name: r.run_id for r in rows}  # two runs at one time: the later
            refs = version_info(s, {r.version_id for r in rows})
        return [
            (endpoint, refs[vid][0] if vid in refs else None, feature, method, value, drifted)
            for run, endpoint, vid, feature, method, value, drifted in rows
            if value is not None and last[endpoint] == run
        ]

    # -- prices -----------------------------------------------------------------------------

    def set_token_price(
        self, base_model: str, *, input_per_1k: float, output_per_1k: float
    ) -> TokenPrice:
        """The price per 1,000 prompt and completion tokens of ``base_model``; audited."""
        for name, value in (("input_per_1k", input_per_1k), ("output_per_1k", output_per_1k)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"{name} is {value}: a price is a number of at least 0", field=name
                )
        with self._write(f"set the price of {base_model!r}") as s:
            self._require(s, "price.set", base_model, f"set the price of {base_model!r}")
            if s.scalar(select(BaseModelRow.id).where(BaseModelRow.name == base_model)) is None:
                raise ConfigError(
                    f"no base model named {base_model!r} in the store",
                    hint="Use the base model name that `modelyard registry show` prints.",
                    field="base_model",
                )
            lock_name(s, "token_price", base_model)
            row = s.get(TokenPriceRow, base_model, populate_existing=True)
            if row is None:
                row = TokenPriceRow(base_model=base_model)
                s.add(row)
            row.input_per_1k, row.output_per_1k, row.updated_at = (
                input_per_1k,
                output_per_1k,
                utcnow(),
            )
            self._audit(
                s,
                "price.set",
                base_model,
                {"input_per_1k": input_per_1k, "output_per_1k": output_per_1k},
            )
            return TokenPrice(base_model, input_per_1k, output_per_1k, row.updated_at)

    def list_token_prices(self) -> list[TokenPrice]:
        with self._session("list token prices") as s:
            return [
                TokenPrice(r.base_model, r.input_per_1k, r.output_per_1k, r.updated_at)
                for r in s.scalars(select(TokenPriceRow).order_by(TokenPriceRow.base_model))
            ]

    def token_price_table(self) -> dict[str, tuple[float, float]]:
        """Each base model's (input, output) price per 1,000 tokens: what a cost is made of."""
        return {p.base_model: (p.input_per_1k, p.output_per_1k) for p in self.list_token_prices()}


def check_window(window: str) -> None:
    if window not in PROFILE_WINDOWS:
        raise ConfigError(f"unknown profile window {window!r}: use hour or day", field="window")


def _last_times(s: Session, where: Sequence[Any]) -> dict[str, tuple[bool, datetime]]:
    """Each endpoint's last time of drift results (``where``): of the tick's runs where it
    has any (a run made by hand later does not replace them), else of any run; with
    whether that is the tick's. Read on the index (endpoint, scheduled, time)."""
    d = DriftResultRow
    found = s.execute(
        select(d.endpoint_name, d.scheduled, func.max(d.computed_at))
        .where(*where)
        .group_by(d.endpoint_name, d.scheduled)
    ).all()
    chosen: dict[str, tuple[bool, datetime]] = {}
    for endpoint, scheduled, at in found:
        if endpoint not in chosen or scheduled:
            chosen[endpoint] = (bool(scheduled), at)
    return chosen


def _last_runs_at(s: Session, where: Sequence[Any]) -> Any:
    """A condition on drift results (``where``): at each endpoint's last time
    (``_last_times``)."""
    d = DriftResultRow
    chosen = _last_times(s, where)
    if not chosen:
        return false()
    return or_(
        *(
            and_(d.endpoint_name == endpoint, d.computed_at == at, d.scheduled == scheduled)
            for endpoint, (scheduled, at) in chosen.items()
        )
    )


def _last_runs(rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    """The rows (newest first) of each endpoint's last run (of two runs at one time, the
    later one's), by endpoint, each run's features in their order."""
    last: dict[str, str] = {}
    for r in rows:
        last.setdefault(r.endpoint_name, r.run_id)
    return sorted(
        (r for r in rows if last[r.endpoint_name] == r.run_id),
        key=lambda r: (r.endpoint_name, r.id),
    )
