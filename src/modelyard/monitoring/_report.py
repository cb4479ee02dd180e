"""``modelyard monitor report``: one self-contained HTML page (inline SVG, no scripts, no CDN).

Traffic and error rate per version over time, latency percentiles, tokens and
cost, drift per feature with reference and current histograms, feedback, and
the version/rollout timeline from the audit chain.
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
from modelyard.monitoring._profiles import HOUR, floor_hour, hist_quantile, merge_hists
from modelyard.store import AuditEvent, DriftResult, Profile, Store

_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
_W, _H, _PAD = 640, 220, 44
Series = Mapping[str, Sequence[tuple[float, float]]]


def _esc(text: object) -> str:
    return html.escape(str(text))


def _nice(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def line_chart(
    title: str,
    series: Series,
    *,
    y_label: str = "",
    percent: bool = False,
    x_labels: Callable[[float], str] | None = None,
) -> str:
    """An SVG line chart; x is a number (epoch seconds), one line per series."""
    points = [p for s in series.values() for p in s]
    if not points:
        return (
            f'<figure><figcaption>{_esc(title)}</figcaption><p class="empty">no data</p></figure>'
        )
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0 = min(0.0, min(ys) * 1.1)
    y1 = max(ys) * 1.1 if max(ys) > 0 else 0.0
    y1 = y1 if y1 > y0 else y0 + 1.0
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x: float) -> float:
        return _PAD + (x - x0) / (x1 - x0) * (_W - 2 * _PAD)

    def sy(y: float) -> float:
        return _H - _PAD - (y - y0) / (y1 - y0) * (_H - 2 * _PAD)

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{_esc(title)}">'
    ]
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        label = f"{y:.0%}" if percent else _nice(y)
        parts.append(
            f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'class="grid"/><text x="{_PAD - 4}" y="{sy(y) + 4:.1f}" '
            f'text-anchor="end">{label}</text>'
        )
    fmt = x_labels or (lambda x: datetime.fromtimestamp(x, UTC).strftime("%m-%d %H:%M"))
    for x in (x0, (x0 + x1) / 2, x1):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{_H - _PAD + 16}" text-anchor="middle">{_esc(fmt(x))}</text>'
        )
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for x, y in pts:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}">'
                f"<title>{_esc(name)}: {_nice(y)}</title></circle>"
            )
        parts.append(
            f'<rect x="{_PAD + 130 * i}" y="6" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_PAD + 14 + 130 * i}" y="15">{_esc(name)}</text>'
        )
    if y_label:
        parts.append(
            f'<text x="12" y="{_H / 2}" transform="rotate(-90 12 {_H / 2})" '
            f'text-anchor="middle">{_esc(y_label)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"


def histogram_chart(result: DriftResult) -> str:
    """Reference and current shares over the same bins, side by side."""
    d = result.details
    edges, ref, cur = d.get("edges"), d.get("reference"), d.get("current")
    title = (
        f"{result.feature}: {result.method} = "
        + ("-" if result.value is None else f"{result.value:.4g}")
        + (" — drifted" if result.drifted else "")
    )
    if "mmd2" in d:  # embeddings have no histogram: say what the test saw
        text = f"MMD² {d['mmd2']:.4g} over {d.get('dimensions')} dimensions ({d.get('model')})"
        cls = ' class="drifted"' if result.drifted else ""
        return f"<figure{cls}><figcaption>{_esc(title)}</figcaption><p>{_esc(text)}</p></figure>"
    if not edges or not ref or not cur:
        return f'<figure><figcaption>{_esc(title)}</figcaption><p class="empty">{_esc(result.status.replace("_", " "))}</p></figure>'  # noqa: E501
    w, h, pad = 300, 150, 28
    top = max(max(ref), max(cur)) or 1.0
    n = len(ref)
    bw = (w - 2 * pad) / n
    parts = [
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        f'aria-label="{_esc(title)}">'
    ]
    for i, (a, b) in enumerate(zip(ref, cur, strict=True)):
        x = pad + i * bw
        ha, hb = a / top * (h - 2 * pad), b / top * (h - 2 * pad)
        parts.append(
            f'<rect x="{x:.1f}" y="{h - pad - ha:.1f}" width="{bw / 2:.1f}" '
            f'height="{ha:.1f}" fill="#94a3b8"><title>reference {a:.1%}</title></rect>'
        )
        parts.append(
            f'<rect x="{x + bw / 2:.1f}" y="{h - pad - hb:.1f}" width="{bw / 2:.1f}" '
            f'height="{hb:.1f}" fill="#2563eb"><title>current {b:.1%}</title></rect>'
        )
    parts.append(
        f'<text x="{pad}" y="{h - 10}">{_nice(edges[0])}</text>'
        f'<text x="{w - pad}" y="{h - 10}" text-anchor="end">{_nice(edges[-1])}</text>'
        f'<rect x="{pad}" y="4" width="8" height="8" fill="#94a3b8"/>'
        f'<text x="{pad + 11}" y="12">reference</text>'
        f'<rect x="{pad + 80}" y="4" width="8" height="8" fill="#2563eb"/>'
        f'<text x="{pad + 91}" y="12">current</text></svg>'
    )
    cls = ' class="drifted"' if result.drifted else ""
    return f"<figure{cls}><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"


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
    rather than left out (the line would join the hours either side over it)."""
    groups: dict[tuple[str, float], list[Profile]] = defaultdict(list)
    for p in profiles:
        groups[(p.version or "none", p.start.timestamp())].append(p)
    if zero:
        for version in {v for v, _ in groups}:
            for t in _hours(profiles):
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
    together: exact (numpy's, from the hour's raw records) where its records are still
    kept; else, where retention deleted some, the hour's one profile (exact), or the
    merged histograms of its profiles (within about 2.5 %). With how many hours are
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
                    if row["endpoint_name"] == endpoint:
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


