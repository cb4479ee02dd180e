"""A/B analysis of the versions behind one endpoint, from its inference records.

Per version: requests, error rate with a Wilson 95% interval, latency p50 and
p95 with bootstrap 95% intervals (order-statistic ones above ``BOOTSTRAP_MAX`` values,
so that memory stays bounded), feedback mean with a t interval. Each other
version is tested against the control (the one with the most requests):
Fisher's exact test on errors, Mann-Whitney U on latency, Welch's t-test on
feedback. A difference is called significant at p < ``alpha``; fewer than
``min_n`` requests on either side is "not enough data", not a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from modelyard.store import Store, VersionSample


@dataclass(frozen=True)
class VersionStats:
    version: str
    requests: int
    errors: int
    error_rate: float | None
    error_rate_ci: tuple[float, float] | None
    p50_latency_ms: float | None
    p50_latency_ci: tuple[float, float] | None
    p95_latency_ms: float | None
    p95_latency_ci: tuple[float, float] | None
    feedback_count: int
    feedback_score: float | None
    feedback_ci: tuple[float, float] | None


@dataclass(frozen=True)
class Comparison:
    version: str
    control: str
    error_rate_p: float | None
    latency_p: float | None
    feedback_p: float | None
    verdict: str
    findings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ABReport:
    endpoint: str
    since: datetime
    control: str | None
    versions: list[VersionStats]
    comparisons: list[Comparison]

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "since": self.since.isoformat(),
            "control": self.control,
            "versions": [vars(v) for v in self.versions],
            "comparisons": [vars(c) for c in self.comparisons],
        }


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


SCORE_RANGE = (-1.0, 1.0)  # a feedback score (thumbs: 1 / -1)


def feedback_interval(scores: np.ndarray) -> tuple[float, float]:
    """95% interval of the mean feedback score, always inside the score's range [-1, 1].

    Thumbs only (every score -1 or 1): the Wilson interval of the share of thumbs up,
    mapped onto [-1, 1] (sound for small samples and all-alike ones). Other scores:
    Student's t interval, clipped to the range.
    """
    low_end, high_end = SCORE_RANGE
    if np.isin(scores, SCORE_RANGE).all():
        interval = wilson(int((scores == high_end).sum()), len(scores))
        assert interval is not None  # len(scores) >= 2
        return (2 * interval[0] - 1, 2 * interval[1] - 1)
    from scipy import stats

    sem = float(np.std(scores, ddof=1) / math.sqrt(len(scores)))
    t = float(stats.t.ppf(0.975, len(scores) - 1))
    mean = float(scores.mean())
    return (max(low_end, mean - t * sem), min(high_end, mean + t * sem))


BOOTSTRAP_MAX = 5_000
"""Latencies per version up to which the percentile's interval is bootstrapped. Above it,
500 resamples of every value would hold 500 copies of the sample at once (gigabytes for
a day of a busy endpoint's records, which `rollout compare` reads whole by default); the
order-statistic interval is used instead: exact, distribution-free, and as tight."""


def _bootstrap(values: np.ndarray, q: float, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) > BOOTSTRAP_MAX:
        return _order_interval(values, q)
    # sorted first: the store gives rows in no set order, and the same draws over the same
    # values then give the same interval whatever order the database chose
    values = np.sort(values)
    idx = rng.integers(0, len(values), size=(500, len(values)))
    stats = np.percentile(values[idx], q, axis=1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return (float(low), float(high))


def _order_interval(values: np.ndarray, q: float) -> tuple[float, float]:
    """95% interval of the ``q``-th percentile from two order statistics: the ranks that
    hold it with 95% probability under the binomial count of values below it."""
    from scipy import stats

    n = len(values)
    # ranks l <= u (1-based) with P(l <= B < u) >= 95% for B ~ Binomial(n, q), the count of
    # values below the true percentile; as 0-based indexes into the sorted values
    low_rank = max(0, int(stats.binom.ppf(0.025, n, q / 100)) - 1)
    high_rank = min(n - 1, int(stats.binom.ppf(0.975, n, q / 100)))
    ranked = np.partition(values, (low_rank, high_rank))
    return (float(ranked[low_rank]), float(ranked[high_rank]))


def _stats(ref: str, s: VersionSample, rng: np.random.Generator) -> VersionStats:
    lat, fb = s.latencies_ms, s.feedback  # float64 arrays (``VersionSample``)
    fb_ci = feedback_interval(fb) if len(fb) >= 2 else None
    return VersionStats(
        version=ref,
        requests=s.requests,
        errors=s.errors,
        error_rate=s.errors / s.requests if s.requests else None,
        error_rate_ci=wilson(s.errors, s.requests),
        p50_latency_ms=float(np.percentile(lat, 50)) if len(lat) else None,
        p50_latency_ci=_bootstrap(lat, 50, rng) if len(lat) >= 2 else None,
        p95_latency_ms=float(np.percentile(lat, 95)) if len(lat) else None,
        p95_latency_ci=_bootstrap(lat, 95, rng) if len(lat) >= 2 else None,
        feedback_count=len(fb),
        feedback_score=float(fb.mean()) if len(fb) else None,
        feedback_ci=fb_ci,
    )


def _compare(
    ref: str, s: VersionSample, control_ref: str, c: VersionSample, alpha: float, min_n: int
) -> Comparison:
    from scipy import stats

    if s.requests < min_n or c.requests < min_n:
        return Comparison(
            ref, control_ref, None, None, None,
            f"not enough data (needs {min_n} requests on each side)",
        )  # fmt: skip
    table = [[s.errors, s.requests - s.errors], [c.errors, c.requests - c.errors]]
    err_p = float(stats.fisher_exact(table).pvalue)
    lat_p = None
    if len(s.latencies_ms) >= 2 and len(c.latencies_ms) >= 2:
        lat_p = float(stats.mannwhitneyu(s.latencies_ms, c.latencies_ms).pvalue)
    fb_p = None
    if len(s.feedback) >= 2 and len(c.feedback) >= 2:
        fb_p = float(stats.ttest_ind(s.feedback, c.feedback, equal_var=False).pvalue)
        fb_p = None if math.isnan(fb_p) else fb_p
    findings = []
    if err_p < alpha:
        worse = s.errors / s.requests > c.errors / c.requests
        findings.append(f"error rate {'higher' if worse else 'lower'} (p={err_p:.3g})")
    if lat_p is not None and lat_p < alpha:
        slower = float(np.median(s.latencies_ms)) > float(np.median(c.latencies_ms))
        findings.append(f"latency {'higher' if slower else 'lower'} (p={lat_p:.3g})")
    if fb_p is not None and fb_p < alpha:
        better = float(np.mean(s.feedback)) > float(np.mean(c.feedback))
        findings.append(f"feedback {'higher' if better else 'lower'} (p={fb_p:.3g})")
    verdict = ("significant: " + "; ".join(findings)) if findings else "no significant difference"
    return Comparison(ref, control_ref, err_p, lat_p, fb_p, verdict, findings)


def compare_versions(
    store: Store, endpoint: str, since: datetime, *, alpha: float = 0.05, min_n: int = 30
) -> ABReport:
    ep = store.get_endpoint(endpoint)
    counts = store.requests_by_version(endpoint, since)
    ids: dict[int, str] = {}
    number: dict[int, int] = {}  # version id → version number, the order of the table
    for ref, kinds in counts.items():
        live = kinds.get("live", 0) + kinds.get("fallback", 0)  # a shadow's are not A/B traffic
        if ref.startswith(f"{ep.model}:") and live:
            version = store.get_model_version(ep.model, int(ref.split(":", 1)[1]))
            ids[version.id], number[version.id] = ref, version.version
    samples = store.rollout_samples(endpoint, since, list(ids))
    rng = np.random.default_rng(0)
    versions = [_stats(ids[vid], samples[vid], rng) for vid in sorted(ids, key=number.__getitem__)]
    if not versions:
        return ABReport(endpoint, since, None, [], [])
    control_id = max(ids, key=lambda vid: (samples[vid].requests, -vid))
    comparisons = [
        _compare(ids[vid], samples[vid], ids[control_id], samples[control_id], alpha, min_n)
        for vid in sorted(ids, key=number.__getitem__)
        if vid != control_id
    ]
    return ABReport(endpoint, since, ids[control_id], versions, comparisons)
