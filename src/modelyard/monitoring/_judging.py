"""Online judging: a sampled share of an endpoint's live records scored by a judge, off the
request path, so that its quality can be watched (``monitor judged``) and alerted on
(``judge.NAME`` in an alert rule).

Configured in the alert rules file (``judging:``). Each monitoring tick reads, oldest first,
the endpoint's live records in ``lookback`` a judge can read (answered ok, not a shadow nor
a fallback, text kept) that the judge's current revision was never asked about (the
database excludes the others), keeps the ``sample`` share of them chosen by the hash of
their id (the same records on every replica and every tick) and judges at most
``max_per_tick`` (the rest on the next ticks). Where it stopped (the last record it
considered) is kept in the store (``monitor_state``, per judge and endpoint, with the
judge's revision and the sample), and the next tick reads on from there: from ``LATENESS``
before the previous tick's time when that is earlier, for records still in a writer's
buffer or running then. So a tick reads what is new or still to do, not the window; a new
revision of the judge or another sample starts again from the window's start. Running the
tick again at once judges nothing. A judge that cannot be called leaves each record a
failure with the reason (``judges list`` counts them); it never stops the tick.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.durations import parse_duration
from modelyard.errors import ModelyardError
from modelyard.judges import check_live, judge_records
from modelyard.monitoring._profiles import LATENESS
from modelyard.store import JudgeDef, Store

log = logging.getLogger("modelyard.judging")


class OnlineJudging(BaseModel):
    """One judge watching one endpoint (an entry of ``judging:`` in the rules file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    judge: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    endpoint: str
    sample: float = Field(default=0.1, gt=0, le=1, description="share of records judged")
    lookback: str = "1h"
    max_per_tick: int = Field(default=100, ge=1, le=10_000)

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, value: str) -> str:
        if parse_duration(value) > timedelta(days=366):  # as a rule's window; 1000000d broke
            raise ValueError(f"{value!r} is too long: at most 366 days, e.g. 1h or 7d")
        return value


def sampled(record_id: str, share: float) -> bool:
    """Whether ``record_id`` is in the ``share`` of records a judge watches (by its hash)."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


@dataclass(frozen=True)
class JudgingResult:
    judge: str
    endpoint: str
    judged: int
    scored: int
    backlog: int  # sampled records left for the next ticks (beyond a page read: estimated)


_PAGE = 1000  # record ids read per query


def _state_key(entry: OnlineJudging) -> str:
    key = f"judging:{entry.judge}@{entry.endpoint}"
    if len(key) > 100:  # the key column's width
        key = "judging:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key


def _kept(
    state: dict[str, object] | None, judge: JudgeDef, entry: OnlineJudging
) -> tuple[tuple[datetime, str], datetime] | None:
    """(the position of the last record considered, the time of the tick that read up to it)
    of the state kept, when it was kept for this revision of the judge and this sample."""
    if not state or state.get("revision") != judge.revision or state.get("sample") != entry.sample:
        return None
    at = datetime.fromisoformat(str(state["at"]))
    return (at, str(state["id"])), datetime.fromisoformat(str(state["tick"]))


def _one(store: Store, judge: JudgeDef, entry: OnlineJudging, now: datetime) -> JudgingResult:
    since = now - parse_duration(entry.lookback)
    key = _state_key(entry)
    state = store.get_monitor_state(key)
    kept = _kept(state, judge, entry)
    start, after = since, None  # never read (or by another revision or sample): the window
    if kept is not None:
        (at, _), ticked = kept
        if ticked - LATENESS < at:  # records before it may have come in since that tick
            start = max(since, ticked - LATENESS)
        else:
            start, after = max(since, at), kept[0]
    picked: list[str] = []
    last: tuple[datetime, str] | None = None  # the last record considered
    stopped, backlog = False, 0  # stopped before the end of what there is to read
    while not stopped:
        rows = store.unjudged_after(judge.name, entry.endpoint, start, after, _PAGE)
        for n, (record_id, at) in enumerate(rows):
            if len(picked) == entry.max_per_tick:  # the rest of the page, read: counted
                stopped = True
                backlog = sum(sampled(i, entry.sample) for i, _ in rows[n:])
                break
            last = (at, record_id)
            if sampled(record_id, entry.sample):
                picked.append(record_id)
        if len(rows) < _PAGE:
            break
        after = (rows[-1][1], rows[-1][0])
        if stopped:  # more than a page left: the sampled share of the rest, about
            left = store.count_unjudged_after(judge.name, entry.endpoint, start, after)
            backlog += round(left * entry.sample)
    run = judge_records(store, judge, picked)
    ticked = now
    if kept is not None and (last is None or last < kept[0]):
        if stopped:  # the records after ``last`` up to the kept position were not read again
            ticked = kept[1]
        last = kept[0]
    if last is not None:
        value = {"revision": judge.revision, "sample": entry.sample, "at": last[0].isoformat(),
                 "id": last[1], "tick": ticked.isoformat()}  # fmt: skip
        if value != state:
            store.set_monitor_state(key, value)
    return JudgingResult(judge.name, entry.endpoint, len(picked), run.scored, backlog)


def judge_online(
    store: Store, entries: list[OnlineJudging], now: datetime
) -> tuple[list[JudgingResult], dict[str, str]]:
    """One tick of every ``judging:`` entry; errors (an unknown judge, a rubric live traffic
    cannot feed) by ``judge@endpoint``, logged, never raised."""
    results: list[JudgingResult] = []
    errors: dict[str, str] = {}
    for entry in entries:
        where = f"{entry.judge}@{entry.endpoint}"
        try:
            judge = store.get_judge(entry.judge)
            check_live(judge, f"judging {where}")
            store.get_endpoint(entry.endpoint)  # a misspelt endpoint is said, not judged empty
            results.append(_one(store, judge, entry, now))
        except ModelyardError as exc:
            errors[where] = exc.one_line()
            log.warning("online judging %s skipped: %s", where, exc.one_line())
    return results, errors


def missing_judges(store: Store, metrics: dict[str, str]) -> dict[str, str]:
    """``{rule: why}`` for the alert rules (``{rule: metric}``) whose ``judge.NAME`` names no
    judge: such a rule has no value, so it would never fire, silently."""
    from modelyard.metric_names import judge_name

    known = {j.name for j in store.list_judges()}
    return {
        f"rule {rule}": f"it names judge {name!r}, which does not exist (`modelyard judges list`)"
        for rule, metric in metrics.items()
        if (name := judge_name(metric)) is not None and name not in known
    }
