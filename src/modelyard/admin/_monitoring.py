"""Monitoring routes: profiles, drift (computed as ``modelyard monitor drift`` computes it,
and the stored runs), alerts, feedback, and an endpoint's traffic series for charts.

All are reads: a drift computed here is answered and not stored (``monitor drift`` and
the monitoring loop store theirs), and profiles and alerts are what the monitoring
loop (``monitor tick``, the rollout controller) last computed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from modelyard.admin._auth import Acting
from modelyard.admin._encode import jsonable
from modelyard.admin._params import duration, utc
from modelyard.artifacts import ArtifactStore, artifacts_from_settings
from modelyard.errors import ConfigError
from modelyard.settings import load_settings
from modelyard.store import TrafficPoint

router = APIRouter(tags=["monitoring"])

EndpointName = Path(description="The endpoint's name.", max_length=200)
MAX_POINTS = 1440  # buckets in one series: a day of minutes
CLOCK_SKEW = timedelta(minutes=5)  # how far past this clock an end may be (another's clock)
Since = Query(None, description="Only from this time (ISO 8601; without an offset: UTC).")
DRIFT_FIELDS = ("feature", "method", "value", "threshold", "drifted", "status",
                "n_reference", "n_current")  # fmt: skip


def _artifacts(request: Request) -> ArtifactStore:
    """The server's artifact store (the eval reference reads the evaluation dataset):
    the one given to ``create_admin_app``, else the settings' (as the CLI opens it)."""
    state = request.app.state
    if state.artifacts is None:
        state.artifacts = artifacts_from_settings(load_settings())
    found: ArtifactStore = state.artifacts
    return found


def _since(value: datetime | None) -> datetime | None:
    """``since`` in UTC; more than a day ahead of this clock is a 400, as the CLI's
    ``--since`` (nothing has happened since then: an empty list would hide the mistake)."""
    since = utc(value, "since")
    clock = datetime.now(UTC)
    if since is not None and since > clock + timedelta(days=1):
        raise ConfigError(
            f"since {since:%Y-%m-%d %H:%M} UTC is in the future (it is {clock:%Y-%m-%d %H:%M} "
            "UTC): nothing has happened since then; give a past time",
            field="since",
        )
    return since


def _reference(text: str) -> str:
    """``eval``, ``previous:DURATION`` (at most a year) or ``baseline:START/END``."""
    kind, _, arg = text.partition(":")
    if kind == "previous":
        duration(arg, "reference")
    elif kind not in ("eval", "baseline"):
        raise ConfigError(
            f"invalid reference {text!r}: use eval, previous:DURATION (e.g. previous:24h) "
            "or baseline:START/END with ISO times",
            field="reference",
        )
    return text


@router.get("/profiles", summary="Monitoring profiles: requests, errors, latency, tokens, cost")
def list_profiles(
    caller: Acting,
    window: Literal["hour", "day"] = Query("hour", description="Profiles per hour or per day."),
    endpoint: str | None = Query(None, max_length=200),
    tenant: str | None = Query(None, max_length=100),
    since: datetime | None = Since,
    shadow: Annotated[
        bool | None,
        Query(
            description="false: the profiles of users' requests; true: those of the copies "
            "mirrored to shadow versions; unset: both (each row says which: shadow)."
        ),
    ] = None,
) -> list[dict[str, Any]]:
    rows = caller.store.list_profiles(
        window=window, endpoint=endpoint, tenant=tenant, since=_since(since), shadow=shadow
    )
    if endpoint is not None and not rows:
        caller.store.get_endpoint(endpoint)  # 404 for an unknown endpoint, not []
    return [
        {**jsonable(p), "error_rate": p.error_rate, "cache_hit_rate": p.cache_hit_rate,
         "feedback_mean": p.feedback_mean}
        for p in rows
    ]  # fmt: skip


@router.get(
    "/endpoints/{endpoint}/drift",
    summary="Test each feature of the current window against a reference (not stored)",
)
def drift(
    request: Request,
    caller: Acting,
    endpoint: str = EndpointName,
    version: str | None = Query(
        None,
        max_length=240,
        pattern=r"^([^:]+:)?[0-9]{1,10}$",
        description="Version number (or NAME:N); default: the plan's heaviest.",
    ),
    reference: str = Query(
        "eval",
        max_length=200,
        description="eval (the version's evaluation dataset), previous:24h, or "
        "baseline:START/END (ISO times).",
    ),
    window: str = Query("1h", max_length=40, description="The current window: 30m, 1h, 1d."),
    end: datetime | None = Query(None, description="End the window here instead of now."),
    method: list[str] = Query(
        [], max_length=20, description="FEATURE=METHOD (psi, ks, chisquare, ...), repeatable."
    ),
    threshold: list[str] = Query([], max_length=20, description="FEATURE=NUMBER, repeatable."),
    min_samples: int = Query(30, ge=2, le=10**7, description="Fewer: 'not enough data'."),
) -> dict[str, Any]:
    from modelyard.monitoring import API_PARAMS, DriftConfig, compute_drift  # scipy: first use

    config = DriftConfig.parse(method, threshold, min_samples, flag=API_PARAMS)
    length = duration(window, "window")
    ends = utc(end, "end")
    if ends is not None and ends.year < 1980:
        raise ConfigError("end is before 1980: no records are that old", field="end")
    report = compute_drift(
        caller.store, endpoint, version=version, reference=_reference(reference),
        window=length, config=config, now=ends, save=False,
        artifacts=_artifacts(request) if reference == "eval" else None, flag=API_PARAMS,
    )  # fmt: skip
    return {
        "endpoint": report.endpoint,
        "version": report.version,
        "reference": report.reference,
        "window_start": report.window_start.isoformat(),
        "window_end": report.window_end.isoformat(),
        "drifted_features": report.drifted_features,
        "features": [{k: jsonable(getattr(r, k)) for k in DRIFT_FIELDS} for r in report.results],
    }


