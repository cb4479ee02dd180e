"""Profiles: per endpoint, version, tenant and kind of traffic, per hour and per day,
computed incrementally.

An hour's profile is computed from its raw records (exact percentiles); a
day's from its hours (sums are exact; percentiles come from the merged
log-spaced latency histograms, within half a bin, about 2.5 %). Latency is that of
the requests answered ok (``answered_ok``): refusals, cancelled requests and failures
count in the requests (failures in the errors too), never in the percentiles.

Each kind of traffic has profiles of its own (``shadow``). A profile of users' requests
(``user_facing``, ``shadow`` false: every profile the endpoint's numbers are read from,
the report, the gauges) leaves shadow copies out (no user saw their answers, and no
tenant pays for them), so a slow or failing shadow version moves none of its endpoint's
profiles. The copies mirrored to a shadow version are profiled apart (``shadow`` true):
the candidate's own requests, errors, latency and tokens, shown labelled beside the
users' profiles (``monitor profiles``, the admin API's ``/profiles``), so a version that
only ever ran as a shadow has profiles to compare before it is promoted.

Each run recomputes only the hours that can have
changed since the last one: those from the watermark (less ``lateness``, for records
still in a writer's buffer) to now, and those holding records whose feedback changed.
The watermark lives in the store (``monitor_state``), so any process may run it and
running it twice changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from modelyard.errors import ConfigError
from modelyard.store import Store, answered, answered_ok, ended, failed, user_facing

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
LATENESS = timedelta(minutes=5)
# Log-spaced latency bins from 0.1 ms to 10 min, about 5 % wide.
_EDGES = np.geomspace(0.1, 600_000.0, 321)
_STATE_KEY = "profiles"
_Group = tuple[str, int | None, int | None, bool]  # endpoint, version, tenant, shadow


@dataclass(frozen=True)
class ProfileRecompute:
    """What one ``recompute_profiles`` run did."""

    since: datetime  # the first hour recomputed
    until: datetime  # the end of the last
    hours: int
    days: int
    rows: int
    kept: dict[int, datetime]  # tenants (by id) whose hours before then were left as they were


@dataclass(frozen=True)
class ProfileUpdate:
    """What one ``update_profiles`` run did."""

    hours: int  # hour windows recomputed
    days: int  # day windows recomputed
    rows: int  # profile rows written
    watermark: datetime


def floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(t: datetime) -> datetime:
    return floor_hour(t).replace(hour=0)


def histogram(values: Sequence[float] | np.ndarray) -> list[list[int]]:
    """Sparse log-bin histogram ``[[bin, count], …]`` of positive milliseconds."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return []
    idx = np.clip(np.searchsorted(_EDGES, arr, side="right") - 1, 0, len(_EDGES) - 2)
    bins, counts = np.unique(idx, return_counts=True)
    return [[int(b), int(c)] for b, c in zip(bins, counts, strict=True)]


def hist_quantile(hist: Iterable[Sequence[int]], q: float) -> float | None:
    """The ``q`` quantile of a sparse histogram (log-interpolated inside its bin)."""
    pairs = sorted((int(b), int(c)) for b, c in hist)
    total = sum(c for _, c in pairs)
    if total == 0:
        return None
    target = q * total
    seen = 0
    for b, c in pairs:
        if seen + c >= target:
            frac = (target - seen) / c if c else 0.0
            lo, hi = np.log(_EDGES[b]), np.log(_EDGES[b + 1])
            return float(np.exp(lo + frac * (hi - lo)))
        seen += c
    return float(_EDGES[pairs[-1][0] + 1])


