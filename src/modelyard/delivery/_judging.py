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
ticks). The store does the picking and the counting (``Store.unjudged_records_many``,
``Store.judged_counts_many``): a busy endpoint's window is never read out record by record,
and the controller's tick reads (and its judging job picks) every rollout's windows with
the statements of one.

The judge sees the record's question (its prompt parsed back into the row's fields with
the version's template, ``modelyard.data.parse_prompt``: an alpaca prompt's instruction and
input; the prompt as is when it does not parse) and the response. Live traffic has no
reference answer and no context, so a judge whose rubric needs one (``correctness``,
``faithfulness``, a custom prompt with ``{reference}`` or ``{context}``) is refused when
the rollout starts. A record the judge gave no score (an error, an answer without a
score) is counted as failed, never asked again, and never a breach on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from modelyard.delivery._guards import Guard, parse_guard
from modelyard.errors import ConfigError, NotFound
from modelyard.judges import check_live, judge_records
from modelyard.store import Store

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


Asks = Mapping[str, tuple[Sequence[str], StepWindow]]
"""``{key (a rollout id): (its guards, its step window)}``: what ``judged_windows_many`` and
``judge_windows`` read or judge for many rollouts at once."""


def _sides(name: str, window: StepWindow) -> list[tuple[str, str, datetime, tuple[int, ...]]]:
    """The judge's windows of a step (judge, endpoint, since, version ids): the canary's
    side, then the baseline's."""
    return [(name, window.endpoint, since, ids) for since, ids in window.sides()]


def judged_windows(
    store: Store, guards: Sequence[str], window: StepWindow
) -> dict[str, JudgedWindow]:
    """What each judge the guards name has made of the window so far (``judged_windows_many``
    of one window)."""
    got = judged_windows_many(store, {"": (guards, window)})[""]
    if isinstance(got, Exception):
        raise got
    return got


def judged_windows_many(store: Store, asks: Asks) -> dict[str, dict[str, JudgedWindow] | Exception]:
    """What each judge the guards name has made of its window so far, by key, or the error
    the key's own part met (a guard that does not parse); the others have theirs. Reads
    only, every key's at once (``Store.judged_counts_many``: two statements however many
    windows): the store counts the records and reads the scores, never the record ids."""
    out: dict[str, dict[str, JudgedWindow] | Exception] = {}
    wanted: dict[str, list[str]] = {}
    for key, (guards, _) in asks.items():
        try:
            wanted[key] = list(judge_samples(guards))
        except Exception as exc:  # this key's: the others are still read
            out[key] = exc
    windows = [side for key, names in wanted.items() for name in names
               for side in _sides(name, asks[key][1])]  # fmt: skip
    try:
        counts = iter(store.judged_counts_many(windows))
    except Exception as exc:  # the read of them all: each key meets it
        return out | dict.fromkeys(wanted, exc)
    for key, names in wanted.items():
        out[key] = {
            name: JudgedWindow(name, JudgedSide(*next(counts)), JudgedSide(*next(counts)))
            for name in names
        }
    return out


def judge_window(store: Store, guards: Sequence[str], window: StepWindow) -> int:
    """``judge_windows`` of one window: how many records were sent to judges."""
    got = judge_windows(store, {"": (guards, window)})[""]
    if isinstance(got, Exception):
        raise got
    return got


def judge_windows(store: Store, asks: Asks) -> dict[str, int | Exception]:
    """Judge, for each key, up to each guard's sample of records per side that its judge has
    never been asked about, drawn at random from across the window by the store; returns
    by key how many of its records were sent to judges, or the error its own part met (a
    guard that does not parse, a judge removed, a judge's run that failed), the others'
    records judged all the same. The judges are read in one statement and the records of
    every key picked in another (``Store.unjudged_records_many``); then each judge is run
    over each key's records."""
    out: dict[str, int | Exception] = {}
    samples: dict[str, dict[str, int]] = {}
    for key, (guards, _) in asks.items():
        try:
            samples[key] = judge_samples(guards)
        except Exception as exc:  # this key's: the others are still judged
            out[key] = exc
    judges = {j.name: j for j in store.list_judges()} if any(samples.values()) else {}
    picks: list[tuple[str, str, tuple[str, str, datetime, tuple[int, ...], int]]] = []
    for key, wanted in samples.items():
        out[key] = 0
        for name, sample in wanted.items():
            if name not in judges:
                out[key] = NotFound(f"no judge named {name!r}", judge=name)
                continue
            picks.extend((key, name, (*side, sample)) for side in _sides(name, asks[key][1]))
    picked = store.unjudged_records_many([pick for _, _, pick in picks])
    by_key: dict[tuple[str, str], list[str]] = {}
    for (key, name, _), ids in zip(picks, picked, strict=True):
        by_key.setdefault((key, name), []).extend(ids)
    for (key, name), ids in by_key.items():
        count = out[key]
        if not ids or isinstance(count, Exception):
            continue
        try:
            out[key] = count + len(judge_records(store, judges[name], ids).judgements)
        except Exception as exc:  # this key's: the others are still judged
            out[key] = exc
    return out