@router.get("/drift", summary="Stored drift runs (of monitor drift and the monitoring loop)")
def drift_runs(
    caller: Acting,
    endpoint: str | None = Query(None, max_length=200),
    latest: bool = Query(
        False,
        description="Only each endpoint's last run: the monitoring loop's last where the "
        "endpoint has one (what alerts read), else its last of any kind.",
    ),
    limit: int = Query(200, ge=1, le=5000, description="At most this many feature results."),
) -> list[dict[str, Any]]:
    found = caller.store.list_drift_results(endpoint=endpoint, latest=latest, limit=limit)
    return [jsonable(r) for r in found]


@router.get("/alerts", summary="Alerts and their states, as monitor alerts lists them")
def alerts(
    caller: Acting,
    state: Literal["pending", "firing", "resolved", "inactive"] | None = Query(None),
) -> list[dict[str, Any]]:
    return [jsonable(a) for a in caller.store.list_alert_states(state=state)]


@router.get("/feedback", summary="Feedback on answers, newest first")
def feedback(
    caller: Acting,
    endpoint: str | None = Query(None, max_length=200),
    tenant: str | None = Query(None, max_length=100),
    since: datetime | None = Since,
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    found = caller.store.list_feedback(
        endpoint=endpoint, tenant=tenant, since=_since(since), limit=limit
    )
    return [jsonable(f) for f in found]


@router.get("/feedback/summary", summary="Feedback per endpoint version: count, mean, +/-")
def feedback_summary(
    caller: Acting,
    endpoint: str | None = Query(None, max_length=200),
    tenant: str | None = Query(None, max_length=100),
    since: datetime | None = Since,
) -> list[dict[str, Any]]:
    found = caller.store.feedback_summary(endpoint=endpoint, tenant=tenant, since=_since(since))
    return [jsonable(f) for f in found]


def _series_json(
    points: list[TrafficPoint], start: datetime, bucket_s: int, count: int
) -> list[dict[str, Any]]:
    """One series per version (shadow copies apart), with a point for every bucket: 0
    requests and no latency where none came."""
    by_series: dict[tuple[str | None, bool], dict[datetime, TrafficPoint]] = {}
    for p in points:
        by_series.setdefault((p.version, p.shadow), {})[p.start] = p
    out = []
    for (version, shadow), found in sorted(by_series.items(), key=lambda kv: str(kv[0])):
        rows: list[dict[str, Any]] = []
        for i in range(count):
            at = start + timedelta(seconds=i * bucket_s)
            point = found.get(at)
            rows.append({
                "start": at.isoformat(),
                "requests": point.requests if point else 0,
                "errors": point.errors if point else 0,
                "latency_p50_ms": point.latency_p50_ms if point else None,
                "latency_p95_ms": point.latency_p95_ms if point else None,
                "latency_p99_ms": point.latency_p99_ms if point else None,
            })  # fmt: skip
        out.append({
            "version": version, "shadow": shadow,
            "requests": sum(p.requests for p in found.values()),
            "errors": sum(p.errors for p in found.values()),
            "points": rows,
        })  # fmt: skip
    return out


@router.get(
    "/endpoints/{endpoint}/series",
    summary="Per-version requests, errors and latency percentiles per bucket of time",
)
def series(
    caller: Acting,
    endpoint: str = EndpointName,
    window: str = Query("1h", max_length=40, description="How far back: 15m, 1h, 1d."),
    bucket: int = Query(60, ge=1, le=86400, description="Seconds per point."),
    end: datetime | None = Query(None, description="End here instead of now."),
) -> dict[str, Any]:
    length = duration(window, "window", most=timedelta(days=31))
    if length.total_seconds() / bucket > MAX_POINTS:
        raise ConfigError(
            f"window {window} in buckets of {bucket} s makes more than {MAX_POINTS} points: "
            "use a bigger bucket",
            field="bucket",
        )
    caller.store.get_endpoint(endpoint)  # 404 for an unknown endpoint
    clock = datetime.now(UTC)
    until = utc(end, "end") or clock
    if until.year < 1980:
        raise ConfigError("end is before 1980: no records are that old", field="end")
    if until > clock + CLOCK_SKEW:  # as drift's end: no record is there yet
        raise ConfigError(
            f"end {until:%Y-%m-%d %H:%M} UTC is in the future (it is {clock:%Y-%m-%d %H:%M} "
            "UTC): give a past time, or none for a series ending now",
            field="end",
        )
    first = int((until - length).timestamp()) // bucket * bucket  # whole buckets
    start = datetime.fromtimestamp(first, UTC)
    count = math.ceil((until - start).total_seconds() / bucket)  # the last may be partial
    points = caller.store.traffic_series(endpoint, since=start, until=until, bucket_s=bucket)
    return {
        "endpoint": endpoint,
        "start": start.isoformat(),
        "end": until.isoformat(),
        "bucket_s": bucket,
        "buckets": count,
        "series": _series_json(points, start, bucket, count),
    }


__all__ = ["router"]
