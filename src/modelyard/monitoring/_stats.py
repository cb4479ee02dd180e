"""Drift statistics, registered by name: PSI, KS, chi-squared, Jensen-Shannon, Wasserstein.

Every method compares a reference sample with a current one and returns a
value and a verdict against a threshold. The statistics follow Evidently's
definitions (bins from the Sturges rule over both samples, empty bins
replaced by 0.0001, Wasserstein normed by the reference's standard
deviation, KS and chi-squared as p-values: drift when p < threshold), so
numbers are comparable with theirs. ``default_method`` picks a method by
sample size as Evidently does.

For speed each sample is sorted once (``SortedValues``) and reused: the KS
statistic and the Wasserstein distance are read off the two sorted arrays,
and the bin counts come from binary searches of the bin edges instead of a
pass over the data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from modelyard.errors import ConfigError

Direction = Literal["above", "below"]  # drift when the value is above (or below) the threshold
_EPS = 0.0001
_MIN_STD = 0.001  # Evidently's floor for the Wasserstein norm


@dataclass(frozen=True)
class SortedValues:
    """One side of a comparison: finite values, sorted once."""

    values: np.ndarray  # sorted float64

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> SortedValues:
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        return cls(np.sort(arr, kind="quicksort"))

    @property
    def n(self) -> int:
        return int(self.values.size)

    def n_unique(self) -> int:
        v = self.values
        return 0 if v.size == 0 else int(np.count_nonzero(v[1:] != v[:-1])) + 1

    def counts(self, edges: np.ndarray) -> np.ndarray:
        """Counts per bin of ``edges`` (numpy's rule: the last bin includes its right edge)."""
        pos = np.searchsorted(self.values, edges, side="left")
        pos[-1] = np.searchsorted(self.values, edges[-1], side="right")
        return np.diff(pos)


@dataclass(frozen=True)
class Pair:
    """A reference and a current sample, with what several methods share (lazily)."""

    ref: SortedValues
    cur: SortedValues

    @cached_property
    def cdfs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both samples merged (sorted), and each sample's empirical CDF at every merged value.

        Shared by KS and Wasserstein; the merge of two sorted runs is linear (timsort).
        """
        a, b = self.ref.values, self.cur.values
        both = np.sort(np.concatenate((a, b)), kind="stable")
        cdf_a = np.searchsorted(a, both, side="right") / a.size
        cdf_b = np.searchsorted(b, both, side="right") / b.size
        return both, cdf_a, cdf_b

    def edges(self) -> np.ndarray:
        """Sturges-rule bin edges over both samples (as ``np.histogram_bin_edges``)."""
        lo = min(self.ref.values[0], self.cur.values[0])
        hi = max(self.ref.values[-1], self.cur.values[-1])
        n = self.ref.n + self.cur.n
        bins = int(np.ceil(np.log2(n) + 1.0))
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        return np.linspace(lo, hi, bins + 1)

    def categories(self) -> np.ndarray:
        """Edges that put each distinct value in a bin of its own (for few-valued features)."""
        values = np.union1d(np.unique(self.ref.values), np.unique(self.cur.values))
        if values.size == 1:
            return np.array([values[0] - 0.5, values[0] + 0.5])
        mids = (values[1:] + values[:-1]) / 2
        return np.concatenate(([values[0] - 0.5], mids, [values[-1] + 0.5]))

    def shares(self, categorical: bool) -> tuple[np.ndarray, np.ndarray]:
        edges = self.categories() if categorical else self.edges()
        ref = self.ref.counts(edges) / self.ref.n
        cur = self.cur.counts(edges) / self.cur.n
        return np.where(ref == 0, _EPS, ref), np.where(cur == 0, _EPS, cur)


def psi(pair: Pair, categorical: bool = False) -> float:
    ref, cur = pair.shares(categorical)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def jensen_shannon(pair: Pair, categorical: bool = False) -> float:
    ref, cur = pair.shares(categorical)
    p, q = ref / ref.sum(), cur / cur.sum()
    m = (p + q) / 2
    js = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    return float(np.sqrt(max(js, 0.0)))  # the distance, as scipy.spatial.distance.jensenshannon


def ks_statistic(pair: Pair) -> float:
    _, cdf_a, cdf_b = pair.cdfs
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_pvalue(pair: Pair, categorical: bool = False) -> float:
    """Two-sample Kolmogorov-Smirnov p-value, as ``scipy.stats.ks_2samp`` (Evidently's)
    computes it: exact up to 10,000 values a side, else Smirnov's asymptotic formula."""
    from scipy import stats  # here: importing it costs every CLI command about a second

    n, m = pair.ref.n, pair.cur.n
    if max(n, m) <= 10_000:  # scipy's own choice of the exact method (milliseconds)
        return float(stats.ks_2samp(pair.ref.values, pair.cur.values).pvalue)
    d = ks_statistic(pair)
    en = round(n * m / (n + m))
    return float(np.clip(stats.kstwo.sf(d, en), 0.0, 1.0))


def chi_squared_pvalue(pair: Pair, categorical: bool = True) -> float:
    """Chi-squared goodness of fit of the current counts to the reference shares."""
    from scipy import stats

    edges = pair.categories() if categorical else pair.edges()
    ref = pair.ref.counts(edges) / pair.ref.n
    observed = pair.cur.counts(edges).astype(np.float64)
    expected = np.where(ref == 0, _EPS, ref)
    expected = expected / expected.sum() * observed.sum()
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    dof = max(len(observed) - 1, 1)
    return float(stats.chi2.sf(chi2, dof))


def wasserstein_normed(pair: Pair, categorical: bool = False) -> float:
    """Wasserstein-1 distance between the samples, divided by the reference's std (at least
    0.001, as Evidently: a constant reference gives a finite value, never inf)."""
    both, cdf_a, cdf_b = pair.cdfs
    distance = float(np.sum(np.abs(cdf_a[:-1] - cdf_b[:-1]) * np.diff(both)))
    return distance / max(float(np.std(pair.ref.values)), _MIN_STD)


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    threshold: float  # the default
    direction: Direction
    compute: Callable[[Pair, bool], float]

    def drifted(self, value: float, threshold: float) -> bool:
        return value > threshold if self.direction == "above" else value < threshold

    def condition(self, threshold: float) -> str:
        """What a value drifts on: ``< 0.05`` for a p-value, ``> 0.1`` for a distance."""
        return f"{'>' if self.direction == 'above' else '<'} {threshold:g}"


def drift_condition(method: str, threshold: float) -> str:
    """``Method.condition`` of the method named ``method``; the bare threshold for one this
    process does not know."""
    found = METHODS.get(method)
    return found.condition(threshold) if found else f"{threshold:g}"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("psi", "population stability index", 0.1, "above", psi),
        Method("ks", "Kolmogorov-Smirnov p-value", 0.05, "below", ks_pvalue),
        Method("chisquare", "chi-squared p-value", 0.05, "below", chi_squared_pvalue),
        Method("jensenshannon", "Jensen-Shannon distance", 0.1, "above", jensen_shannon),
        Method("wasserstein", "Wasserstein distance (normed)", 0.1, "above", wasserstein_normed),
    )
}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a drift method by name (``replace=True`` to swap one that exists)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", method.name):
        raise ConfigError(
            f"invalid drift method name {method.name!r}: use 1-32 lowercase letters, digits "
            "or '_', starting with a letter",
            field="name",
        )
    if method.name in METHODS and not replace:
        raise ConfigError(
            f"a drift method named {method.name!r} exists already",
            hint="Pick another name, or pass replace=True.",
            field="name",
        )
    if method.direction not in ("above", "below") or not math.isfinite(method.threshold):
        raise ConfigError(
            f"drift method {method.name!r}: direction must be 'above' or 'below' and the "
            "threshold a finite number",
            field="threshold",
        )
    METHODS[method.name] = method
    return method


def default_method(n_reference: int, n_unique: int) -> str:
    """Evidently's choice: up to 1,000 reference rows KS (chi-squared for ≤ 5 distinct
    values); above that Wasserstein (Jensen-Shannon for ≤ 5 distinct values)."""
    if n_reference <= 1000:
        return "ks" if n_unique > 5 else "chisquare"
    return "wasserstein" if n_unique > 5 else "jensenshannon"