def merge_hists(hists: Iterable[Iterable[Sequence[int]]]) -> list[list[int]]:
    total: dict[int, int] = defaultdict(int)
    for hist in hists:
        for b, c in hist:
            total[int(b)] += int(c)
    return [[b, total[b]] for b in sorted(total)]


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def profile_of(
    records: Sequence[Mapping[str, Any]], prices: Mapping[str, tuple[float, float]]
) -> dict[str, Any]:
    """Aggregates of one group of records (one endpoint, version, tenant and kind of traffic
    in a window). The latency and time to first token (percentiles and histograms) are those
    of the records answered ok (``answered_ok``), the feedback that on the records answered
    (``answered``), as guards and alert rules read them."""
    timed = [r for r in records if answered_ok(r["status"])]
    latency = np.array([r["latency_ms"] for r in timed], dtype=float)
    ttft = np.array([r["ttft_ms"] for r in timed if r["ttft_ms"] is not None], dtype=float)
    tokens_in = sum(int(r["prompt_tokens"]) for r in records)
    tokens_out = sum(int(r["completion_tokens"]) for r in records)
    base = records[0].get("base_model")
    price = prices.get(base) if base else None
    cost = (tokens_in * price[0] + tokens_out * price[1]) / 1000 if price else None
    known = [r["cache_hit"] for r in records if r.get("cache_hit") is not None]
    # the feedback on requests answered: a correction of one that got none rates no answer
    scores = [
        float(r["feedback_score"])
        for r in records
        if r.get("feedback_score") is not None and answered(r["status"])
    ]
    checked = [r["format_ok"] for r in records if r.get("format_ok") is not None]
    return {
        "requests": len(records),
        "ended": ended([r["status"] for r in records]),
        "errors": failed([r["status"] for r in records]),
        "latency_p50_ms": _pct(latency, 50),
        "latency_p95_ms": _pct(latency, 95),
        "latency_p99_ms": _pct(latency, 99),
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p95_ms": _pct(ttft, 95),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost": cost,
        "cache_hits": sum(1 for k in known if k),
        "cache_known": len(known),
        "feedback_count": len(scores),
        "feedback_sum": float(sum(scores)),
        "tool_calls": sum(int(r.get("tool_calls") or 0) for r in records),
        "format_checked": len(checked),
        "format_failures": sum(1 for ok in checked if not ok),
        "latency_hist": histogram(latency),
        "ttft_hist": histogram(ttft),
    }


