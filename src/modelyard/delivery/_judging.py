"""Guards on judges: a judge's mean score of the canary's answers against the baseline's.

A guard such as ``judge.quality >= baseline - 0.2`` or ``judge.quality >= 3.5`` names a
judge defined in the store (``modelyard judges add``). Off the request path, each tick of
the controller takes the step window's live records of the canary (since the step
started) and of the baseline (the same window as the other guards), keeps those a judge
can read (answered ok, not a shadow nor a fallback, prompt and response kept as text: a
tenant that keeps only hashes is skipped), picks up to ``sample`` records per side that
the judge has not seen yet, and judges them with ``judges.judge_records`` (kept in the store by
record, so each record is judged once across ticks).

The judge sees the record's question (its prompt parsed back into the row's fields with
the version's template, ``modelyard.data.parse_prompt``: an alpaca prompt's instruction and
input; the prompt as is when it does not parse) and the response. Live traffic has no
reference answer and no context, so a judge whose rubric needs one (``correctness``,
``faithfulness``, a custom prompt with ``{reference}`` or ``{context}``) is refused when
the rollout starts. A record the judge gave no score (an error, an answer without a
score) is counted as failed, never asked again, and never a breach on its own.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from modelyard.delivery._guards import Guard, parse_guard
from modelyard.errors import ConfigError, NotFound
from modelyard.judges import check_live, judge_records
from modelyard.store import JudgeDef, Store

DEFAULT_SAMPLE = 50


@dataclass(frozen=True)
class JudgedSide:
    """One side's records in the window, as one judge has seen them."""

    scores: tuple[float, ...] = ()
    failed: int = 0
    unjudged: int = 0  # records it can read and has not been asked about yet


@dataclass(frozen=True)
class JudgedWindow:
    """A judge's view of a step: the canary's side and the baseline's."""

    judge: str
    canary: JudgedSide
    baseline: JudgedSide


def judge_guards(guards: Sequence[str]) -> list[Guard]:
    """The guards that name a judge (``judge.NAME``)."""
    return [g for g in (parse_guard(text) for text in guards) if g.judge is not None]


def check_judge_guards(store: Store, guards: Sequence[str]) -> None:
    """A ConfigError for a guard naming a judge that does not exist, or one whose rubric
    needs what live traffic does not have (a reference answer, a context)."""
    for guard in judge_guards(guards):
        assert guard.judge is not None
        try:
            judge = store.get_judge(guard.judge)
        except NotFound:
            raise ConfigError(
                f"guard {guard.text!r} names judge {guard.judge!r}, which does not exist",
                hint="Define it with `modelyard judges add`; `modelyard judges list` shows them.",
                field="guard",
            ) from None
        check_live(judge, f"guard {guard.text!r}")


@dataclass(frozen=True)
class StepWindow:
    endpoint: str
    canary_since: datetime
    canary_ids: tuple[int, ...]
    baseline_since: datetime
    baseline_ids: tuple[int, ...]


def _records(store: Store, w: StepWindow) -> tuple[list[str], list[str]]:
    canary = store.judgeable_records(w.endpoint, w.canary_since, w.canary_ids)
    base = store.judgeable_records(w.endpoint, w.baseline_since, w.baseline_ids)
    return [i for v in w.canary_ids for i in canary[v]], [
        i for v in w.baseline_ids for i in base[v]
    ]


def judged_windows(
    store: Store, guards: Sequence[str], window: StepWindow
) -> dict[str, JudgedWindow]:
    """What each judge the guards name has made of the window so far (reads only)."""
    names = list(dict.fromkeys(g.judge for g in judge_guards(guards) if g.judge is not None))
    if not names:
        return {}
    canary, base = _records(store, window)
    out = {}
    for name in names:
        scores, failed = store.judgement_states(name, [*canary, *base])

        def side(ids: list[str], scores: Mapping[str, float] = scores,
                 failed: set[str] = failed) -> JudgedSide:  # fmt: skip
            return JudgedSide(
                tuple(scores[i] for i in ids if i in scores),
                sum(1 for i in ids if i in failed),
                sum(1 for i in ids if i not in scores and i not in failed),
            )

        out[name] = JudgedWindow(name, side(canary), side(base))
    return out


def judge_window(
    store: Store,
    guards: Sequence[str],
    window: StepWindow,
    *,
    sample: int = DEFAULT_SAMPLE,
    rng: random.Random | None = None,
) -> int:
    """Judge up to ``sample`` records per side that each named judge has not seen; returns
    how many records were sent to judges."""
    names = list(dict.fromkeys(g.judge for g in judge_guards(guards) if g.judge is not None))
    if not names or sample <= 0:
        return 0
    rng = rng or random.Random()
    canary, base = _records(store, window)
    sent = 0
    for name in names:
        judge: JudgeDef = store.get_judge(name)
        scores, failed = store.judgement_states(name, [*canary, *base])
        picked: list[str] = []
        for ids in (canary, base):
            todo = [i for i in ids if i not in scores and i not in failed]
            picked += rng.sample(todo, sample) if len(todo) > sample else todo
        if not picked:
            continue
        sent += len(judge_records(store, judge, picked).judgements)
    return sent
