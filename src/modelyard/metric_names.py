"""The names users give metrics, once: rollout guards, evaluation gates and alert rules.

Canonical names put the statistic first and the unit last: ``p95_latency_ms``,
``p95_ttft_ms``, ``error_rate``, ``feedback_score``. The spellings alert rule
files used before (``latency_p95_ms``, ``ttft_p95_ms``, ``feedback_mean``) are
still accepted wherever a metric is named, and read as the canonical name
(``canonical``). The store keeps its own column names (``latency_p95_ms`` in
profiles); they are not a user vocabulary.

An unknown name gets a suggestion (``suggest``) that matches the percentile
first: ``latency_p95`` suggests ``p95_latency_ms``, never ``p99_latency_ms``
(plain ``difflib`` ranks p99 first there, as the two differ by one letter).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from modelyard.errors import ConfigError

TRAFFIC_METRICS: Mapping[str, str] = MappingProxyType(
    {
        "requests": "requests that ended (ok, error or timeout)",
        "errors": "requests that ended in an error or a timeout",
        "error_rate": "errors / requests",
        "p50_latency_ms": "median latency",
        "p95_latency_ms": "95th percentile latency",
        "p99_latency_ms": "99th percentile latency",
        "mean_latency_ms": "mean latency",
        "p95_ttft_ms": "95th percentile time to first token",
        "tokens_in": "prompt tokens",
        "tokens_out": "completion tokens",
        "feedback_score": "mean feedback score",
        "feedback_count": "feedback given",
    }
)
"""Metrics of an endpoint's traffic, by canonical name."""

ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "latency_p50_ms": "p50_latency_ms",
        "latency_p95_ms": "p95_latency_ms",
        "latency_p99_ms": "p99_latency_ms",
        "latency_mean_ms": "mean_latency_ms",
        "ttft_p95_ms": "p95_ttft_ms",
        "feedback_mean": "feedback_score",
    }
)
"""Other spellings still accepted → the canonical name."""

_PERCENTILE = re.compile(r"p?(\d{2,3})")


def canonical(name: str) -> str:
    """The canonical spelling of ``name`` (itself when it is not an alias)."""
    return ALIASES.get(name, name)


def _shape(name: str) -> tuple[str | None, str]:
    """The percentile (``"95"``) and the rest of the name, the percentile put first."""
    text = name.lower().replace("-", "_").replace(" ", "_")
    match = _PERCENTILE.search(text)
    if match is None:
        return None, text
    rest = (text[: match.start()] + "_" + text[match.end() :]).strip("_")
    rest = re.sub(r"_+", "_", rest)
    return match.group(1), f"p{match.group(1)}_{rest}"


def suggest(name: str, known: Iterable[str], *, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The known names nearest to ``name``, best first; a name with the same percentile
    ranks before one that differs only in it (``latency_p95`` → ``p95_latency_ms``)."""
    pct, shape = _shape(canonical(name))
    scored = []
    for candidate in known:
        cpct, cshape = _shape(candidate)
        ratio = difflib.SequenceMatcher(None, shape, cshape).ratio()
        if ratio < cutoff:
            continue
        same = pct is not None and pct == cpct
        scored.append((-(ratio + (1.0 if same else 0.0)), candidate))
    return [c for _, c in sorted(scored)[:n]]


def hint(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'p95_latency_ms'?)`` or nothing."""
    near = suggest(name, known, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


JUDGE_PREFIX = "judge."
_JUDGE = re.compile(r"judge\.([a-z0-9][a-z0-9._-]{0,62})")


def judge_name(metric: str) -> str | None:
    """``correctness`` for ``judge.correctness`` (a judge's mean score); None for other names."""
    match = _JUDGE.fullmatch(metric.strip())
    return match.group(1) if match else None


def check(
    name: str, known: Iterable[str], *, where: str, field: str = "metric", judges: bool = False
) -> str:
    """``name``'s canonical spelling, or a ``ConfigError`` saying ``where`` it was named,
    with a suggestion and the known names. With ``judges``, ``judge.NAME`` (a judge's
    mean score) is known too; whether judge NAME exists is the caller's to check."""
    names = list(known)
    name = name.strip()
    if canonical(name) in names:
        return canonical(name)
    if judges and judge_name(name) is not None:
        return name
    if judges:
        names.append("judge.NAME")
    raise ConfigError(
        f"{where}: unknown metric {name!r}{hint(name, names)}; known: {', '.join(names)}",
        field=field,
    )


__all__ = [
    "ALIASES",
    "JUDGE_PREFIX",
    "TRAFFIC_METRICS",
    "canonical",
    "check",
    "hint",
    "judge_name",
    "suggest",
]
