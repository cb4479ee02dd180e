"""Aggregates of an endpoint's raw inference records, computed in the database: the
summaries alert rules read (counts, sums, mean latency, feedback, exact percentiles) and
the hourly latency of the report. No row object per record: a busy endpoint has millions.

Each counts the records of users' requests (``user_facing``: no shadow copy); latency and
time to first token are those of the requests answered ok (``answered_ok``), feedback that
on the requests answered (``answered``: a correction of a request that got no answer is
training data, its score rates no answer). Percentiles are numpy's, to the last bit
(``linear_percentile``), from the few values around each rank the database sends back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from modelyard.store._core import StoreCore
from modelyard.store._monitoring_entities import HourLatency, RecordSummary
from modelyard.store._rows import epoch_seconds
from modelyard.store._samples import ENDED, FAILED, answered, answered_ok, user_facing
from modelyard.store._schema import FeedbackRow, InferenceRecordRow


def linear_percentile(n: int, q: int, at: Mapping[int, float]) -> float:
    """``numpy.percentile(values, q)`` (linear interpolation) of ``n`` values, from the
    sorted values at the indexes it reads (``at``: 0-based index -> value), with numpy's
    own arithmetic, so the result is the same to the last bit."""
    index = (n - 1) * (q / 100)  # numpy: (n - 1) * (q / 100), in float64
    if index >= n - 1:
        return at[n - 1]
    lo = math.floor(index)
    t = index - lo
    a, b = at[lo], at[lo + 1]
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t  # numpy's _lerp


def _percentiles(
    s: Session,
    column: Any,
    where: Sequence[Any],
    percentiles: Sequence[int],
    bucket: Any = None,
    key: Callable[[Any], Any] = int,
) -> dict[Any, tuple[int, dict[int, float]]]:
    """Per bucket (0 without one; ``key`` of its value): how many non-null values of
    ``column`` there are and their ``percentiles``, exactly as numpy's ``percentile`` gives
    them.

    The database ranks the values (a window function; SQLite 3.25+ and PostgreSQL) and
    sends back only the few around each percentile's rank: those numpy reads are among
    them (its float index is within one of the exact (n - 1) * q / 100), never every
    value."""
    part = [bucket] if bucket is not None else None
    ranked = (
        select(
            (bucket if bucket is not None else literal(0)).label("bucket"),
            column.label("value"),
            func.row_number().over(partition_by=part, order_by=column).label("rn"),
            func.count().over(partition_by=part).label("n"),
        )
        .where(*where, column.is_not(None))
        .subquery()
    )
    c = ranked.c
    near = or_(*(and_(c.rn >= (c.n - 1) * q // 100, c.rn <= (c.n - 1) * q // 100 + 3)
                 for q in percentiles))  # fmt: skip
    found: dict[Any, tuple[int, dict[int, float]]] = {}
    for b, n, rn, value in s.execute(select(c.bucket, c.n, c.rn, c.value).where(near)):
        found.setdefault(key(b), (int(n), {}))[1][int(rn) - 1] = float(value)
    return {
        b: (n, {q: linear_percentile(n, q, at) for q in percentiles})
        for b, (n, at) in found.items()
    }


NAMED_ENDPOINTS = 500  # endpoints named in one statement: a longer list is read in parts


def _summaries(
    s: Session,
    names: Sequence[str],
    since: datetime,
    until: datetime,
    latency: Sequence[int],
    ttft: Sequence[int],
) -> dict[str, RecordSummary]:
    """``MonitoringStore.record_summaries`` of ``names``: grouped by endpoint, read on the
    index (endpoint, time); endpoints without records left out."""
    r, fb = InferenceRecordRow, FeedbackRow
    named = r.endpoint_name == names[0] if len(names) == 1 else r.endpoint_name.in_(names)
    where = (named, r.created_at >= since, r.created_at < until, user_facing(r.shadow))
    timed = (*where, answered_ok(r.status))
    totals = select(
        r.endpoint_name,
        func.count(r.id),
        func.sum(case((r.status.in_(ENDED), 1), else_=0)),
        func.sum(case((r.status.in_(FAILED), 1), else_=0)),
        func.avg(case((answered_ok(r.status), r.latency_ms))),
        func.sum(r.prompt_tokens),
        func.sum(r.completion_tokens),
        func.count(fb.score),
        func.sum(fb.score),
    ).select_from(r).where(*where)  # fmt: skip
    # feedback on the requests answered only: a correction's score rates no answer
    totals = totals.outerjoin(fb, and_(fb.record_id == r.id, answered(r.status)))
    rows = s.execute(totals.group_by(r.endpoint_name)).all()
    lat = _percentiles(s, r.latency_ms, timed, latency, r.endpoint_name, key=str)
    first = _percentiles(s, r.ttft_ms, timed, ttft, r.endpoint_name, key=str)
    return {
        name: RecordSummary(
            records=int(n),
            ended=int(done or 0),
            failed=int(bad or 0),
            latency_mean_ms=None if mean is None else float(mean),
            tokens_in=int(t_in or 0),
            tokens_out=int(t_out or 0),
            feedback_count=int(fb_n),
            feedback_sum=float(fb_sum or 0.0),
            latency_ms=lat.get(name, (0, {}))[1],
            ttft_ms=first.get(name, (0, {}))[1],
        )
        for name, n, done, bad, mean, t_in, t_out, fb_n, fb_sum in rows
    }


class RecordAggregateStore(StoreCore):
    """Aggregates of the raw records: summaries and hourly latency."""

    def record_summary(
        self,
        endpoint: str,
        since: datetime,
        until: datetime,
        *,
        latency: Sequence[int] = (50, 95, 99),
        ttft: Sequence[int] = (95,),
    ) -> RecordSummary:
        """``endpoint``'s records created in [since, until) of its users' requests
        (``user_facing``: no shadow copy), aggregated in the database (counts, sums, mean,
        exact percentiles): no row object per record. The latency and time to first token
        are those of the requests answered ok (``answered_ok``)."""
        return self.record_summaries([endpoint], since, until, latency=latency, ttft=ttft)[endpoint]

    def record_summaries(
        self,
        endpoints: Iterable[str],
        since: datetime,
        until: datetime,
        *,
        latency: Sequence[int] = (50, 95, 99),
        ttft: Sequence[int] = (95,),
    ) -> dict[str, RecordSummary]:
        """``record_summary`` of each of ``endpoints``, read together: three queries for
        every ``NAMED_ENDPOINTS`` endpoints, not three each (alert rules read every
        endpoint's at each evaluation)."""
        names = sorted(set(endpoints))
        found: dict[str, RecordSummary] = {}
        what = repr(names[0]) if len(names) == 1 else f"{len(names)} endpoints"
        with self._session(f"summarize the records of {what}") as s:
            for k in range(0, len(names), NAMED_ENDPOINTS):
                found |= _summaries(s, names[k : k + NAMED_ENDPOINTS], since, until, latency, ttft)
        empty = RecordSummary(0, 0, 0, None, 0, 0, 0, 0.0)
        return {name: found.get(name, empty) for name in names}

    def hourly_latency(
        self,
        endpoint: str,
        since: datetime,
        until: datetime,
        *,
        latency: Sequence[int] = (50, 95, 99),
        ttft: Sequence[int] = (50,),
    ) -> list[HourLatency]:
        """Per hour with records in [since, until), every version and tenant of
        ``endpoint`` together: the records of its users' requests (``user_facing``: no
        shadow copy) and the exact latency and time-to-first-token percentiles of those
        answered ok (as an hour profile computes them for one version and tenant)."""
        r = InferenceRecordRow
        where = (
            r.endpoint_name == endpoint,
            r.created_at >= since,
            r.created_at < until,
            user_facing(r.shadow),
        )
        timed = (*where, answered_ok(r.status))
        with self._session(f"read the hourly latency of {endpoint!r}") as s:
            hour = epoch_seconds(s, r.created_at) // 3600  # hours since 1970
            counts = s.execute(select(hour, func.count()).where(*where).group_by(hour)).all()
            lat = _percentiles(s, r.latency_ms, timed, latency, hour)
            first = _percentiles(s, r.ttft_ms, timed, ttft, hour)
        return [
            HourLatency(
                datetime.fromtimestamp(int(h) * 3600, UTC),
                int(n),
                lat.get(int(h), (0, {}))[1],
                first.get(int(h), (0, {}))[1],
            )
            for h, n in sorted(counts)
        ]


__all__ = ["NAMED_ENDPOINTS", "RecordAggregateStore", "linear_percentile"]
