"""``modelyard monitor report``: one self-contained HTML page (inline SVG, no scripts, no CDN).

Traffic and error rate per version over time, latency percentiles, tokens and
cost, drift per feature with reference and current histograms, feedback, and
the version/rollout timeline from the audit chain. Every number but the shadow section's is
the users' requests; that section puts each shadow version beside production
(``_report_shadow``).
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError
from modelyard.monitoring._charts import histogram_chart, line_chart
from modelyard.monitoring._profiles import HOUR, floor_hour, hist_quantile, merge_hists
from modelyard.monitoring._report_shadow import shadow_comparisons, shadow_html
from modelyard.store import AuditEvent, Profile, Store, user_facing


def _esc(text: object) -> str:
    return html.escape(str(text))


def _hours(profiles: Sequence[Profile]) -> list[float]:
    """Every hour from the first profile's to the last's (epoch seconds)."""
    starts = [p.start.timestamp() for p in profiles]
    if not starts:
        return []
    return [float(t) for t in range(int(min(starts)), int(max(starts)) + 1, 3600)]


def _by_version(
    profiles: Sequence[Profile],
    value: Callable[[list[Profile]], float | None],
    *,
    zero: bool = False,
) -> dict[str, list[tuple[float, float]]]:
    """One series per version; with ``zero`` (counts), an hour without its records is 0
    rather than left out (the line would join the hours either side over it). A profile
    without a version (requests that ended before routing, see ``_unrouted``) is no
    version's: it was drawn as a version named "none"."""
    groups: dict[tuple[str, float], list[Profile]] = defaultdict(list)
    for p in profiles:
        if p.version is not None:
            groups[(p.version, p.start.timestamp())].append(p)
    if zero:
        hours = _hours(profiles)
        for version in {v for v, _ in groups}:
            for t in hours:
                groups.setdefault((version, t), [])
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (version, t), items in sorted(groups.items()):
        v = value(items) if items else 0.0
        if v is not None:
            out[version].append((t, v))
    return dict(out)


def _overall(
    profiles: Sequence[Profile],
    fields: Mapping[str, Callable[[list[Profile]], float | None]],
    *,
    zero: bool = False,
) -> dict[str, list[tuple[float, float]]]:
    groups: dict[float, list[Profile]] = defaultdict(list)
    for p in profiles:
        groups[p.start.timestamp()].append(p)
    for t in _hours(profiles) if zero else []:
        groups.setdefault(t, [])
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in fields}
    for t, items in sorted(groups.items()):
        for name, fn in fields.items():
            v = fn(items) if items else 0.0
            if v is not None:
                out[name].append((t, v))
    return out


_LATENCY = {"p50": ("latency", 50), "p95": ("latency", 95), "p99": ("latency", 99),
            "ttft p50": ("ttft", 50)}  # fmt: skip


def latency_series(
    store: Store, endpoint: str, profiles: Sequence[Profile], since: datetime, until: datetime
) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """Per hour, the endpoint's latency and ttft percentiles over every version and tenant
    together, of the requests answered ok (``answered_ok``, as profiles, alert rules and
    guards read latency): exact (numpy's, from the hour's raw records) where its records
    are still kept; else, where retention deleted some, the hour's one profile (exact), or
    the merged histograms of its profiles (within about 2.5 %). With how many hours are
    approximations."""
    raw = {h.start.timestamp(): h for h in store.hourly_latency(
        endpoint, floor_hour(since), until, latency=(50, 95, 99), ttft=(50,)
    ) if h.start >= since}  # fmt: skip
    hours: dict[float, list[Profile]] = {t: [] for t in raw}
    for p in profiles:
        hours.setdefault(p.start.timestamp(), []).append(p)
    hists: dict[float, list[dict[str, Any]]] | None = None
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in _LATENCY}
    approximate = 0
    for t, items in sorted(hours.items()):
        found = raw.get(t)
        values: dict[str, float | None]
        if found is not None and found.records >= sum(p.requests for p in items):
            values = {name: (found.latency_ms if kind == "latency" else found.ttft_ms).get(q)
                      for name, (kind, q) in _LATENCY.items()}  # fmt: skip
        elif len(items) == 1:
            p = items[0]
            shown = (p.latency_p50_ms, p.latency_p95_ms, p.latency_p99_ms, p.ttft_p50_ms)
            values = dict(zip(_LATENCY, shown, strict=True))
        else:
            if hists is None:  # read once, the first time an hour needs them
                hists = defaultdict(list)
                for row in store.profile_rows("hour", floor_hour(since), until + HOUR):
                    # the users' profiles, as ``profiles`` (a shadow's are its own)
                    if row["endpoint_name"] == endpoint and user_facing(row["shadow"]):
                        hists[row["start"].timestamp()].append(row)
            lat = merge_hists(r["latency_hist"] for r in hists[t])
            ttft = merge_hists(r["ttft_hist"] for r in hists[t])
            values = {name: hist_quantile(lat if kind == "latency" else ttft, q / 100)
                      for name, (kind, q) in _LATENCY.items()}  # fmt: skip
            approximate += 1
        for name, v in values.items():
            if v is not None:
                out[name].append((t, v))
    return out, approximate


