"""Online judging: a sampled share of an endpoint's live records scored by a judge, off the
request path, so that its quality can be watched (``monitor judged``) and alerted on
(``judge.NAME`` in an alert rule).

Configured in the alert rules file (``judging:``). Each monitoring tick looks back
``lookback`` over the endpoint's live records a judge can read (answered ok, not a
shadow nor a fallback, text kept), keeps the ``sample`` share of them chosen by the
hash of their id (the same records on every replica and every tick), drops those the
judge already saw, and judges at most ``max_per_tick`` (the rest on the next ticks).
Running the tick again at once judges nothing. A judge that cannot be called leaves each record a
failure with the reason (``judges list`` counts them); it never stops the tick.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.durations import parse_duration
from modelyard.errors import ModelyardError
from modelyard.judges import check_live, judge_records
from modelyard.store import Store

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
        parse_duration(value)
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
    backlog: int  # sampled records left for the next ticks (beyond max_per_tick)


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
            since = now - parse_duration(entry.lookback)
            by_version = store.judgeable_records(entry.endpoint, since, None)
            ids = [i for kept in by_version.values() for i in kept if sampled(i, entry.sample)]
            scores, failed = store.judgement_states(judge.name, ids)
            todo = [i for i in ids if i not in scores and i not in failed]
            picked = todo[: entry.max_per_tick]
            run = judge_records(store, judge, picked)
        except ModelyardError as exc:
            errors[where] = exc.one_line()
            log.warning("online judging %s skipped: %s", where, exc.one_line())
            continue
        results.append(
            JudgingResult(
                judge.name, entry.endpoint, len(picked), run.scored, len(todo) - len(picked)
            )
        )
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
