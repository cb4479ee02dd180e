"""What judges made of rollout step windows: the reads of rollout guards on judges.

A guard on a judge (``judge.quality >= 3.5``) reads, for each side of a step (the canary's
records since the step started, the baseline versions' since before the rollout), how many
records a judge can read (``_judges.judgeable_conditions``) the judge's current revision was asked
about, and the newest score it gave each; its judging job picks, at random from the whole
window, records the judge was never asked about. The database does the counting and the
picking, so a busy endpoint's window is never read out.

The controller's tick does this for every active rollout's guards together:
``judged_counts_many`` and ``unjudged_records_many`` take any number of windows (a judge's
side of a step each) and read them with the statements of one, a select per window tagged
with its place and joined by ``UNION ALL`` (``JUDGE_WINDOWS_PER_QUERY`` to a statement).
``judged_counts`` and ``unjudged_records`` are the same for one window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, case, func, literal_column, select, union_all
from sqlalchemy.orm import Session

from modelyard.store._core import StoreCore
from modelyard.store._judges import (
    JudgementRow,
    asked_exists,
    current_revision,
    judgeable_conditions,
    readable_conditions,
)
from modelyard.store._schema import InferenceRecordRow

JUDGE_WINDOWS_PER_QUERY = 100
"""Windows read by one statement (a ``UNION ALL`` of a select each: SQLite takes 500 at
most); a tick over 20 rollouts with a judge guard each reads their 40 sides with one."""


@dataclass(frozen=True)
class JudgeWindow:
    """One judge's side of a step: ``endpoint``'s records since ``since`` of ``version_ids``."""

    judge: str
    endpoint: str
    since: datetime
    version_ids: tuple[int, ...]


Window = tuple[str, str, datetime, Sequence[int]]
"""(judge, endpoint, since, version ids): a judge's side of a step (``JudgeWindow``)."""
Pick = tuple[str, str, datetime, Sequence[int], int]
"""(judge, endpoint, since, version ids, how many records at most) to pick."""
JudgedCounts = tuple[tuple[float, ...], int, int]
"""(the newest score of each record scored, by judgement; records asked about and given no
score; records never asked about): ``judged_counts``."""


def _tag(place: int) -> Any:
    """A window's place, written into the statement (a bound parameter in a select list of
    a union has no type on PostgreSQL)."""
    return literal_column(str(int(place))).label("window")


class _Judges:
    """The conditions on judges' judgements and on the records a judge can read, built once
    per read however many windows name them (built per window, they took a tick over 20
    rollouts more time in Python than the database took to answer)."""

    def __init__(self) -> None:
        self._asked: dict[str, Any] = {}
        self._current: dict[str, Any] = {}
        self.readable = readable_conditions()  # and those on the records, the same for every window

    def asked(self, judge: str) -> Any:
        """``asked_exists``: whether its current revision was asked about the record."""
        if judge not in self._asked:
            self._asked[judge] = asked_exists(judge)
        return self._asked[judge]

    def current(self, judge: str) -> Any:
        """``current_revision``: a judgement of its current revision."""
        if judge not in self._current:
            self._current[judge] = current_revision(judge)
        return self._current[judge]


def _window(w: JudgeWindow, judges: _Judges) -> list[Any]:
    """The conditions on the records of the window a judge can read."""
    return judgeable_conditions(w.endpoint, w.since, list(w.version_ids), judges.readable)


def _counts_query(place: int, w: JudgeWindow, window: list[Any], judges: _Judges) -> Any:
    """How many records of the window a judge can read, and how many the judge was asked
    about (two counts in one scan)."""
    rec = InferenceRecordRow
    asked = func.count(case((judges.asked(w.judge), 1)))
    return select(_tag(place), func.count(rec.id), asked).where(*window)


def _scores_query(place: int, w: JudgeWindow, window: list[Any], judges: _Judges) -> Any:
    """The newest score of each record of the window the judge scored, by judgement id."""
    rec = InferenceRecordRow
    newest = (
        select(func.max(JudgementRow.id))
        .join(rec, rec.id == JudgementRow.record_id)
        .where(
            judges.current(w.judge),
            JudgementRow.score.is_not(None),
            *window,
        )
        .group_by(JudgementRow.record_id)
    )
    return select(_tag(place), JudgementRow.id, JudgementRow.score).where(
        JudgementRow.id.in_(newest)
    )


