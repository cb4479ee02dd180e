"""The report's shadow section: each version that got shadow copies in the period, beside
the production version(s) it shadowed over the same hours.

Read from the hour profiles (``shadow`` true: the copies mirrored to a shadow version,
profiled apart from the users' requests), never from raw records: per version, its
requests, error rate, latency p50 and p95 of the requests answered ok, mean feedback and
each judge's mean score, and per hour a latency chart of the shadow and production. The
production it shadowed is every version that answered users' requests in the hours the
shadow got copies, itself left out (a shadow also in the plan is mirrored only the requests
another version answered). A group of one profile has its exact percentiles; several
(hours, tenants or versions) have those of their merged latency histograms (within about
2.5 %), and the section says so.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelyard.monitoring._charts import line_chart
from modelyard.monitoring._profiles import HOUR, floor_hour, hist_quantile, merge_hists
from modelyard.store import Endpoint, Profile, Store

_Key = tuple[float, str | None, bool]  # hour (epoch seconds), version, shadow


@dataclass(frozen=True)
class VersionNumbers:
    """One version's numbers over a set of hours: as a shadow (its copies) or production
    (its users' requests)."""

    version: str
    shadow: bool
    requests: int
    answered: int
    errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    approximate: bool  # percentiles from merged histograms
    feedback_count: int
    feedback_mean: float | None
    judges: dict[str, tuple[int, float]]  # judge.NAME -> (records scored, mean score)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.answered if self.answered else None


@dataclass(frozen=True)
class ShadowComparison:
    """A shadow version's numbers, production's over the hours it got copies, and the
    chart's series (``shadow p50`` … ``production p95``, per hour)."""

    shadow: VersionNumbers
    hours: int
    production: list[VersionNumbers]
    latency: dict[str, list[tuple[float, float]]]


class _Hists:
    """The endpoint's hour profiles' latency histograms by (hour, version, shadow), every
    tenant's together; read once, the first time a group of several profiles needs them."""

    def __init__(self, store: Store, endpoint: str, since: datetime, until: datetime) -> None:
        self._store, self._endpoint = store, endpoint
        self._since, self._until = since, until
        self._found: dict[_Key, list[Any]] | None = None

    def _read(self) -> dict[_Key, list[Any]]:
        rows = [
            r
            for r in self._store.profile_rows("hour", floor_hour(self._since), self._until + HOUR)
            if r["endpoint_name"] == self._endpoint and r["version_id"] is not None
        ]
        refs = {
            vid: v.ref
            for vid, v in self._store.get_model_versions_by_ids(
                {r["version_id"] for r in rows}
            ).items()
        }
        found: dict[_Key, list[Any]] = defaultdict(list)
        for r in rows:
            key = (r["start"].timestamp(), refs.get(r["version_id"]), bool(r["shadow"]))
            found[key].append(r["latency_hist"])
        return found

    def merged(self, profiles: Iterable[Profile]) -> list[list[int]]:
        if self._found is None:
            self._found = self._read()
        keys = {(p.start.timestamp(), p.version, p.shadow) for p in profiles}
        return merge_hists(h for key in keys for h in self._found.get(key, []))


def _latency(items: Sequence[Profile], hists: _Hists) -> tuple[float | None, float | None, bool]:
    """p50 and p95 of these profiles' requests answered ok, and whether they are
    approximations (several profiles: their merged histograms)."""
    if not items:
        return None, None, False
    if len(items) == 1:
        return items[0].latency_p50_ms, items[0].latency_p95_ms, False
    merged = hists.merged(items)
    return hist_quantile(merged, 0.5), hist_quantile(merged, 0.95), True


def _numbers(version: str, items: Sequence[Profile], hists: _Hists) -> VersionNumbers:
    p50, p95, approximate = _latency(items, hists)
    fb_n = sum(p.feedback_count for p in items)
    judges: dict[str, tuple[int, float]] = {}
    for metric in sorted({m for p in items for m in p.judges}):
        judged = [p.judges[metric] for p in items if metric in p.judges]
        n = sum(q.scored for q in judged)
        if n:
            judges[metric] = (n, sum(q.mean * q.scored for q in judged) / n)
    return VersionNumbers(
        version=version,
        shadow=items[0].shadow,
        requests=sum(p.requests for p in items),
        answered=sum(p.answered for p in items),
        errors=sum(p.errors for p in items),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        approximate=approximate,
        feedback_count=fb_n,
        feedback_mean=sum(p.feedback_sum for p in items) / fb_n if fb_n else None,
        judges=judges,
    )


def _per_hour(
    items: Sequence[Profile], name: str, hists: _Hists
) -> dict[str, list[tuple[float, float]]]:
    hours: dict[float, list[Profile]] = defaultdict(list)
    for p in items:
        hours[p.start.timestamp()].append(p)
    out: dict[str, list[tuple[float, float]]] = {f"{name} p50": [], f"{name} p95": []}
    for t, group in sorted(hours.items()):
        p50, p95, _ = _latency(group, hists)
        for q, v in (("p50", p50), ("p95", p95)):
            if v is not None:
                out[f"{name} {q}"].append((t, v))
    return out


def _order(ref: str) -> tuple[str, int]:
    model, _, number = ref.rpartition(":")
    return (model, int(number)) if number.isdigit() else (ref, 0)


def shadow_comparisons(
    store: Store,
    endpoint: str,
    live: Sequence[Profile],
    *,
    since: datetime,
    until: datetime,
) -> list[ShadowComparison]:
    """Each version that got shadow copies of ``endpoint`` since ``since``, beside the
    production versions of ``live`` (the users' hour profiles the report read) in the
    hours it got them; in version order."""
    shadows = [
        p
        for p in store.list_profiles(window="hour", endpoint=endpoint, since=since, shadow=True)
        if p.version is not None
    ]
    hists = _Hists(store, endpoint, since, until)
    by_version: dict[str, list[Profile]] = defaultdict(list)
    for p in shadows:
        assert p.version is not None
        by_version[p.version].append(p)
    found = []
    for version in sorted(by_version, key=_order):
        mine = by_version[version]
        hours = {p.start for p in mine}
        prod = [p for p in live if p.start in hours and p.version not in (None, version)]
        prod_versions: dict[str, list[Profile]] = defaultdict(list)
        for p in prod:
            assert p.version is not None
            prod_versions[p.version].append(p)
        found.append(
            ShadowComparison(
                shadow=_numbers(version, mine, hists),
                hours=len(hours),
                production=[
                    _numbers(v, prod_versions[v], hists) for v in sorted(prod_versions, key=_order)
                ],
                latency=_per_hour(prod, "production", hists) | _per_hour(mine, "shadow", hists),
            )
        )
    return found


def _esc(text: object) -> str:
    return html.escape(str(text))


def _ms(value: float | None, approximate: bool) -> str:
    return "-" if value is None else f"{'~' if approximate else ''}{value:,.1f}"


def _row(n: VersionNumbers, metrics: Sequence[str]) -> list[str]:
    return [
        f"{n.version} (shadow)" if n.shadow else n.version,
        "shadow copies" if n.shadow else "production",
        str(n.requests),
        "-" if n.error_rate is None else f"{n.error_rate:.1%}",
        _ms(n.latency_p50_ms, n.approximate),
        _ms(n.latency_p95_ms, n.approximate),
        f"{n.feedback_mean:+.2f} (n={n.feedback_count})" if n.feedback_mean is not None else "-",
        *(f"{n.judges[m][1]:.2f} (n={n.judges[m][0]})" if m in n.judges else "-" for m in metrics),
    ]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _empty(ep: Endpoint) -> str:
    if ep.shadow_version is not None:
        why = (
            f"no shadow copies in this period: {ep.model}:{ep.shadow_version} is the shadow "
            f"({ep.shadow_fraction * 100:g} % of requests) but got none yet"
        )
    else:
        why = (
            "no shadow copies in this period: mirror a share of the requests to a candidate "
            f"with modelyard endpoints set-traffic {ep.name} --shadow N --shadow-fraction 0.1"
        )
    return f'<p class="empty">{_esc(why)}</p>'


def shadow_html(
    ep: Endpoint, comparisons: Sequence[ShadowComparison], period: tuple[float, float]
) -> str:
    """The section's HTML: per shadow version, a table of it and production and a latency
    chart of both per hour; one line when no version got shadow copies."""
    if not comparisons:
        return _empty(ep)
    parts = []
    for c in comparisons:
        numbers = [c.shadow, *c.production]
        metrics = sorted({m for n in numbers for m in n.judges})
        head = ["version", "traffic", "requests", "error rate", "p50 latency (ms)",
                "p95 latency (ms)", "feedback", *(f"{m} mean" for m in metrics)]  # fmt: skip
        prod = ", ".join(n.version for n in c.production) or "none"
        parts.append(
            f"<h3>{_esc(c.shadow.version)} (shadow) beside production ({_esc(prod)})</h3>"
            f"<p>{c.hours} hour(s) with shadow copies; production is the users' requests of "
            "the same hours. Latency is that of the requests answered ok.</p>"
            + _table(head, [_row(n, metrics) for n in numbers])
            + (
                '<p class="empty">~: percentiles over several hours or tenants, from their '
                "profiles' merged latency histograms (within about 2.5 %)</p>"
                if any(n.approximate for n in numbers)
                else ""
            )
            + line_chart(
                f"Latency of {c.shadow.version} (shadow) and production, per hour of its "
                "copies (ms)",
                c.latency,
                x_range=period,
                unit="ms",
            )
        )
    return "".join(parts)


__all__ = ["ShadowComparison", "VersionNumbers", "shadow_comparisons", "shadow_html"]
