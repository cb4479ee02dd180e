"""One metric vocabulary: guards, gates and alert rules name latency the same way."""

from __future__ import annotations

import difflib

import pytest

from modelyard.delivery import METRICS as GUARD_METRICS
from modelyard.delivery import parse_guard
from modelyard.errors import ConfigError
from modelyard.evaluation import METRICS as EVAL_METRICS
from modelyard.evaluation import parse_gates
from modelyard.metric_names import ALIASES, TRAFFIC_METRICS, canonical, suggest
from modelyard.monitoring import METRICS as ALERT_METRICS
from modelyard.monitoring import AlertRules


def test_every_user_facing_metric_is_spelled_one_way() -> None:
    assert set(GUARD_METRICS) <= set(TRAFFIC_METRICS)
    assert set(TRAFFIC_METRICS) <= set(ALERT_METRICS)
    shared = {m for m in EVAL_METRICS if m.endswith("_latency_ms")}
    assert shared == {"p50_latency_ms", "p95_latency_ms"} and shared <= set(TRAFFIC_METRICS)
    assert not set(ALIASES) & (set(ALERT_METRICS) | set(EVAL_METRICS) | set(GUARD_METRICS))
    assert set(ALIASES.values()) <= set(TRAFFIC_METRICS)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("latency_p50_ms", "p50_latency_ms"),
        ("latency_p95_ms", "p95_latency_ms"),
        ("latency_p99_ms", "p99_latency_ms"),
        ("ttft_p95_ms", "p95_ttft_ms"),
        ("feedback_mean", "feedback_score"),
    ],
)
def test_the_older_spellings_are_still_read_as_the_canonical_name(old: str, new: str) -> None:
    assert canonical(old) == new
    rule = {"name": "r", "metric": old, "threshold": 1}
    assert AlertRules.parse({"rules": [rule]}).rules[0].metric == new
    assert parse_guard(f"{old} <= 1.2 * baseline").metric == new


def test_gates_read_the_older_latency_spelling() -> None:
    gate, champion = parse_gates(
        ["latency_p95_ms <= 500", "not_worse_than: champion on latency_p50_ms, p50_latency_ms"]
    )
    assert gate.metric == "p95_latency_ms"
    assert getattr(champion, "metrics", None) == ("p50_latency_ms",)


@pytest.mark.parametrize("typo", ["latency_p95", "p95_latency", "latency-p95", "latencyp95"])
def test_a_p95_typo_suggests_p95_before_p99(typo: str) -> None:
    ranked = suggest(typo, TRAFFIC_METRICS)
    assert ranked[0] == "p95_latency_ms"
    assert ranked.index("p95_latency_ms") < ranked.index("p99_latency_ms")


def test_plain_difflib_would_suggest_p99_first() -> None:
    """Why ``suggest`` exists: the two names differ by one letter, and difflib picks p99."""
    assert difflib.get_close_matches("latency_p95", list(TRAFFIC_METRICS), n=1) == [
        "p99_latency_ms"
    ]


def test_each_place_names_the_p95_metric_for_a_typo() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'latency_p95' \(did you mean "
                       r"'p95_latency_ms'\?\)"):  # fmt: skip
        parse_guard("latency_p95 <= 100")
    with pytest.raises(ConfigError, match=r"rules\.0\.metric: unknown metric 'latency_p95' "
                       r"\(did you mean 'p95_latency_ms'\?\)"):  # fmt: skip
        AlertRules.parse({"rules": [{"name": "r", "metric": "latency_p95", "threshold": 1}]})
    with pytest.raises(ConfigError) as caught:
        parse_gates(["latency_p95 <= 500"])
    assert "Did you mean 'p95_latency_ms'?" in caught.value.hint
