"""The live samples rollout guards and ``rollout compare`` judge versions on.

A busy endpoint has millions of inference records, so a sample is read as its guards and
tests need it, never as Python objects per record: only the rows of the versions asked
for (and of the requests that fell back from them) are read, in chunks of ``CHUNK`` rows,
and each version keeps its statuses as counts and its latencies, times to first token and
feedback scores as float64 arrays (8 bytes a value, against about 32 in a tuple).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    ColumnElement,
    Select,
    SQLColumnExpression,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from modelyard.store._schema import FeedbackRow, InferenceRecordRow, ModelVersionRow

FloatArray = npt.NDArray[np.float64]

CHUNK = 500
"""Rows fetched at a time (from a server-side cursor on PostgreSQL): the Python rows of one
chunk are all that is ever alive at once, and so few that they are freed before the garbage
collector moves them to its oldest generation (chunks of 20,000 were, and the full
collections they set off took as long again as reading the rows; see the benchmark
``benchmarks/rollout_samples.py``)."""

OK = "ok"
ENDED = (OK, "error", "timeout")
FAILED = ("error", "timeout")
UNANSWERED = ("refused", "error")
"""The statuses of records whose request got no answer: refused (a 4xx) or failed."""


@overload
def answered_ok(status: str) -> bool: ...
@overload
def answered_ok(status: SQLColumnExpression[str]) -> ColumnElement[bool]: ...
def answered_ok(status: str | SQLColumnExpression[str]) -> bool | ColumnElement[bool]:
    """Whether a request that ended with ``status`` was answered ok: what latency means
    everywhere modelyard reads or exports one (rollout guards, ``rollout compare``, alert
    rules, profiles, the report, the traffic series and the Prometheus histograms). Errors
    and timeouts count in the error rate instead; a refusal (401, 429, 400: ``refused``)
    is fast and a cancelled request short, and either would pull the percentiles down (an
    endpoint drowning in 429s would look fast). The latency of successful requests,
    failures counted apart: the four golden signals of Google's SRE book.

    The same test on a status (``answered_ok("ok")``) and on a status column, as a SQL
    condition (``answered_ok(InferenceRecordRow.status)``)."""
    return status == OK


@overload
def user_facing(shadow: bool) -> bool: ...
@overload
def user_facing(shadow: SQLColumnExpression[bool]) -> ColumnElement[bool]: ...
def user_facing(shadow: bool | SQLColumnExpression[bool]) -> bool | ColumnElement[bool]:
    """Whether a record is of a request a user sent and was answered: not a shadow copy
    (mirrored to the endpoint's shadow version, its answer recorded, never returned).
    What an endpoint's numbers count everywhere modelyard reads or exports them (alert
    rules, profiles and their cost, the report, budgets, rollout guards, judges, the
    Prometheus requests, latency and tokens families): a slow or failing shadow affects
    no user, so it fires none of the endpoint's alerts and moves none of its numbers. A
    shadow's own numbers are kept apart, per version: the traffic series (``shadow``
    true), ``modelyard_shadow_*`` and ``rollout compare --shadow``. A fallback is user
    facing: its answer was returned.

    The same test on a record's ``shadow`` (``user_facing(False)``) and on the column, as
    a SQL condition (``user_facing(InferenceRecordRow.shadow)``)."""
    if isinstance(shadow, bool):
        return not shadow
    return shadow.is_(False)


@overload
def answered(status: str) -> bool: ...
@overload
def answered(status: SQLColumnExpression[str]) -> ColumnElement[bool]: ...
def answered(status: str | SQLColumnExpression[str]) -> bool | ColumnElement[bool]:
    """Whether a record's request got an answer, all or part of it: every status but
    ``UNANSWERED`` (``refused``, ``error``). Feedback rates an answer, so only feedback on
    these records counts in a mean feedback score, everywhere modelyard reads or exports
    one (profiles and ``modelyard_feedback_score``, alert rules, rollout guards, ``rollout
    compare``, the feedback summary). Feedback on a request that got no answer is taken
    only with its ``label`` (a correction, training data: ``data from-records`` trains on
    it), and its score, which rates no answer, moves none of them. A timeout or a
    cancelled request counts: a streamed answer may have partly reached its user, who
    rated what they read; a running one counts while it runs (read at read time, a
    verdict on one that then fails stops counting).

    The same test on a status (``answered("timeout")``) and on a status column, as a SQL
    condition (``answered(InferenceRecordRow.status)``)."""
    if isinstance(status, str):
        return status not in UNANSWERED
    return status.not_in(UNANSWERED)


def _floats(values: Any) -> FloatArray:
    """``values`` as a read-only float64 array (a view: the caller's array stays writable)."""
    array = np.asarray(values, dtype=np.float64).view()
    array.flags.writeable = False
    return array


def _counts(statuses: Mapping[str, int] | Iterable[str]) -> Mapping[str, int]:
    counted = dict(statuses) if isinstance(statuses, Mapping) else dict(Counter(statuses))
    return MappingProxyType(counted)


@dataclass(frozen=True, eq=False)
class RequestSample:
    """Requests in a window: how each ended (``statuses``: how many ended so, per status),
    the latencies and times to first token of those that ended ok, and the feedback scores
    of those answered (``answered``), in the order they were read. Guards and A/B
    comparisons judge versions on these.

    ``statuses`` may be given as the statuses themselves (``("ok", "error", "ok")``), and
    the float fields as any sequence: they are counted and stored as arrays."""

    statuses: Mapping[str, int] = field(default_factory=dict)
    latencies_ms: FloatArray = field(default_factory=lambda: _floats(()))
    ttfts_ms: FloatArray = field(default_factory=lambda: _floats(()))
    feedback: FloatArray = field(default_factory=lambda: _floats(()))

    def __post_init__(self) -> None:
        object.__setattr__(self, "statuses", _counts(self.statuses))
        for name in ("latencies_ms", "ttfts_ms", "feedback"):
            object.__setattr__(self, name, _floats(getattr(self, name)))

    @property
    def requests(self) -> int:
        return sum(self.statuses.get(st, 0) for st in ENDED)

    @property
    def errors(self) -> int:
        return sum(self.statuses.get(st, 0) for st in FAILED)


@dataclass(frozen=True, eq=False, kw_only=True)
class VersionSample(RequestSample):
    """The live requests one version answered on an endpoint in a window (no shadows)."""

    version: int
    version_id: int
    fallbacks: int  # requests routed to this version that another version had to answer


def ended(statuses: Sequence[str]) -> int:
    """Requests that ended (ok, error or timeout); cancelled ones, and those refused for a
    client's mistake (``refused``, a 4xx), say nothing of a version."""
    return sum(1 for st in statuses if st in ENDED)


def failed(statuses: Sequence[str]) -> int:
    """Requests that ended in an error or a timeout: the server's failures (5xx, 504), never
    a client's mistake (``refused``)."""
    return sum(1 for st in statuses if st in FAILED)


class _Parts:
    """One version's sample as it is read: status counts, and its values packed 8 bytes
    each (``array``: no Python object a value), taken over by numpy without a copy."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.latencies = array("d")
        self.ttfts = array("d")
        self.feedback = array("d")
        self.fallbacks = 0

    def sample(self, number: int, vid: int) -> VersionSample:
        def floats(values: array[float]) -> FloatArray:
            return np.frombuffer(values, dtype=np.float64) if values else np.empty(0)

        return VersionSample(
            self.statuses, floats(self.latencies), floats(self.ttfts), floats(self.feedback),
            version=number, version_id=vid, fallbacks=self.fallbacks,
        )  # fmt: skip


@dataclass(frozen=True)
class SampleWindow:
    """What one sample read asks for: ``endpoint``'s live requests since ``since`` of the
    versions ``version_ids`` (and those that fell back from them)."""

    endpoint: str
    since: datetime
    version_ids: tuple[int, ...]


WINDOWS_PER_QUERY = 100
"""Windows read by one statement (a ``UNION ALL`` of a select each: SQLite takes 500 at
most); the controller's tick reads every active rollout's windows with one or two."""


def read_samples(
    s: Session, endpoint: str, since: datetime, version_ids: Sequence[int]
) -> dict[int, VersionSample]:
    """Per version id: the live (not shadow) requests on ``endpoint`` since ``since`` that
    the version answered, and how many routed to it fell back to another version (those
    count as its fallbacks only, not in the answering version's sample)."""
    return read_samples_many(s, [SampleWindow(endpoint, since, tuple(version_ids))])[0]


def read_samples_many(
    s: Session, windows: Sequence[SampleWindow]
) -> list[dict[int, VersionSample]]:
    """``read_samples`` of each window, in order, read together: the version numbers in
    one query, the records of up to ``WINDOWS_PER_QUERY`` windows in another (a select per
    window, each as ``read_samples`` reads it alone, tagged with the window's place and
    joined by ``UNION ALL``), so many rollouts cost the statements of one."""
    wanted = [list(dict.fromkeys(w.version_ids)) for w in windows]
    every = sorted({vid for ids in wanted for vid in ids})
    if not every:
        return [{} for _ in windows]
    numbers: dict[int, int] = dict(
        s.execute(
            select(ModelVersionRow.id, ModelVersionRow.version).where(ModelVersionRow.id.in_(every))
        ).all()
    )
    parts: list[dict[int | None, _Parts]] = [{vid: _Parts() for vid in ids} for ids in wanted]
    places = [i for i, ids in enumerate(wanted) if ids]
    for start in range(0, len(places), WINDOWS_PER_QUERY):
        selects = [_window_query(i, windows[i], wanted[i])
                   for i in places[start : start + WINDOWS_PER_QUERY]]  # fmt: skip
        query = selects[0] if len(selects) == 1 else union_all(*selects)
        # Core rows on the session's connection (the ORM's loading costs a second a million
        # rows); stream_results: a server-side cursor on PostgreSQL (SQLite's steps as read)
        rows = s.connection().execution_options(stream_results=True).execute(query)
        while chunk := rows.fetchmany(CHUNK):
            by_window: dict[int, list[Any]] = {}
            for row in chunk:
                by_window.setdefault(row[0], []).append(row[1:])
            for i, got in by_window.items():
                _add_rows(parts[i], got)
    return [
        {vid: p[vid].sample(numbers.get(vid, 0), vid) for vid in ids}
        for p, ids in zip(parts, wanted, strict=True)
    ]


def _window_query(place: int, window: SampleWindow, ids: list[int]) -> Select[*tuple[Any, ...]]:
    """The records of ``window``'s versions, each row led by ``place`` (an integer written
    into the statement: a bound parameter in a select list of a union has no type on
    PostgreSQL)."""
    return (
        select(
            literal_column(str(int(place))).label("window"),
            InferenceRecordRow.version_id,
            InferenceRecordRow.status,
            InferenceRecordRow.latency_ms,
            InferenceRecordRow.ttft_ms,
            InferenceRecordRow.fallback_from_id,
            FeedbackRow.score,
        )
        .outerjoin(FeedbackRow, FeedbackRow.record_id == InferenceRecordRow.id)
        .where(
            InferenceRecordRow.endpoint_name == window.endpoint,
            InferenceRecordRow.created_at >= window.since,
            user_facing(InferenceRecordRow.shadow),
            or_(
                InferenceRecordRow.version_id.in_(ids),
                InferenceRecordRow.fallback_from_id.in_(ids),
            ),
        )
    )


def _add_rows(parts: Mapping[int | None, _Parts], rows: Sequence[Any]) -> None:
    """Add rows (version, status, latency, ttft, fallen back from, score) to the versions'
    parts, in order: a row that fell back from one of the versions counts as that version's
    fallback only (answered by a baseline version on its behalf); any other, in the sample
    of the version that answered it."""
    for version_id, status, latency, ttft, fallback_from, score in rows:
        p = parts.get(fallback_from)
        if p is not None:
            p.fallbacks += 1
            continue
        p = parts.get(version_id)
        if p is None:
            continue
        p.statuses[status] += 1
        if answered_ok(status):
            p.latencies.append(latency)
            if ttft is not None:
                p.ttfts.append(ttft)
        if score is not None and answered(status):  # a correction's score rates no answer
            p.feedback.append(score)