def compute_hour(
    store: Store,
    start: datetime,
    prices: Mapping[str, tuple[float, float]],
    *,
    keep_tenants: Collection[int] = (),
) -> int:
    """Recompute the hour profiles of [start, start + 1 h) from the raw records; those of
    ``keep_tenants`` (whose records of the hour a purge may have deleted) stay."""
    records = store.query_records(
        since=start, until=start + HOUR, limit=None, newest_first=False, text=False
    )
    groups: dict[_Group, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["tenant_id"] in keep_tenants:
            continue
        # a shadow copy is no user's: a profile of its own (see the module's doc)
        shadow = not user_facing(r["shadow"])
        groups[(r["endpoint_name"], r["version_id"], r["tenant_id"], shadow)].append(r)
    rows = [
        {"start": start, "endpoint_name": e, "version_id": v, "tenant_id": t, "shadow": sh}
        | profile_of(group, prices)
        for (e, v, t, sh), group in sorted(groups.items(), key=lambda kv: str(kv[0]))
    ]
    return store.replace_profiles("hour", start, start + HOUR, rows, keep_tenants=keep_tenants)


def compute_day(store: Store, start: datetime) -> int:
    """Recompute the day profiles of [start, start + 1 day) from its hour profiles."""
    groups: dict[_Group, list[dict[str, Any]]] = defaultdict(list)
    for h in store.profile_rows("hour", start, start + DAY):
        groups[(h["endpoint_name"], h["version_id"], h["tenant_id"], h["shadow"])].append(h)
    rows = []
    for (e, v, t, sh), hours in sorted(groups.items(), key=lambda kv: str(kv[0])):
        lat = merge_hists(h["latency_hist"] for h in hours)
        ttft = merge_hists(h["ttft_hist"] for h in hours)
        costs = [h["cost"] for h in hours if h["cost"] is not None]
        row: dict[str, Any] = {
            "start": start, "endpoint_name": e, "version_id": v, "tenant_id": t, "shadow": sh,
        }  # fmt: skip
        for name in (
            "requests",
            "errors",
            "tokens_in",
            "tokens_out",
            "cache_hits",
            "cache_known",
            "feedback_count",
            "feedback_sum",
            "tool_calls",
            "format_checked",
            "format_failures",
        ):
            row[name] = sum(h[name] for h in hours)
        row |= {
            "latency_p50_ms": hist_quantile(lat, 0.50),
            "latency_p95_ms": hist_quantile(lat, 0.95),
            "latency_p99_ms": hist_quantile(lat, 0.99),
            "ttft_p50_ms": hist_quantile(ttft, 0.50),
            "ttft_p95_ms": hist_quantile(ttft, 0.95),
            "cost": sum(costs) if costs else None,
            # unknown when an hour of the day was profiled before requests that ended were
            "ended": None
            if any(h["ended"] is None for h in hours)
            else sum(h["ended"] for h in hours),
            "latency_hist": lat,
            "ttft_hist": ttft,
        }
        rows.append(row)
    return store.replace_profiles("day", start, start + DAY, rows)


def profiles_watermark(store: Store) -> datetime | None:
    """Up to when profiles are final (hours before it are not recomputed unless feedback moves)."""
    state = store.get_monitor_state(_STATE_KEY)
    return datetime.fromisoformat(state["watermark"]) if state else None


def update_profiles(
    store: Store, *, now: datetime | None = None, lateness: timedelta = LATENESS
) -> ProfileUpdate:
    """Recompute the hour and day profiles that can have changed since the last run."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    watermark = profiles_watermark(store)
    if watermark is None:
        oldest = store.oldest_record_time()
        first = floor_hour(oldest) if oldest is not None else floor_hour(now)
        feedback_hours: set[datetime] = set()
    else:
        first = floor_hour(min(watermark, now) - lateness)
        feedback_hours = {floor_hour(t) for t in store.feedback_record_times(watermark)}
    # the hours that can have changed: those with records, and those with profiles (whose
    # records may be gone); an hour with neither has no profile before or after
    end = floor_hour(now) + HOUR
    hours = set(feedback_hours) | set(store.record_hours(first, end))
    hours |= {row["start"] for row in store.profile_rows("hour", first, end)}
    prices = store.token_price_table()
    rows = sum(compute_hour(store, hour, prices) for hour in sorted(hours))
    days = sorted({floor_day(hour) for hour in hours})
    rows += sum(compute_day(store, day) for day in days)
    store.set_monitor_state(_STATE_KEY, {"watermark": now.isoformat()})
    return ProfileUpdate(len(hours), len(days), rows, now)


def recompute_profiles(
    store: Store,
    since: datetime,
    until: datetime | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ProfileRecompute:
    """Compute the hour and day profiles of [since's hour, until) again from their
    records, at today's token prices: after an upgrade that changed what profiles count,
    or a price set late. A tenant's hours that a retention purge reached keep their
    profiles (their records may be gone; computing them again would lose them), and the
    result names those tenants. The watermark is left as it is (``update_profiles``).
    ``until`` inside an hour takes that hour in; on the hour (a date: midnight) it ends
    there; left out, the hour under way is the last."""
    now = datetime.now(UTC)
    first = floor_hour(since.astimezone(UTC))
    last = (until or now).astimezone(UTC)
    cut = (
        floor_hour(last)
        if until is not None and floor_hour(last) == last
        else floor_hour(last) + HOUR
    )
    end = min(cut, floor_hour(now) + HOUR)
    if first >= end:
        raise ConfigError(
            f"nothing to recompute: since {first:%Y-%m-%d %H:%M} is not before until "
            f"{end:%Y-%m-%d %H:%M} (UTC)",
            field="since",
        )
    purged = store.purge_boundaries()
    hours = set(store.record_hours(first, end))
    hours |= {row["start"] for row in store.profile_rows("hour", first, end)}
    prices = store.token_price_table()
    rows, kept = 0, dict[int, datetime]()
    for done, hour in enumerate(sorted(hours)):
        keep = {tid for tid, before in purged.items() if hour < before}
        kept |= {tid: purged[tid] for tid in keep}
        rows += compute_hour(store, hour, prices, keep_tenants=keep)
        if progress is not None:
            progress(done + 1, len(hours))
    days = sorted({floor_day(hour) for hour in hours})
    rows += sum(compute_day(store, day) for day in days)
    return ProfileRecompute(first, end, len(hours), len(days), rows, kept)