def _judged_mean(metric: str) -> Callable[[list[Profile]], float | None]:
    """The mean score ``metric``'s judge gave the records of these profiles (weighted by how
    many it scored in each)."""

    def fn(items: list[Profile]) -> float | None:
        judged = [p.judges[metric] for p in items if metric in p.judges]
        n = sum(q.scored for q in judged)
        return sum(q.mean * q.scored for q in judged) / n if n else None

    return fn


def _judged_html(profiles: Sequence[Profile], period: tuple[float, float]) -> str:
    """Per judge: a table of what it scored per version, and its mean score per hour."""
    metrics = sorted({metric for p in profiles for metric in p.judges})
    if not metrics:
        return (
            '<p class="empty">no judged records in this period: see online judging '
            "(judging: in the alert rules)</p>"
        )
    rows = []
    for metric in metrics:
        versions: dict[str, list[Profile]] = defaultdict(list)
        for p in profiles:
            if metric in p.judges and p.version is not None:
                versions[p.version].append(p)
        for version, items in sorted(versions.items()):
            n = sum(p.judges[metric].scored for p in items)
            rows.append((metric, version, n, f"{_judged_mean(metric)(items):.2f}"))
    charts = "".join(
        line_chart(
            f"{metric} mean score per version",
            _by_version(profiles, _judged_mean(metric)),
            x_range=period,
        )
        for metric in metrics
    )
    return _table(("judge", "version", "records scored", "mean score"), rows) + charts


def _unrouted(profiles: Sequence[Profile]) -> tuple[int, int]:
    """Requests that ended before routing, with no version, as (refused, failed): refused
    (a 4xx: another tenant's key, a bad request) or failed (a 5xx)."""
    before = [p for p in profiles if p.version is None]
    failed = sum(p.errors for p in before)
    return sum(p.requests for p in before) - failed, failed


def _unrouted_note(refused: int, failed: int) -> str:
    """What the per-version charts leave out, said under them."""
    if not refused and not failed:
        return ""
    parts = [
        f"{refused} refused (a 4xx: another tenant's key, a bad request)" if refused else "",
        f"{failed} failed" if failed else "",
    ]
    sampled = (
        " The store keeps at most --refusals-stored-per-minute of a key's refusals a "
        "minute: modelyard_refused_total counts them all."
        if refused
        else ""
    )
    return (
        '<p class="empty">Requests that ended before routing, with no version: '
        f"{_esc(', '.join(p for p in parts if p))}. They are in the summary, not in the "
        f"per-version charts.{sampled}</p>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _timeline(events: Sequence[AuditEvent]) -> str:
    if not events:
        return '<p class="empty">no version or traffic changes in this period</p>'
    rows = [
        (
            f"{e.time:%Y-%m-%d %H:%M:%S}",
            e.action,
            e.subject,
            e.actor,
            _details(e.payload),
        )
        for e in events
    ]
    return _table(("time (UTC)", "action", "subject", "actor", "details"), rows)


_DETAILS_MAX = 300


def _details(payload: Mapping[str, Any]) -> str:
    """An event's details as a reader wants them: the reason first, and a rollback's breach
    as its sentence (the guard that caused it), then ``key: value`` with JSON values."""
    rest = {k: v for k, v in payload.items() if v is not None}
    lead = [f"reason: {rest.pop('reason')}"] if isinstance(rest.get("reason"), str) else []
    breach = rest.get("breach")
    if isinstance(breach, Mapping) and isinstance(breach.get("message"), str):
        lead.append(f"breach: {breach['message']}")
        del rest["breach"]
    parts = lead + [f"{k}: {_shown(v)}" for k, v in sorted(rest.items())]
    text = ", ".join(parts)
    return text if len(text) <= _DETAILS_MAX else text[: _DETAILS_MAX - 1] + "…"


_NESTED_MAX = 60  # characters of JSON a nested value is shown whole within


def _shown(value: Any) -> str:
    """A detail's value, short: a digest as its first 12 characters, a nested object or
    list as how many fields or items it has when its JSON is long (a version's lineage;
    ``modelyard audit log`` shows it whole)."""
    if isinstance(value, str):
        bare = value.removeprefix("sha256:")
        if len(bare) >= 40 and all(c in "0123456789abcdef" for c in bare):
            return json.dumps(value[: len(value) - len(bare) + 12] + "…", ensure_ascii=False)
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if len(text) <= _NESTED_MAX or not isinstance(value, Mapping | list):
        return text
    return f"{{{len(value)} fields}}" if isinstance(value, Mapping) else f"[{len(value)} items]"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111827;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e5e7eb}