def _pick_query(place: int, w: JudgeWindow, limit: int, alone: bool, judges: _Judges) -> Any:
    """Up to ``limit`` records of the window the judge was never asked about, at random;
    one of several is a subquery (a member of a compound select takes no ORDER BY nor LIMIT
    on SQLite)."""
    rec = InferenceRecordRow
    picked = (
        select(_tag(place), rec.id)
        .where(*_window(w, judges), ~judges.asked(w.judge))
        .order_by(func.random())
        .limit(limit)
    )
    if alone:
        return picked
    sub = picked.subquery()
    return select(sub.c.window, sub.c.id)


def _read_tagged(s: Session, selects: Sequence[Any]) -> list[Any]:
    """The rows of ``selects`` (each led by its window's place), ``JUDGE_WINDOWS_PER_QUERY``
    of them to a statement."""
    rows: list[Any] = []
    for start in range(0, len(selects), JUDGE_WINDOWS_PER_QUERY):
        part = selects[start : start + JUDGE_WINDOWS_PER_QUERY]
        query: Executable = part[0] if len(part) == 1 else union_all(*part)
        rows.extend(s.execute(query).all())
    return rows


class JudgeWindowStore(StoreCore):
    """Rollout guards on judges: what judges made of step windows, and what is left."""

    def judged_counts(
        self, judge: str, endpoint: str, since: datetime, version_ids: Sequence[int]
    ) -> JudgedCounts:
        """What ``judge``'s current revision made of the records a judge can read
        (``judgeable_conditions``) of ``version_ids``: (the newest score of each record it
        scored, in the order given; how many it was asked about and gave no score; how many it
        was never asked about). The two numbers are counted by the database; only scores are
        read."""
        return self.judged_counts_many([(judge, endpoint, since, version_ids)])[0]

    def judged_counts_many(self, wanted: Sequence[Window]) -> list[JudgedCounts]:
        """``judged_counts`` of each (judge, endpoint, since, version ids), in order, read in
        one session with two statements however many windows there are (one more per
        ``JUDGE_WINDOWS_PER_QUERY``): the counts of every window in one, the scores of every
        window in the other."""
        windows = [JudgeWindow(j, e, since, tuple(ids)) for j, e, since, ids in wanted]
        places = [i for i, w in enumerate(windows) if w.version_ids]
        if not places:
            return [((), 0, 0) for _ in windows]
        with self._session(f"read the judgements of {len(places)} window(s)") as s:
            judges = _Judges()
            where = {i: _window(windows[i], judges) for i in places}
            counts = _read_tagged(
                s, [_counts_query(i, windows[i], where[i], judges) for i in places]
            )
            scores = _read_tagged(
                s, [_scores_query(i, windows[i], where[i], judges) for i in places]
            )
        found: dict[int, list[tuple[int, float]]] = {}
        for place, judgement_id, score in scores:
            if score is not None:
                found.setdefault(int(place), []).append((int(judgement_id), float(score)))
        counted = {int(place): (int(n), int(asked)) for place, n, asked in counts}
        out: list[JudgedCounts] = []
        for i in range(len(windows)):
            got = tuple(score for _, score in sorted(found.get(i, [])))
            judgeable, asked = counted.get(i, (0, 0))
            out.append((got, asked - len(got), judgeable - asked))
        return out

    def unjudged_records(
        self, judge: str, endpoint: str, since: datetime, version_ids: Sequence[int], limit: int
    ) -> list[str]:
        """Up to ``limit`` ids of the records a judge can read (``judgeable_conditions``) of
        ``version_ids`` that ``judge``'s current revision was never asked about, drawn at
        random from the whole window (not the oldest first). The database does the work: an
        anti-join on the judgements by record (their index), a random order and a LIMIT, so a
        busy endpoint's window is never read out."""
        return self.unjudged_records_many([(judge, endpoint, since, version_ids, limit)])[0]

    def unjudged_records_many(self, wanted: Sequence[Pick]) -> list[list[str]]:
        """``unjudged_records`` of each (judge, endpoint, since, version ids, limit), in
        order, read with one statement however many there are (one more per
        ``JUDGE_WINDOWS_PER_QUERY``)."""
        picks = [(JudgeWindow(j, e, since, tuple(ids)), n) for j, e, since, ids, n in wanted]
        places = [i for i, (w, limit) in enumerate(picks) if w.version_ids and limit > 0]
        if not places:
            return [[] for _ in picks]
        with self._session(
            f"read the records judges have not judged in {len(places)} window(s)"
        ) as s:
            alone, judges = len(places) == 1, _Judges()
            rows = _read_tagged(s, [_pick_query(i, *picks[i], alone, judges) for i in places])
        out: list[list[str]] = [[] for _ in picks]
        for place, record_id in rows:
            out[int(place)].append(str(record_id))
        return out
