"""The metric names modelyard knows, with the direction and tolerance scale gates need.

One table serves ``evaluate_model`` (which names it can compute) and the gates
(which way is better, and whether a tolerance is in absolute points or a share
of the champion's value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from modelyard.errors import ConfigError
from modelyard.metric_names import canonical, judge_name, suggest

MetricKind = Literal["quality", "latency", "memory"]


@dataclass(frozen=True)
class MetricSpec:
    """What a metric means for comparisons.

    ``tolerance_scale`` says how a champion tolerance applies: ``"absolute"``
    (0.02 means two points of a 0-1 score) or ``"relative"`` (0.02 means 2% of
    the champion's value, for unbounded metrics such as milliseconds).
    """

    name: str
    higher_is_better: bool
    kind: MetricKind
    tolerance_scale: Literal["absolute", "relative"]
    unit: str
    description: str
    bounds: tuple[float, float] = (0.0, math.inf)
    """The values the metric can take: a gate's threshold outside them is a typo."""


def _quality(name: str, description: str) -> MetricSpec:
    return MetricSpec(name, True, "quality", "absolute", "", description, (0.0, 1.0))


_SPECS = (
    _quality("exact_match", "share of answers equal to the reference after normalisation"),
    _quality("token_f1", "mean SQuAD-style token F1 against the reference"),
    _quality("rouge_l", "mean ROUGE-L F-measure against the reference"),
    _quality("accuracy", "share of predicted labels equal to the reference label"),
    _quality("macro_f1", "per-label F1 averaged over labels"),
    MetricSpec(
        "perplexity",
        False,
        "quality",
        "relative",
        "",
        "exp(mean NLL of the reference tokens)",
        (1.0, math.inf),
    ),
    MetricSpec("p50_latency_ms", False, "latency", "relative", "ms", "median request latency"),
    MetricSpec("p95_latency_ms", False, "latency", "relative", "ms", "95th percentile latency"),
    MetricSpec("peak_memory_mb", False, "memory", "relative", "MiB", "peak memory while running"),
)

METRICS: Mapping[str, MetricSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
"""Every metric ``evaluate_model`` computes and a gate may name, by name."""


def judge_spec(judge: str) -> MetricSpec:
    """The metric ``judge.JUDGE``: the judge's mean score, 1 to 5, higher is better."""
    return MetricSpec(
        f"judge.{judge}", True, "quality", "absolute", "points",
        f"mean score (1-5) judge {judge!r} gave the answers", (1.0, 5.0),
    )  # fmt: skip


def metric_spec(name: str, *, where: str) -> MetricSpec:
    """The spec of ``name`` (or of its canonical spelling: ``latency_p95_ms`` is
    ``p95_latency_ms``); an unknown name is a ``ConfigError`` saying ``where`` it was used.

    The hint suggests the nearest valid name (``metric_names.suggest``) and lists them all.
    """
    spec = METRICS.get(canonical(name))
    if spec is not None:
        return spec
    judge = judge_name(name)
    if judge is not None:
        return judge_spec(judge)
    nearest = suggest(name, METRICS, n=1)
    suggestion = f"Did you mean {nearest[0]!r}? " if nearest else ""
    raise ConfigError(
        f"{where}: unknown metric {name!r}",
        hint=f"{suggestion}Known metrics: {', '.join(METRICS)}, and judge.NAME for a judge's "
        "mean score (`modelyard judges list`).",
        metric=name,
    )


def check_metric_names(names: Iterable[str], *, where: str = "metrics") -> list[str]:
    """``names`` in their canonical spelling without duplicates (first occurrence kept),
    each checked to be known."""
    return list(dict.fromkeys(metric_spec(name, where=where).name for name in names))
