"""Guards on judges: a judge's mean score of the canary's answers against the baseline's.

A guard such as ``judge.quality >= baseline - 0.2`` or ``judge.quality >= 3.5`` names a
judge defined in the store (``modelyard judges add``). Off the request path, each tick of
the controller takes the step window's live records of the canary (since the step
started) and of the baseline (the same window as the other guards), keeps those a judge
can read (answered ok, not a shadow nor a fallback, prompt and response kept as text: a
tenant that keeps only hashes is skipped), picks up to the guard's sample of records per side
(``judge.quality >= 3.5 (sample 100)``; ``DEFAULT_SAMPLE`` when it says none) that the judge
has not seen yet, at random from across the window, and judges them with
``judges.judge_records`` (kept in the store by record, so each record is judged once across
ticks). The store does the picking and the counting (``Store.unjudged_records``,
``Store.judged_counts``): a busy endpoint's window is never read out record by record.

The judge sees the record's question (its prompt parsed back into the row's fields with
the version's template, ``modelyard.data.parse_prompt``: an alpaca prompt's instruction and
input; the prompt as is when it does not parse) and the response. Live traffic has no
reference answer and no context, so a judge whose rubric needs one (``correctness``,
``faithfulness``, a custom prompt with ``{reference}`` or ``{context}``) is refused when
the rollout starts. A record the judge gave no score (an error, an answer without a
score) is counted as failed, never asked again, and never a breach on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def sides(self) -> tuple[tuple[datetime, tuple[int, ...]], ...]:
        """(since, version ids) of the canary's side, then of the baseline's."""
        return ((self.canary_since, self.canary_ids), (self.baseline_since, self.baseline_ids))


def judge_samples(guards: Sequence[str]) -> dict[str, int]:
    """``{judge: records per side it judges per job}``, in the guards' order: the guard's
    ``(sample N)``, else ``DEFAULT_SAMPLE``; the largest where guards on one judge differ."""
    out: dict[str, int] = {}
    for guard in judge_guards(guards):
        assert guard.judge is not None
        sample = DEFAULT_SAMPLE if guard.sample is None else guard.sample
        out[guard.judge] = max(sample, out.get(guard.judge, 0))
    return out


def judged_windows(
    store: Store, guards: Sequence[str], window: StepWindow
) -> dict[str, JudgedWindow]:
    """What each judge the guards name has made of the window so far (reads only: the
    store counts the records, and reads the scores, never the window's record ids)."""
    out = {}
    for name in judge_samples(guards):
        canary, base = (
            JudgedSide(*store.judged_counts(name, window.endpoint, since, ids))
            for since, ids in window.sides()
        )
        out[name] = JudgedWindow(name, canary, base)
    return out


def judge_window(store: Store, guards: Sequence[str], window: StepWindow) -> int:
    """Judge up to each guard's sample of records per side that its judge has never been
    asked about, drawn at random from across the window by the store; returns how many
    records were sent to judges."""
    sent = 0
    for name, sample in judge_samples(guards).items():
        judge: JudgeDef = store.get_judge(name)
        picked = [
            record_id
            for since, ids in window.sides()
            for record_id in store.unjudged_records(name, window.endpoint, since, ids, sample)
        ]
        if picked:
            sent += len(judge_records(store, judge, picked).judgements)
    return sent
