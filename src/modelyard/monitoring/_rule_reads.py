"""What alert rules read of the endpoints' traffic and drift, every endpoint's together.

A rule without an endpoint reads every endpoint (journey 5: a base shared by 200
tenants, an endpoint each): their records' summaries of a window are read grouped by
endpoint, their latest drift runs in one read, so an evaluation costs a few queries per
window, not a few per endpoint. Each is read only for a rule that needs it: the records'
summaries for a rule on traffic, the drift runs for a rule on drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from modelyard.store import Store
from modelyard.store.entities import DriftResult, RecordSummary

LATENCY = (50, 95, 99)  # the latency percentiles rules read (p50_latency_ms, ...)
TTFT = (95,)


def traffic_values(t: RecordSummary) -> dict[str, float | None]:
    """The traffic metrics of a summary of an endpoint's records; the percentiles are
    numpy's."""
    return {
        "requests": float(t.ended),
        "errors": float(t.failed),
        "error_rate": t.failed / t.ended if t.ended else None,
        "p50_latency_ms": t.latency_ms.get(50),
        "p95_latency_ms": t.latency_ms.get(95),
        "p99_latency_ms": t.latency_ms.get(99),
        "mean_latency_ms": t.latency_mean_ms,
        "p95_ttft_ms": t.ttft_ms.get(95),
        "tokens_in": float(t.tokens_in),
        "tokens_out": float(t.tokens_out),
        "feedback_score": t.feedback_sum / t.feedback_count if t.feedback_count else None,
        "feedback_count": float(t.feedback_count),
    }


def record_metrics(
    store: Store, endpoint: str, start: datetime, end: datetime
) -> dict[str, float | None]:
    """The traffic metrics of ``endpoint``'s records created in [start, end), aggregated in
    the database (one summary, never a row per record); the percentiles are numpy's."""
    return traffic_values(store.record_summary(endpoint, start, end, latency=LATENCY, ttft=TTFT))


def traffic_of(
    store: Store, endpoints: Sequence[str], start: datetime, end: datetime
) -> dict[str, dict[str, float | None]]:
    """``record_metrics`` of each of ``endpoints``, read together."""
    read = store.record_summaries(endpoints, start, end, latency=LATENCY, ttft=TTFT)
    return {e: traffic_values(read[e]) for e in endpoints}


def drift_of(
    store: Store, endpoints: Sequence[str], kept: dict[str, list[DriftResult]] | None
) -> tuple[dict[str, list[DriftResult]], dict[str, list[DriftResult]] | None]:
    """The rows of each of ``endpoints``' latest drift run (``list_drift_results(latest=
    True)``), and what to keep for the next call: every endpoint's, read once (``kept``)
    unless a single endpoint is asked for (a rule naming its endpoint)."""
    if kept is None and len(endpoints) == 1:
        return {endpoints[0]: store.list_drift_results(endpoint=endpoints[0], latest=True)}, None
    if kept is None:
        kept = {}
        for r in store.list_drift_results(latest=True, limit=None):
            kept.setdefault(r.endpoint_name, []).append(r)
    return {e: kept.get(e, []) for e in endpoints}, kept