def _judged_html(profiles: Sequence[Profile]) -> str:
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
            if metric in p.judges:
                versions[p.version or "none"].append(p)
        for version, items in sorted(versions.items()):
            n = sum(p.judges[metric].scored for p in items)
            rows.append((metric, version, n, f"{_judged_mean(metric)(items):.2f}"))
    charts = "".join(
        line_chart(f"{metric} mean score per version", _by_version(profiles, _judged_mean(metric)))
        for metric in metrics
    )
    return _table(("judge", "version", "records scored", "mean score"), rows) + charts


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
    parts = lead + [
        f"{k}: {json.dumps(v, sort_keys=True, ensure_ascii=False)}" for k, v in sorted(rest.items())
    ]
    text = ", ".join(parts)
    return text if len(text) <= _DETAILS_MAX else text[: _DETAILS_MAX - 1] + "…"


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
    profiles = store.list_profiles(window="hour", endpoint=endpoint, since=since)
    drift = store.list_drift_results(endpoint=endpoint, latest=True)
    events = _timeline_events(store, endpoint, ep.model, since)
    latency, approximate = latency_series(store, endpoint, profiles, since, clock)
    requests = sum(p.requests for p in profiles)
    errors = sum(p.errors for p in profiles)
    costs = [p.cost for p in profiles if p.cost is not None]
    fb_n = sum(p.feedback_count for p in profiles)
    fb_sum = sum(p.feedback_sum for p in profiles)
    plan = ", ".join(f"{ep.model}:{r.version} {r.weight}%" for r in ep.routes) or "none"
    summary = _table(
        ("requests", "error rate", "tokens in", "tokens out", "cost", "feedback", "traffic plan"),
        [
            (
                requests,
                f"{errors / requests:.1%}" if requests else "-",
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
        ),
        line_chart(
            "Error rate per version",
            _by_version(
                profiles, lambda ps: sum(p.errors for p in ps) / max(1, sum(p.requests for p in ps))
            ),
            percent=True,
        ),
        line_chart("Latency percentiles per hour, all versions (ms)", latency, y_label="ms")
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
        f"<p>{since:%Y-%m-%d %H:%M}  to  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · model "
        f"{_esc(ep.model)} · tenant {_esc(ep.tenant or 'shared')}</p>"
        f"<h2>Summary</h2>{summary}<h2>Traffic, errors, latency, tokens and cost</h2>"
        f"{''.join(charts[:5])}<h2>Drift</h2>{drift_html}<h2>Feedback</h2>{charts[5]}"
        f"<h2>Judged quality</h2>{_judged_html(profiles)}"
        f"<h2>Versions and rollouts</h2>{_timeline(events)}</body></html>"
    )


def write_report(store: Store, endpoint: str, out: Path, *, since: datetime) -> Path:
    """Write the report to ``out`` (its directory made if missing); a ConfigError naming
    ``--out`` when it cannot be written there (a directory, a parent that is a file, no
    permission), before anything is written."""
    if out.is_dir():
        raise ConfigError(
            f"cannot write the report to {out}: it is a directory; give a file name, "
            f"e.g. {out / 'report.html'}",
            field="--out",
        )
    text = render_report(store, endpoint, since=since)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        why = (
            f"{out.parent} is not a directory"
            if isinstance(exc, (FileExistsError, NotADirectoryError))
            else exc.strerror or str(exc)
        )
        raise ConfigError(
            f"cannot write the report to {out}: {why}; choose another --out",
            field="--out",
        ) from None
    return out
