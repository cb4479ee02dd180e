"""Grouped reads of the inference records for charts: an endpoint's traffic over time,
and feedback per version.

Each is one query grouped in the database, never a row object per record: a busy
endpoint has millions of records, and a chart needs a few numbers per minute.
Latency percentiles are those of the requests answered ok (``answered_ok``, as rollout
guards and alert rules read latency), the nearest rank (the smallest latency with at
least p % of them at or under it), computed with window functions that SQLite (3.25+)
and PostgreSQL both have. Reads only: nothing here is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select

from modelyard.errors import ConfigError
from modelyard.store._core import StoreCore
from modelyard.store._rows import epoch_seconds, tenant_id_of, version_info
from modelyard.store._samples import FAILED, answered, answered_ok
from modelyard.store._schema import FeedbackRow, InferenceRecordRow

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class TrafficPoint:
    """One version's requests in one bucket of time (``start``, ``start + bucket_s``)."""

    start: datetime
    version: str | None  # NAME:N; None for requests no version answered
    shadow: bool  # mirrored copies (answers recorded, never returned)
    requests: int  # finished requests: every status but ``running``
    errors: int  # of them, errors and timeouts (never a client's mistake, ``refused``)
    # the latency of those answered ok; None where none was
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


@dataclass(frozen=True)
class FeedbackSummary:
    """The feedback on one endpoint version's answers (``answered``: no correction of a
    request that got no answer)."""

    endpoint: str
    version: str | None
    count: int
    mean_score: float | None
    positive: int  # score above 0
    negative: int  # score below 0
    last_at: datetime | None


class SeriesStore(StoreCore):
    """Traffic series and feedback summaries."""

    def traffic_series(
        self, endpoint: str, *, since: datetime, until: datetime, bucket_s: int
    ) -> list[TrafficPoint]:
        """Per bucket of ``bucket_s`` seconds (aligned on multiples of it since 1970) and per
        version (shadow copies apart): requests, errors and latency p50/p95/p99 (of those
        answered ok) of ``endpoint``'s records created in [since, until); buckets without
        requests are left out. Oldest first."""
        if bucket_s < 1:
            raise ConfigError(f"bucket of {bucket_s} s: use 1 or more seconds", field="bucket")
        r = InferenceRecordRow
        with self._session(f"read the traffic of {endpoint!r}") as s:
            bucket = epoch_seconds(s, r.created_at) // bucket_s
            ok = answered_ok(r.status)
            # ranked among the group's requests answered ok (and apart, the others: unread)
            timed = (bucket, r.version_id, r.shadow, ok)
            ranked = (
                select(
                    bucket.label("bucket"),
                    r.version_id,
                    r.shadow,
                    r.status,
                    ok.label("ok"),
                    r.latency_ms,
                    func.row_number().over(partition_by=timed, order_by=r.latency_ms).label("rn"),
                    func.count().over(partition_by=timed).label("n"),
                )
                .where(
                    r.endpoint_name == endpoint,  # ix_inference_records_endpoint_created
                    r.created_at >= since,
                    r.created_at < until,
                    r.status != "running",
                )
                .subquery()
            )
            c = ranked.c
            percentiles = [
                func.min(case((c.ok & (c.rn * 100 >= p * c.n), c.latency_ms))) for p in PERCENTILES
            ]
            query = (
                select(
                    c.bucket,
                    c.version_id,
                    c.shadow,
                    func.count(),
                    func.sum(case((c.status.in_(FAILED), 1), else_=0)),
                    *percentiles,
                )
                .group_by(c.bucket, c.version_id, c.shadow)
                .order_by(c.bucket, c.version_id, c.shadow)
            )
            rows = s.execute(query).all()
            refs = version_info(s, {row[1] for row in rows})
        return [
            TrafficPoint(
                start=datetime.fromtimestamp(int(b) * bucket_s, UTC),
                version=refs[vid][0] if vid in refs else None,
                shadow=bool(shadow),
                requests=int(n),
                errors=int(errors or 0),
                latency_p50_ms=None if p50 is None else float(p50),
                latency_p95_ms=None if p95 is None else float(p95),
                latency_p99_ms=None if p99 is None else float(p99),
            )
            for b, vid, shadow, n, errors, p50, p95, p99 in rows
        ]

    def feedback_summary(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
    ) -> list[FeedbackSummary]:
        """Feedback per endpoint and version: count, mean score, how many were positive and
        negative, and when the last was given; ``since`` keeps what was given or changed at
        or after it. By endpoint, then version. Only the feedback on requests answered
        (``answered``): a correction of one that got no answer rates no answer (it is kept,
        training data, and listed by ``list_feedback``)."""
        fb, r = FeedbackRow, InferenceRecordRow
        query = (
            select(
                r.endpoint_name,
                r.version_id,
                func.count(),
                func.avg(fb.score),
                func.sum(case((fb.score > 0, 1), else_=0)),
                func.sum(case((fb.score < 0, 1), else_=0)),
                func.max(fb.updated_at),
            )
            # an outer join: SQLite then reads the feedback and finds each one's record, where
            # an inner join had it read every record of the store to find those with feedback
            .outerjoin(r, r.id == fb.record_id)
            .where(answered(r.status))
            .group_by(r.endpoint_name, r.version_id)
        )
        with self._session("summarize feedback") as s:
            if endpoint is not None:
                query = query.where(r.endpoint_name == endpoint)
            if tenant is not None:
                query = query.where(fb.tenant_id == tenant_id_of(s, tenant))
            if since is not None:
                query = query.where(fb.updated_at >= since)
            rows = s.execute(query).all()
            refs = version_info(s, {row[1] for row in rows})
        found = [
            FeedbackSummary(
                endpoint=name,
                version=refs[vid][0] if vid in refs else None,
                count=int(n),
                mean_score=None if mean is None else float(mean),
                positive=int(pos or 0),
                negative=int(neg or 0),
                last_at=_aware(last),
            )
            for name, vid, n, mean, pos, neg, last in rows
            if name is not None  # (feedback whose record is gone: none, as the inner join)
        ]
        return sorted(found, key=lambda f: (f.endpoint, f.version or ""))


def _aware(value: Any) -> datetime | None:
    """``max`` over a timestamp column: SQLite gives the stored text, PostgreSQL a datetime."""
    if value is None:
        return None
    found: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


__all__ = ["FeedbackSummary", "SeriesStore", "TrafficPoint"]
