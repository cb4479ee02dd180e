"""Rollout guards: ``METRIC OP THRESHOLD`` checked on a step's traffic, canary vs baseline.

Grammar: ``error_rate <= 0.02``, ``p95_latency_ms <= 1.2 * baseline``,
``feedback_score >= baseline - 0.05``, ``judge.quality >= baseline - 0.2`` (a judge's mean
score, ``_judging``); the threshold is a number or
``[FACTOR *] baseline [+|- OFFSET]``, where ``baseline`` is the same metric on
the baseline versions' traffic. A guard on a judge may end with ``(sample N)``: how many
records per side its judge judges per job (``judge.quality >= baseline - 0.2 (sample 100)``;
1 to ``MAX_SAMPLE``, default ``_judging.DEFAULT_SAMPLE``).

Rates (``error_rate``) are judged by a test, so a handful of errors does not
roll a canary back on noise: against a number, an exact one-sided binomial
test of the canary's rate against it; against the baseline, Fisher's exact
test of the canary's errors against the baseline's, and the canary's rate must
also be on the wrong side of the threshold. A breach needs p < ``alpha``.
Other metrics are compared as they are, once the canary has ``min_requests``
requests (and feedback scores, for ``feedback_score``; records the judge scored, for
``judge.NAME``).
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from modelyard.errors import ConfigError
from modelyard.metric_names import canonical, hint, judge_name
from modelyard.store import RequestSample, VersionSample

GuardStatus = Literal["pass", "breach", "pending", "no_data"]
FloatArray = npt.NDArray[np.float64]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}

RATE_METRICS = ("error_rate",)
METRICS = (  # the metrics of one side's traffic a guard may name (metric_names)
    "error_rate",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "mean_latency_ms",
    "p95_ttft_ms",
    "feedback_score",
)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_GUARD_RE = re.compile(
    rf"^\s*(?P<metric>judge\.[a-z0-9][a-z0-9._-]{{0,62}}|[a-z0-9_]+)\s*(?P<op><=|>=|<|>)\s*(?:"
    rf"(?P<number>{_NUM})"
    rf"|(?:(?P<factor>{_NUM})\s*\*\s*)?baseline(?:\s*(?P<sign>[+-])\s*(?P<offset>{_NUM}))?"
    rf")\s*(?:\((?P<options>[^()]*)\)\s*)?$"
)
_SAMPLE_RE = re.compile(r"^\s*sample\s+(?P<n>\S+)\s*$")
MAX_SAMPLE = 1000


@dataclass(frozen=True)
class Guard:
    text: str
    metric: str
    op: str
    number: float | None  # an absolute threshold, or None when relative to the baseline
    factor: float = 1.0
    offset: float = 0.0
    sample: int | None = None  # a judge guard's records per side per judging job (``_judging``)

    @property
    def relative(self) -> bool:
        return self.number is None

    @property
    def judge(self) -> str | None:
        """The judge a ``judge.NAME`` guard names; None for a traffic metric."""
        return judge_name(self.metric)

    def threshold(self, baseline: float | None) -> float | None:
        if self.number is not None:
            return self.number
        return None if baseline is None else self.factor * baseline + self.offset


@dataclass(frozen=True, eq=False)
class TrafficSample(RequestSample):
    """The traffic a guard judges: one side of a step (the canary, or the baseline versions
    together) in a window. The store's ``VersionSample`` is one version's part of it.
    ``judged`` holds, per judge, the scores it gave this side's records so far, and
    ``judge_failed`` how many of them it gave none."""

    judged: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    judge_failed: Mapping[str, int] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        judge = judge_name(metric)
        if judge is not None:
            scores = self.judged.get(judge, ())
            return float(np.mean(scores)) if scores else None
        if metric == "error_rate":
            return self.errors / self.requests if self.requests else None
        if metric == "feedback_score":
            return float(np.mean(self.feedback)) if len(self.feedback) else None
        if metric == "mean_latency_ms":
            return float(np.mean(self.latencies_ms)) if len(self.latencies_ms) else None
        if metric == "p95_ttft_ms":
            return float(np.percentile(self.ttfts_ms, 95)) if len(self.ttfts_ms) else None
        q = {"p50_latency_ms": 50, "p95_latency_ms": 95, "p99_latency_ms": 99}[metric]
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else None

    def count(self, metric: str) -> int:
        judge = judge_name(metric)
        if judge is not None:
            return len(self.judged.get(judge, ()))
        return len(self.feedback) if metric == "feedback_score" else self.requests

    @classmethod
    def of(cls, samples: Iterable[VersionSample]) -> TrafficSample:
        """The traffic of these versions together: their status counts summed, their values
        one array each (in the versions' order), never boxed into Python objects."""
        parts = list(samples)
        statuses: Counter[str] = Counter()
        for x in parts:
            statuses.update(x.statuses)

        def joined(arrays: list[FloatArray]) -> FloatArray:  # one version's: shared, read-only
            if len(arrays) == 1:
                return arrays[0]
            return np.concatenate(arrays) if arrays else np.empty(0)

        return cls(
            statuses,
            joined([x.latencies_ms for x in parts]),
            joined([x.ttfts_ms for x in parts]),
            joined([x.feedback for x in parts]),
        )


@dataclass(frozen=True)
class GuardResult:
    guard: str
    metric: str
    status: GuardStatus
    value: float | None
    baseline: float | None
    threshold: float | None
    n: int
    p_value: float | None = None
    failed: int = 0  # a judge guard's records (canary and baseline) the judge gave no score

    def describe(self) -> str:
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.4g}"

        text = f"{self.guard}: {self.metric}={fmt(self.value)} (threshold {fmt(self.threshold)}"
        if self.baseline is not None:
            text += f", baseline {fmt(self.baseline)}"
        if self.p_value is not None:
            text += f", p={self.p_value:.3g}"
        if self.failed:
            text += f", {self.failed} without a score"
        return text + f", n={self.n}) → {self.status}"


