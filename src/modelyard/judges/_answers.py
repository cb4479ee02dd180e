"""Judging a model's answers to data rows: what each row gives the judge to compare with.

``question``: an alpaca row's instruction and input, a classification row's text,
a chat row's last user message. ``reference``: the row's expected answer (as the
evaluation rendered it). ``context``: the row's ``context`` field, when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelyard.errors import ConfigError, JudgeError
from modelyard.judges._rubrics import JudgeInput, required_fields
from modelyard.judges._run import JudgementCache, JudgeRun, api_key, failed_hint, run_judge
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


def _context_of(row: Mapping[str, Any]) -> str | None:
    """The row's ``context`` text; None when it has none, or an empty one (a CSV's empty
    cell), which a rubric that needs a context must not be shown as the context."""
    context = row.get("context")
    return context if isinstance(context, str) and context.strip() else None


def answer_inputs(
    rows: Sequence[Mapping[str, Any]], references: Sequence[str], answers: Sequence[str]
) -> list[JudgeInput]:
    """One judge input per row: its answer, question, reference and context."""
    return [
        JudgeInput(
            answer=answer,
            question=question_of(row),
            reference=reference,
            context=_context_of(row),
        )
        for row, reference, answer in zip(rows, references, answers, strict=True)
    ]


def split_metrics(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the metrics the model's evaluation computes, the judges named as ``judge.NAME``)."""
    judges = [n for name in names if (n := judge_name(name)) is not None]
    return [name for name in names if judge_name(name) is None], judges


PROMPTLESS_FORMATS = ("text",)
"""Formats whose rows show the model no prompt: there is no answer to a question to judge."""

_WHERE_FROM = {
    "question": "A row's question is an alpaca row's instruction (and input), a "
    "classification row's text, a chat row's last user message.",
    "context": "A row's context is its 'context' field (text).",
}


def check_judged_rows(
    judges: Sequence[JudgeDef],
    rows: Sequence[Mapping[str, Any]],
    data_format: str,
    *,
    where: str = "row",
    numbers: Sequence[int] | None = None,
) -> None:
    """A ConfigError, before any answer is generated, when a row of ``rows`` (``data_format``
    rows, as evaluation renders them) lacks what a judge's rubric needs; it names the
    judge's metric, the row (``where`` and its number: ``numbers[i]`` when given, the row's
    in its file, else its 1-based place in ``rows``) and the missing field."""
    named = list(numbers) if numbers is not None else list(range(1, len(rows) + 1))
    for judge in judges:
        if rows and data_format in PROMPTLESS_FORMATS:
            raise ConfigError(
                f"{where} {named[0]}: {judge.metric} needs the model's answer to a prompt, and a "
                f"{data_format!r} row shows the model none",
                hint="Judge rows that ask something (alpaca, chat or classification rows; "
                f"--format), or score a file of answers with `modelyard judges score "
                f"{judge.name} --data FILE`.",
                metric=judge.metric,
                field="format",
            )
        needs = required_fields(judge.rubric, judge.prompt)
        lacking: list[tuple[int, list[str]]] = []
        for number, row in zip(named, rows, strict=True):
            # what answer_inputs gives the judge; the answer and the reference always exist
            item = JudgeInput("", question_of(row), reference="", context=_context_of(row))
            missing = [field for field in needs if item.get(field) is None]
            if missing:
                lacking.append((number, missing))
        if not lacking:
            continue
        number, missing = lacking[0]
        fields = " and a ".join(missing)
        others = f" ({len(lacking)} of {len(rows)} rows have none)" if len(lacking) > 1 else ""
        raise ConfigError(
            f"{where} {number}: {judge.metric} ({judge.rubric} rubric) needs a {fields}, and "
            f"the row has none{others}",
            hint=" ".join(_WHERE_FROM[f] for f in missing if f in _WHERE_FROM)
            + f" Give every row {' and '.join('its ' + f for f in missing)}, or use a judge "
            "whose rubric does not need it.",
            metric=judge.metric,
            row=number,
            field=missing[0],
        )


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

    def check_rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        data_format: str,
        *,
        where: str = "row",
        numbers: Sequence[int] | None = None,
    ) -> None:
        """Refuse, naming the row and the field, rows that lack what a judge needs
        (``check_judged_rows``): called before any answer is generated."""
        check_judged_rows(self.judges, rows, data_format, where=where, numbers=numbers)

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
                    hint=failed_hint(run.judge.name),
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
