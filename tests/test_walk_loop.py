"""What a user closing the loop (docs/closing-the-loop.md, judges.md, batch.md) relies on,
found by walking the docs: each test failed before its fix."""

from __future__ import annotations

from modelyard.evaluation import evaluate_gates, gates_passed, parse_gates


def test_a_champion_gate_on_a_judge_compares_the_judges_means() -> None:
    """`not_worse_than: champion on judge.quality tolerance 0.2`, as judges.md and
    closing-the-loop.md write it in a fine-tune config, was a KeyError traceback after
    training and scoring both versions: a judge's metric is not in METRICS."""
    gates = parse_gates(["not_worse_than: champion on judge.quality tolerance 0.2"])
    held = evaluate_gates(gates, {"judge.quality": 3.9}, {"judge.quality": 4.0})
    assert gates_passed(held)
    assert [(v.metric, v.threshold, v.champion) for v in held] == [("judge.quality", 3.8, 4.0)]
    assert "judge.quality 3.9 vs champion 4" in held[0].reason
    dropped = evaluate_gates(gates, {"judge.quality": 3.5}, {"judge.quality": 4.0})
    assert not gates_passed(dropped)
    assert dropped[0].margin is not None and dropped[0].margin < 0