def parse_guard(text: str) -> Guard:
    match = _GUARD_RE.match(text)
    if match is None:
        why = _why_invalid(text)
        raise ConfigError(
            f"invalid guard {text!r}: {why + '; ' if why else ''}write METRIC OP THRESHOLD, "
            "e.g. 'error_rate <= 0.02', 'p95_latency_ms <= 1.2 * baseline', "
            "'feedback_score >= baseline - 0.05' or 'judge.quality >= 3.5'",
            field="guard",
        )
    metric = canonical(match["metric"])  # latency_p95_ms is p95_latency_ms
    if metric not in METRICS and judge_name(metric) is None:
        raise ConfigError(
            f"guard {text!r} names the unknown metric {match['metric']!r}"
            f"{hint(match['metric'], METRICS)}; known: " + ", ".join(METRICS) + ", judge.NAME",
            field="guard",
        )
    sample = None if match["options"] is None else _sample(text, metric, match["options"])
    if match["number"] is not None:
        return Guard(text.strip(), metric, match["op"], float(match["number"]), sample=sample)
    offset = float(match["offset"]) if match["offset"] else 0.0
    if match["sign"] == "-":
        offset = -offset
    factor = float(match["factor"]) if match["factor"] else 1.0
    return Guard(text.strip(), metric, match["op"], None, factor, offset, sample)


_PARTS_RE = re.compile(r"^\s*(?P<metric>\S*?)\s*(?P<op>[<>=!]+)\s*(?P<rest>.*?)\s*$")
_THRESHOLD_RE = re.compile(r"^(?P<head>.*?)\s*(?:\((?P<options>[^()]*)\))?$")


def _why_invalid(text: str) -> str:
    """Which part of a guard that does not parse is wrong (empty when none stands out): a
    CI log then points at the typo, not only at the grammar."""
    parts = _PARTS_RE.match(text)
    if parts is None or not parts["metric"]:
        return "no METRIC OP part (<=, <, >= or >) in it" if text.strip() else "it is empty"
    if not re.fullmatch(r"judge\.[a-z0-9][a-z0-9._-]{0,62}|[a-z0-9_]+", parts["metric"]):
        near = hint(parts["metric"].lower(), METRICS) or " (a judge's is judge.NAME)"
        return f"{parts['metric']!r} is not a metric name{near}"
    if parts["op"] not in ("<=", ">=", "<", ">"):
        return f"{parts['op']!r} is not an operator (use <=, <, >= or >)"
    bare = _THRESHOLD_RE.match(parts["rest"])  # the threshold without its (sample N)
    head = bare["head"] if bare else parts["rest"]
    words = re.findall(r"[A-Za-z_][A-Za-z_0-9]*", head)
    wrong = [w for w in words if w != "baseline"]
    if not head:
        return "the threshold is missing"
    if percent := re.fullmatch(rf"\s*({_NUM})\s*%\s*", head):
        n = float(percent[1])
        return f"{head.strip()!r} is not a number: write a share, {n / 100:g} for {n:g}%"
    if wrong and "baseline" not in words and hint(wrong[0], ["baseline"]):
        return f"{wrong[0]!r} in the threshold is not a word it knows{hint(wrong[0], ['baseline'])}"
    if re.fullmatch(rf"\s*baseline\s*\*\s*{_NUM}\s*", head):
        return f"put the factor first: '{head.split('*')[1].strip()} * baseline'"
    return (
        f"the threshold {head.strip()!r} is neither a number nor [FACTOR *] baseline [+|- OFFSET]"
    )


