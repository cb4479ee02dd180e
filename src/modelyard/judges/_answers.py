"""Judging a model's answers to data rows: what each row gives the judge to compare with.

``question``: an alpaca row's instruction and input, a classification row's text,
a chat row's last user message. ``reference``: the row's expected answer (as the
evaluation rendered it). ``context``: the row's ``context`` field, when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelyard.errors import ConfigError, JudgeError
from modelyard.judges._rubrics import JudgeInput
from modelyard.judges._run import JudgementCache, JudgeRun, api_key, run_judge
from modelyard.metric_names import judge_name
from modelyard.store import JudgeDef


def question_of(row: Mapping[str, Any]) -> str | None:
    """What the row asked, in the words of the row (not the prompt template's)."""
    if isinstance(row.get("instruction"), str):
        extra = row.get("input")
        asked = str(row["instruction"])
        return asked + (f"\n\n{extra}" if isinstance(extra, str) and extra else "")
    if isinstance(row.get("text"), str) and "label" in row:
        return str(row["text"])
    messages = row.get("messages")
    if isinstance(messages, list):
        users = [
            m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"
        ]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


def answer_inputs(
    rows: Sequence[Mapping[str, Any]], references: Sequence[str], answers: Sequence[str]
) -> list[JudgeInput]:
    """One judge input per row: its answer, question, reference and context."""
    return [
        JudgeInput(
            answer=answer,
            question=question_of(row),
            reference=reference,
            context=row["context"] if isinstance(row.get("context"), str) else None,
        )
        for row, reference, answer in zip(rows, references, answers, strict=True)
    ]


def split_metrics(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the metrics the model's evaluation computes, the judges named as ``judge.NAME``)."""
    judges = [n for name in names if (n := judge_name(name)) is not None]
    return [name for name in names if judge_name(name) is None], judges


MIN_SCORED_SHARE = 0.9
"""The share of answers a judge must score for its mean to be a metric: a mean of the few
it could score (the rest timed out, say) is not the model's, and must not pass a gate."""


class JudgeSource:
    """The judges an evaluation names, looked up (and checked) before any work starts."""

    def __init__(self, store: Any, names: Sequence[str]) -> None:
        self.store = store
        self.judges: list[JudgeDef] = [store.get_judge(name) for name in names]
        for judge in self.judges:
            api_key(judge)  # an unset key variable fails now, not after the answers

    def score(
        self,
        rows: Sequence[Mapping[str, Any]],
        references: Sequence[str],
        answers: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, JudgeRun]:
        items = answer_inputs(rows, references, answers)
        cache: JudgementCache = self.store
        runs = {
            judge.metric: run_judge(judge, items, cache=cache, progress=progress)
            for judge in self.judges
        }
        for run in runs.values():
            if run.scored < MIN_SCORED_SHARE * len(items):
                first = next((j.error for j in run.judgements if j.error), "no answer")
                raise JudgeError(
                    f"judge {run.judge.name!r} scored only {run.scored} of {len(items)} answers "
                    f"(an evaluation needs {MIN_SCORED_SHARE:.0%}): {first}",
                    judge=run.judge.name,
                )
        return runs


def judge_source(store: Any, names: Sequence[str], *, where: str) -> JudgeSource | None:
    """The judges ``names`` ask for (None when none), each checked to exist."""
    _, judges = split_metrics(names)
    if not judges:
        return None
    if store is None:
        raise ConfigError(
            f"{where}: judge metrics need the store that defines the judges",
            field="metrics",
        )
    return JudgeSource(store, judges)