.grid{stroke:#e5e7eb}svg text{font-size:11px;fill:#374151}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}
figcaption{font-weight:600;margin-bottom:4px}figure.drifted figcaption{color:#dc2626}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #e5e7eb;padding:3px 8px;
text-align:left}th{background:#f9fafb}.empty{color:#6b7280}.yes{color:#dc2626;font-weight:600}
"""


TIMELINE_MAX = 500
"""Events in the report's timeline at most: the newest of the period."""


def _timeline_events(store: Store, endpoint: str, model: str, since: datetime) -> list[AuditEvent]:
    """The newest ``TIMELINE_MAX`` events of the period about the endpoint, its model
    (``MODEL``) or the model's versions and aliases (``MODEL:N``, ``MODEL@ALIAS``), and no
    other model's whose name merely starts the same, in chain order."""
    found: dict[int, AuditEvent] = {}
    for subject in (endpoint, model, f"{model}:*", f"{model}@*"):
        for e in store.list_audit_events(since=since, subject=subject, limit=TIMELINE_MAX):
            found[e.seq] = e
    newest = sorted(found)[-TIMELINE_MAX:]
    return [found[seq] for seq in newest]


def render_report(store: Store, endpoint: str, *, since: datetime) -> str:
    """The report's HTML for ``endpoint`` from ``since`` to now."""
    clock = datetime.now(UTC)
    if since > clock:
        raise ConfigError(
            f"the report's start {since:%Y-%m-%d %H:%M} UTC is in the future (it is "
            f"{clock:%Y-%m-%d %H:%M} UTC): give a past date or a duration back from now, "
            "e.g. 7d",
            field="since",
        )
    ep = store.get_endpoint(endpoint)
    asked, since = since, floor_hour(since)  # hours are the report's unit: the hour --since is
    # in counts whole (--since 30m at 17:52 read no hour at all, and showed 0 requests)
    profiles = store.list_profiles(window="hour", endpoint=endpoint, since=since)
    drift = store.list_drift_results(endpoint=endpoint, latest=True)
    events = _timeline_events(store, endpoint, ep.model, since)
    latency, approximate = latency_series(store, endpoint, profiles, since, clock)
    shadows = shadow_comparisons(store, endpoint, profiles, since=since, until=clock)
    # the x axis of every chart: the hours of the period asked, not only those with data
    period = (floor_hour(since).timestamp(), floor_hour(clock).timestamp())
    requests = sum(p.requests for p in profiles)
    answered = sum(p.answered for p in profiles)
    errors = sum(p.errors for p in profiles)
    costs = [p.cost for p in profiles if p.cost is not None]
    fb_n = sum(p.feedback_count for p in profiles)
    fb_sum = sum(p.feedback_sum for p in profiles)
    plan = ", ".join(f"{ep.model}:{r.version} {r.weight}%" for r in ep.routes) or "none"
    refused, failed_before = _unrouted(profiles)
    summary = _table(
        (
            "requests",
            "error rate",
            "refused before routing",
            "tokens in",
            "tokens out",
            "cost",
            "feedback",
            "traffic plan",
        ),
        [
            (
                requests,
                f"{errors / answered:.1%}" if answered else "-",
                refused,
                sum(p.tokens_in for p in profiles),
                sum(p.tokens_out for p in profiles),
                f"{sum(costs):.4f}" if costs else "-",
                f"{fb_sum / fb_n:+.2f} (n={fb_n})" if fb_n else "-",
                plan,
            )
        ],
    )
    charts = [
        line_chart(
            "Requests per hour, per version",
            _by_version(profiles, lambda ps: float(sum(p.requests for p in ps)), zero=True),
            x_range=period,
            whole=True,
        ),
        line_chart(
            "Error rate per version",
            _by_version(
                profiles, lambda ps: sum(p.errors for p in ps) / max(1, sum(p.answered for p in ps))
            ),
            percent=True,
            x_range=period,
        )
        + _unrouted_note(refused, failed_before),
        line_chart(
            "Latency percentiles per hour of the requests answered ok, all versions (ms)",
            latency,
            x_range=period,
            unit="ms",
        )
        + (
            f'<p class="empty">{approximate} hour(s) whose raw records retention deleted: '
            "percentiles from the merged latency histograms of their profiles (within "
            "about 2.5 %)</p>"
            if approximate
            else ""
        ),
        line_chart(
            "Tokens per hour",
            _overall(
                profiles,
                {
                    "in": lambda ps: float(sum(p.tokens_in for p in ps)),
                    "out": lambda ps: float(sum(p.tokens_out for p in ps)),
                },
                zero=True,
            ),
            x_range=period,
            whole=True,
        ),
        line_chart(
            "Cost per hour",
            _overall(
                profiles,
                {
                    "cost": lambda ps: (
                        sum(p.cost for p in ps if p.cost is not None)
                        if any(p.cost is not None for p in ps)
                        else None
                    )
                },
            ),
            x_range=period,
        ),
        line_chart(
            "Feedback mean per version",
            _by_version(
                profiles,
                lambda ps: (
                    (sum(p.feedback_sum for p in ps) / n)
                    if (n := sum(p.feedback_count for p in ps))
                    else None
                ),
            ),
            x_range=period,
        ),
    ]
    if drift:
        head = drift[0]
        drift_html = (
            f"<p>run {_esc(head.run_id[:8])} at {head.computed_at:%Y-%m-%d %H:%M} UTC, version "
            f"{_esc(head.version)}, reference {_esc(head.reference)}, window "
            f"{head.window_start:%H:%M} to {head.window_end:%H:%M}</p>"
            + _table(
                ("feature", "method", "value", "threshold", "drifted", "reference n", "current n"),
                [
                    (
                        r.feature,
                        r.method,
                        "-" if r.value is None else f"{r.value:.4g}",
                        "-"
                        if r.threshold is None or r.status == "no_reference"
                        else f"{r.threshold:g}",
                        {"drift": "yes", "ok": "no"}.get(r.status, r.status.replace("_", " ")),
                        r.n_reference,
                        r.n_current,
                    )
                    for r in drift
                ],
            )
            + "".join(histogram_chart(r) for r in drift)
        )
    else:
        drift_html = '<p class="empty">no drift run yet: run modelyard monitor drift</p>'
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>modelyard report: {_esc(endpoint)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Endpoint {_esc(endpoint)}</h1>"
        f"<p>{since:%Y-%m-%d %H:%M}  to  {clock:%Y-%m-%d %H:%M} UTC"
        + ("" if asked == since else f" (the whole hour of {asked:%H:%M}: profiles are hourly)")
        + f" · model {_esc(ep.model)} · tenant {_esc(ep.tenant or 'shared')}</p>"
        f"<h2>Summary</h2>{summary}<h2>Traffic, errors, latency, tokens and cost</h2>"
        f"{''.join(charts[:5])}<h2>Drift</h2>{drift_html}<h2>Feedback</h2>{charts[5]}"
        f"<h2>Judged quality</h2>{_judged_html(profiles, period)}"
        f"<h2>Shadow versions</h2>{shadow_html(ep, shadows, period)}"
        f"<h2>Versions and rollouts</h2>{_timeline(events)}</body></html>"
    )


def write_report(store: Store, endpoint: str, out: Path, *, since: datetime) -> Path:
    """Write the report to ``out``, in a directory that exists; a ConfigError naming
    ``--out`` when it cannot be written there (a directory, a missing directory, a parent
    that is a file, no permission), before anything is written."""
    if out.is_dir():
        raise ConfigError(
            f"cannot write the report to {out}: it is a directory; give a file name, "
            f"e.g. {out / 'report.html'}",
            field="--out",
        )
    text = render_report(store, endpoint, since=since)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        why = (
            f"{out.parent} is not a directory"
            if isinstance(exc, NotADirectoryError)
            else exc.strerror or str(exc)
        )
        raise ConfigError(
            f"cannot write the report to {out}: {why}; choose another --out",
            field="--out",
        ) from None
    return out