def _bounds(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take (a judge scores from 1 to 5)."""
    if judge_name(metric) is not None:
        return (1.0, 5.0)
    return {"error_rate": (0.0, 1.0), "feedback_score": (-1.0, 1.0)}.get(metric, (0.0, math.inf))


def check_guard(text: str) -> Guard:
    """A guard given for a new rollout or policy: it parses, and an absolute threshold is one
    its metric can reach. ``error_rate <= 2`` (for 2%) would never breach: refused up front,
    as a gate's is. Guards already stored are only parsed (``parse_guard``), so a rollout
    started before this check still moves."""
    guard = parse_guard(text)
    if guard.number is not None:
        _check_bounds(text, guard.metric, guard.number)
    return guard


def _check_bounds(text: str, metric: str, number: float) -> None:
    low, high = _bounds(metric)
    if low <= number <= high:
        return
    if math.isinf(high):
        problem = f"{metric} is never below {low:g}, so {number:g} cannot be its threshold"
    else:
        problem = f"{metric} is between {low:g} and {high:g}; {number:g} is outside it"
    if high == 1.0 and 1.0 < number <= 100.0:
        fix = f"write a share, not a percentage: {number / 100:g} for {number:g}%"
    elif judge_name(metric) is not None:
        fix = f"a judge scores from 1 to 5, e.g. '{metric} >= 3.5'"
    else:
        fix = f"give a threshold from {low:g}" + ("" if math.isinf(high) else f" to {high:g}")
    raise ConfigError(f"guard {text!r}: {problem}; {fix}", field="guard")


def _sample(text: str, metric: str, options: str) -> int:
    """The N of a judge guard's ``(sample N)``: records per side its judge judges per job."""
    if judge_name(metric) is None:
        raise ConfigError(
            f"guard {text!r}: ({options.strip()}) is an option of a guard on a judge "
            "(judge.NAME ... (sample N)); a guard on traffic takes none",
            field="guard",
        )
    found = _SAMPLE_RE.match(options)
    if found is None:
        raise ConfigError(
            f"guard {text!r}: unknown option ({options.strip()}); a guard on a judge takes "
            f"(sample N), N the records per side it judges per job, e.g. "
            f"'{metric} >= 3.5 (sample 100)'",
            field="guard",
        )
    n = found["n"]
    if not n.isdigit() or not 1 <= int(n) <= MAX_SAMPLE:
        raise ConfigError(
            f"guard {text!r}: sample {n} must be a whole number from 1 to {MAX_SAMPLE} "
            "(records per side the judge judges per job)",
            field="guard",
        )
    return int(n)


def evaluate_guard(
    guard: Guard,
    canary: TrafficSample,
    baseline: TrafficSample,
    *,
    min_requests: int,
    alpha: float = 0.05,
) -> GuardResult:
    """One guard on a step's traffic."""
    value = canary.value(guard.metric)
    base = baseline.value(guard.metric) if guard.relative else None
    threshold = guard.threshold(base)
    n = canary.count(guard.metric)

    judge = guard.judge
    failed = 0
    if judge is not None:
        failed = canary.judge_failed.get(judge, 0) + baseline.judge_failed.get(judge, 0)

    def result(status: GuardStatus, p: float | None = None) -> GuardResult:
        return GuardResult(guard.text, guard.metric, status, value, base, threshold, n, p, failed)

    if judge is not None:  # judged once the canary has min_requests scored records
        if value is None or n < min_requests:
            return result("pending")
        if threshold is None:
            return result("no_data")
        return result("pass" if _OPS[guard.op](value, threshold) else "breach")
    if value is None:
        return result("no_data" if guard.metric == "feedback_score" else "pending")
    if threshold is None:
        return result("no_data")  # relative, and the baseline has no traffic to compare with
    ok = _OPS[guard.op](value, threshold)
    if guard.metric in RATE_METRICS:
        p = _rate_p_value(guard, canary, baseline, threshold)
        if not ok and p < alpha:
            return result("breach", p)
        return result("pass" if canary.requests >= min_requests else "pending", p)
    if canary.requests < min_requests:
        return result("pending")
    return result("pass" if ok else "breach")


def load_statistics() -> None:
    """Import scipy's statistics (the rate guards' tests) now: a second or more on a busy
    machine, which the controller spends before it takes its lease, not in its first tick
    (a tick that outlasts the lease has its transitions refused)."""
    from scipy import stats  # noqa: F401


def _rate_p_value(
    guard: Guard, canary: TrafficSample, baseline: TrafficSample, threshold: float
) -> float:
    """How surprising the canary's rate is if it were really on the right side of the guard."""
    from scipy import stats

    k, n = canary.errors, canary.requests
    high_is_bad = guard.op in ("<=", "<")
    if not guard.relative:
        if (high_is_bad and threshold >= 1) or (not high_is_bad and threshold <= 0):
            return 1.0
        if (high_is_bad and threshold <= 0) or (not high_is_bad and threshold >= 1):
            return 0.0 if (k > 0 if high_is_bad else k < n) else 1.0
        alternative = "greater" if high_is_bad else "less"
        return float(stats.binomtest(k, n, threshold, alternative=alternative).pvalue)
    kb, nb = baseline.errors, baseline.requests
    table = [[k, n - k], [kb, nb - kb]]
    alternative = "greater" if high_is_bad else "less"
    p = float(stats.fisher_exact(table, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else p


def evaluate_guards(
    guards: Sequence[str],
    canary: TrafficSample,
    baseline: TrafficSample,
    *,
    min_requests: int,
    alpha: float = 0.05,
) -> list[GuardResult]:
    return [
        evaluate_guard(parse_guard(g), canary, baseline, min_requests=min_requests, alpha=alpha)
        for g in guards
    ]
