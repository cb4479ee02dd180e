"""Tests of quality gates: parsing, verdicts against metrics and a champion, the table."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from rich.console import Console

from modelyard.errors import ConfigError, GateFailed
from modelyard.evaluation import (
    METRICS,
    ChampionGate,
    GateVerdict,
    ThresholdGate,
    evaluate_gates,
    gated_metrics,
    gates_passed,
    parse_gate,
    parse_gates,
    require_gates,
    verdicts_table,
)

# --- parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("exact_match >= 0.85", ThresholdGate("exact_match >= 0.85", "exact_match", ">=", 0.85)),
        ("p95_latency_ms<=500", ThresholdGate("p95_latency_ms<=500", "p95_latency_ms", "<=", 500)),
        ("  perplexity < 2e1 ", ThresholdGate("perplexity < 2e1", "perplexity", "<", 20.0)),
        ("accuracy == 1", ThresholdGate("accuracy == 1", "accuracy", "==", 1.0)),
        ("macro_f1 > .5", ThresholdGate("macro_f1 > .5", "macro_f1", ">", 0.5)),
        ("not_worse_than: champion", ChampionGate("not_worse_than: champion")),
        ("not_worse_than champion", ChampionGate("not_worse_than champion")),
        (
            "not_worse_than: champion tolerance 0.02",
            ChampionGate("not_worse_than: champion tolerance 0.02", (), 0.02),
        ),
        (
            "not_worse_than: champion on exact_match, token_f1",
            ChampionGate(
                "not_worse_than: champion on exact_match, token_f1", ("exact_match", "token_f1")
            ),
        ),
        (
            "not_worse_than: champion tolerance 0.01 on rouge_l",
            ChampionGate("not_worse_than: champion tolerance 0.01 on rouge_l", ("rouge_l",), 0.01),
        ),
    ],
)
def test_parse_gate_accepts_the_grammar(text: str, expected: object) -> None:
    assert parse_gate(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("exact_mach >= 0.8", "unknown metric 'exact_mach'"),
        ("exact_match => 0.8", "'=>' is not an operator"),
        ("exact_match = 0.8", "'=' is not an operator"),
        ("exact_match >= high", "'high' is not a number"),
        ("p95_latency_ms <= 500ms", "'500ms' is not a number"),
        ("exact_match >= nan", "finite number"),
        ("exact_match >=", "nothing after '>='"),
        ("exact_match 0.85", "not a comparison or a champion rule"),
        ("not_worse_than: baseline", "can only compare with 'champion'"),
        ("not_worse_than: champion tolerance -0.1", "must not be negative"),
        ("not_worse_than: champion tolerance 0.1 tolerance 0.2", "'tolerance' is given twice"),
        ("not_worse_than: champion on exact_mach", "unknown metric 'exact_mach'"),
        ("not_worse_than: champion on exact_match,", "empty metric name"),
        ("not_worse_than: champion please", "unexpected 'please'"),
    ],
)
def test_parse_gate_errors_name_the_gate_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_gate(text)
    assert f"gate {text.strip()!r}" in info.value.message
    assert problem in info.value.message
    assert info.value.hint
    assert "\n" not in info.value.one_line()


def test_unknown_gate_metric_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError) as info:
        parse_gate("exact_mach >= 0.8")
    assert "Did you mean 'exact_match'?" in info.value.hint
    with pytest.raises(ConfigError) as info:
        parse_gate("p95 <= 500")
    assert "p95_latency_ms" in info.value.hint  # no close match: every name is listed


def test_empty_gate_is_an_error() -> None:
    with pytest.raises(ConfigError, match="empty gate"):
        parse_gate("  ")


def test_parse_gates_accepts_what_yaml_makes_of_an_unquoted_champion_rule() -> None:
    gates = parse_gates(["exact_match >= 0.8", {"not_worse_than": "champion tolerance 0.02"}])
    assert gates == [
        ThresholdGate("exact_match >= 0.8", "exact_match", ">=", 0.8),
        ChampionGate("not_worse_than: champion tolerance 0.02", (), 0.02),
    ]
    with pytest.raises(ConfigError, match="2 keys"):
        parse_gates([{"exact_match": ">= 0.8", "token_f1": ">= 0.5"}])
    with pytest.raises(ConfigError, match="gate 'bogus >= 1'"):
        parse_gates(["exact_match >= 0.8", "bogus >= 1"])


def test_gated_metrics_lists_what_must_be_evaluated() -> None:
    gates = parse_gates(
        [
            "exact_match >= 0.8",
            "p95_latency_ms <= 500",
            "not_worse_than: champion on token_f1, exact_match",
            "not_worse_than: champion",
        ]
    )
    assert gated_metrics(gates) == ["exact_match", "p95_latency_ms", "token_f1"]


def test_gates_serialise_to_json() -> None:
    gates = parse_gates(["exact_match >= 0.8", "not_worse_than: champion on rouge_l"])
    assert json.loads(json.dumps([g.to_dict() for g in gates])) == [
        {"kind": "threshold", "text": "exact_match >= 0.8", "metric": "exact_match", "op": ">=",
         "value": 0.8},
        {"kind": "not_worse_than", "text": "not_worse_than: champion on rouge_l",
         "metrics": ["rouge_l"], "tolerance": None},
    ]  # fmt: skip


# --- thresholds -------------------------------------------------------------------


def _one(text: str, metrics: dict[str, float]) -> GateVerdict:
    (verdict,) = evaluate_gates(parse_gates([text]), metrics)
    return verdict


def test_threshold_verdicts_say_by_how_much_they_pass_or_fail() -> None:
    passed = _one("exact_match >= 0.85", {"exact_match": 0.9})
    assert (passed.passed, passed.metric, passed.observed, passed.threshold) == (
        True,
        "exact_match",
        0.9,
        0.85,
    )
    assert passed.margin == pytest.approx(0.05)
    failed = _one("p95_latency_ms <= 500", {"p95_latency_ms": 620.0})
    assert not failed.passed
    assert failed.margin == pytest.approx(-120.0)
    assert failed.reason == "p95_latency_ms 620 is not <= 500"


@pytest.mark.parametrize(
    ("text", "value", "passed"),
    [
        ("exact_match >= 0.85", 0.85, True),
        ("exact_match > 0.85", 0.85, False),
        ("perplexity < 10", 9.99, True),
        ("perplexity < 10", 10.0, False),
        ("accuracy == 1", 1.0, True),
        ("accuracy == 1", 0.99, False),
        ("exact_match >= 0.3", 0.1 + 0.2, True),  # 0.30000000000000004 vs 0.3: a float tie
        ("perplexity <= 20", math.inf, False),
        ("exact_match >= 0", math.nan, False),
    ],
)
def test_threshold_operators(text: str, value: float, passed: bool) -> None:
    metric = text.split()[0]
    assert _one(text, {metric: value}).passed is passed


def test_a_gate_on_an_unmeasured_metric_fails() -> None:
    verdict = _one("rouge_l >= 0.5", {"exact_match": 1.0})
    assert not verdict.passed
    assert verdict.reason == "rouge_l was not measured"


# --- champion ---------------------------------------------------------------------


def test_no_champion_passes_with_a_reason() -> None:
    gates = parse_gates(["not_worse_than: champion"])
    (verdict,) = evaluate_gates(gates, {"exact_match": 0.1}, None)
    assert verdict.passed
    assert verdict.reason == "no champion to compare with"
    assert verdict.metric is None


def test_champion_comparison_defaults_to_quality_and_gated_metrics() -> None:
    metrics = {"exact_match": 0.80, "token_f1": 0.90, "p50_latency_ms": 90.0, "p95_latency_ms": 400}
    champion = {
        "exact_match": 0.85,
        "token_f1": 0.85,
        "p50_latency_ms": 50.0,
        "p95_latency_ms": 300,
    }
    only_champion = evaluate_gates(parse_gates(["not_worse_than: champion"]), metrics, champion)
    assert [(v.metric, v.passed) for v in only_champion] == [
        ("exact_match", False),
        ("token_f1", True),
    ]
    worse = only_champion[0]
    assert (worse.observed, worse.champion, worse.threshold) == (0.80, 0.85, 0.85)
    assert worse.margin == pytest.approx(-0.05)
    assert not gates_passed(only_champion)

    with_latency = evaluate_gates(
        parse_gates(["p95_latency_ms <= 500", "not_worse_than: champion"]), metrics, champion
    )
    assert [(v.metric, v.passed) for v in with_latency] == [
        ("p95_latency_ms", True),
        ("exact_match", False),
        ("token_f1", True),
        ("p95_latency_ms", False),  # gated, so compared: 400 ms is worse than 300 ms
    ]


def test_tolerance_is_absolute_for_scores_and_relative_for_the_rest() -> None:
    metrics = {"exact_match": 0.88, "p95_latency_ms": 320.0, "perplexity": 12.0}
    champion = {"exact_match": 0.90, "p95_latency_ms": 300.0, "perplexity": 10.0}
    gates = parse_gates(["not_worse_than: champion on exact_match, p95_latency_ms, perplexity"])
    verdicts = evaluate_gates(gates, metrics, champion, tolerance=0.1)
    by_metric = {v.metric: v for v in verdicts}
    # 0.88 >= 0.90 - 0.1 (0.02 points of margin); 320 <= 300 * 1.1 = 330; 12 > 10 * 1.1 = 11
    assert by_metric["exact_match"].passed
    assert by_metric["exact_match"].threshold == pytest.approx(0.80)
    assert by_metric["p95_latency_ms"].passed
    assert by_metric["p95_latency_ms"].threshold == pytest.approx(330.0)
    assert by_metric["p95_latency_ms"].margin == pytest.approx(10.0)
    assert not by_metric["perplexity"].passed
    assert by_metric["perplexity"].margin == pytest.approx(-1.0)
    assert "tolerance 10% of it" in by_metric["perplexity"].reason


def test_gate_tolerance_wins_and_float_ties_pass() -> None:
    metrics, champion = {"exact_match": 0.88}, {"exact_match": 0.90}
    strict = parse_gates(["not_worse_than: champion"])
    assert not gates_passed(evaluate_gates(strict, metrics, champion, tolerance=0.0))
    assert gates_passed(evaluate_gates(strict, metrics, champion, tolerance=0.02))  # 0.9-0.02
    own = parse_gates(["not_worse_than: champion tolerance 0.01"])
    assert not gates_passed(evaluate_gates(own, metrics, champion, tolerance=0.5))


def test_champion_without_a_metric_passes_that_metric_with_a_reason() -> None:
    gates = parse_gates(["not_worse_than: champion on rouge_l"])
    (verdict,) = evaluate_gates(gates, {"rouge_l": 0.3}, {"exact_match": 1.0})
    assert verdict.passed
    assert verdict.reason == "the champion has no rouge_l to compare with"
    (missing,) = evaluate_gates(gates, {"exact_match": 0.3}, {"rouge_l": 0.5})
    assert not missing.passed  # named explicitly but not measured


def test_bad_tolerance_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tolerance"):
        evaluate_gates([], {}, None, tolerance=-0.1)


def test_verdicts_are_json_even_with_an_infinite_value() -> None:
    gates = parse_gates(["perplexity <= 20", "not_worse_than: champion"])
    verdicts = evaluate_gates(gates, {"perplexity": math.inf}, {"perplexity": 10.0})
    data = json.loads(json.dumps([v.to_dict() for v in verdicts], allow_nan=False))
    assert data[0]["observed"] is None and data[0]["passed"] is False
    assert data[1]["champion"] == 10.0


def test_gates_passed_and_require_gates() -> None:
    assert gates_passed([])
    require_gates([])
    gates = parse_gates(["exact_match >= 0.85", "token_f1 >= 0.5"])
    verdicts = evaluate_gates(gates, {"exact_match": 0.8, "token_f1": 0.7})
    with pytest.raises(GateFailed) as info:
        require_gates(verdicts, version="support-bot/3")
    assert info.value.code == "gate_failed"
    assert info.value.message == (
        "1 of 2 gate checks failed: exact_match >= 0.85 (exact_match 0.8 is not >= 0.85)"
    )
    assert info.value.context["version"] == "support-bot/3"
    assert [v["gate"] for v in info.value.context["failed"]] == ["exact_match >= 0.85"]


# --- table ------------------------------------------------------------------------


def test_verdicts_table_shows_pass_in_green_and_fail_in_red() -> None:
    gates = parse_gates(
        ["exact_match >= 0.85", "p95_latency_ms <= 500", "not_worse_than: champion"]
    )
    verdicts = evaluate_gates(gates, {"exact_match": 0.9, "p95_latency_ms": 620.0}, None)
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="standard", width=160).print(
        verdicts_table(verdicts)
    )
    text = out.getvalue()
    assert re.search(r"\x1b\[1;32m *PASS", text)  # bold green
    assert re.search(r"\x1b\[1;31m *FAIL", text)  # bold red
    plain = io.StringIO()
    Console(file=plain, width=160, color_system=None).print(verdicts_table(verdicts))
    lines = plain.getvalue().splitlines()
    row = next(line for line in lines if "p95_latency_ms <= 500" in line)
    assert "620" in row and "500" in row and "-120" in row and "FAIL" in row
    assert any("no champion to compare with" in line for line in lines)
    champion_row = next(line for line in lines if "not_worse_than: champion" in line)
    assert "—" in champion_row and "PASS" in champion_row


# --- docs -------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def test_the_documented_verdict_and_python_example_are_what_the_code_gives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = dict(re.findall(r"```(json|python)\n(.*?)```", text, re.S))
    documented = json.loads(blocks["json"])
    gates = parse_gates([documented["gate"]])
    (verdict,) = evaluate_gates(
        gates, {"exact_match": documented["observed"]}, {"exact_match": documented["champion"]}
    )
    assert verdict.to_dict() == documented
    exec(compile(blocks["python"], str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" in out and "not_worse_than:" in out
    cells = re.findall(r"^\| (`[^|]+`) \| (?:higher|lower) \|", text, re.M)
    documented_metrics = [name for cell in cells for name in re.findall(r"`([^`]+)`", cell)]
    assert sorted(documented_metrics) == sorted(METRICS)
