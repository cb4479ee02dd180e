"""Judges (models that score other models' answers) and the scores they gave.

A judge is a named definition: a rubric (or a custom prompt), an
OpenAI-compatible target (``base_url`` and ``model``: an endpoint of a modelyard
server or an upstream provider), the environment variable its key is read from
(never the key itself), and optional prices. Adding, replacing and removing a
judge is audited; each replacement raises its ``revision``.

A judgement is one scored input: the judge and revision, the hash of what was
asked (the cache key: the same input is never judged twice by the same
definition), the record it belongs to when it judged an inference record, the
parsed score (None when the answer held none, with the reason in ``error``), the
judge's raw answer, its tokens, cost and latency. The rows live here rather than
in ``_schema``: they are this stage's only tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelyard.errors import ConfigError, NotFound
from modelyard.store._core import StoreCore, check_name
from modelyard.store._rows import get_locked, lock_name, version_info
from modelyard.store._samples import answered_ok, user_facing
from modelyard.store._schema import Base, InferenceRecordRow, utcnow


class JudgeRow(Base):
    __tablename__ = "judges"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    rubric: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str | None] = mapped_column(Text)
    base_url: Mapped[str] = mapped_column(String(500))
    model: Mapped[str] = mapped_column(String(200))
    api_key_env: Mapped[str | None] = mapped_column(String(200))
    max_tokens: Mapped[int] = mapped_column(Integer, default=16)
    input_per_1k: Mapped[float] = mapped_column(Float, default=0.0)
    output_per_1k: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class JudgementRow(Base):
    __tablename__ = "judgements"
    __table_args__ = (
        Index("ix_judgements_judge_hash", "judge", "input_hash"),
        Index("ix_judgements_record", "record_id"),
        Index("ix_judgements_created_at", "created_at"),  # a window's judgements (0019)
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    judge: Mapped[str] = mapped_column(String(100), ForeignKey("judges.name", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    input_hash: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


_HASHED_CHARS = len("sha256:") + 64  # a record of a tenant that keeps only hashes
RUBRIC_NAMES = ("correctness", "faithfulness", "relevance", "safety", "custom")


@dataclass(frozen=True)
class JudgeDef:
    """A judge as stored: what it scores by, where it is called, what a call costs."""

    name: str
    revision: int
    rubric: str
    prompt: str | None
    base_url: str
    model: str
    api_key_env: str | None
    max_tokens: int
    input_per_1k: float
    output_per_1k: float
    created_at: datetime
    created_by: str

    @property
    def metric(self) -> str:
        """The name gates, guards and alert rules use for its mean score."""
        return f"judge.{self.name}"


@dataclass(frozen=True)
class Judgement:
    """One scored input (see the module's text)."""

    judge: str
    revision: int
    input_hash: str
    record_id: str | None
    score: float | None
    output: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: float
    created_at: datetime | None = None


def _to_judge(r: JudgeRow) -> JudgeDef:
    return JudgeDef(
        name=r.name, revision=r.revision, rubric=r.rubric, prompt=r.prompt,
        base_url=r.base_url, model=r.model, api_key_env=r.api_key_env,
        max_tokens=r.max_tokens, input_per_1k=r.input_per_1k,
        output_per_1k=r.output_per_1k, created_at=r.created_at, created_by=r.created_by,
    )  # fmt: skip


def _to_judgement(r: JudgementRow) -> Judgement:
    return Judgement(
        judge=r.judge, revision=r.revision, input_hash=r.input_hash, record_id=r.record_id,
        score=r.score, output=r.output, error=r.error, prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens, cost=r.cost, latency_ms=r.latency_ms,
        created_at=r.created_at,
    )  # fmt: skip


def _not_found(name: str) -> NotFound:
    return NotFound(f"no judge named {name!r}", hint="See `modelyard judges list`.", judge=name)


def _check_price(field: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{field} is {value}: a price is a number of at least 0", field=field)


def current_revision(judge: str) -> Any:
    """Judgements of ``judge``'s current revision (what an earlier one said is not its)."""
    revision = select(JudgeRow.revision).where(JudgeRow.name == judge).scalar_subquery()
    return (JudgementRow.judge == judge) & (JudgementRow.revision == revision)


def _latest_scores(judge: str, since: datetime) -> Any:
    """The ids of the newest scored judgement of each record by ``judge``'s current revision,
    made since ``since``: a record judged twice (two ticks at once) counts once."""
    return (
        select(func.max(JudgementRow.id))
        .where(
            current_revision(judge), JudgementRow.score.is_not(None),
            JudgementRow.record_id.is_not(None), JudgementRow.created_at >= since,
        )
        .group_by(JudgementRow.record_id)
    )  # fmt: skip


def _live_answer() -> ColumnElement[bool]:
    """A record of a live answer: a request a user sent (``user_facing``: no shadow copy)
    that was answered ok (``answered_ok``). The one condition on a record for judges: what
    they are given to read (``judgeable_conditions``) and whose scores count in an endpoint's means
    (``judge_means``, alert rules) and its per-version summary (``judge_summary``); a
    shadow's scores are ``rollout compare --shadow``'s."""
    rec = InferenceRecordRow
    return and_(user_facing(rec.shadow), answered_ok(rec.status))


def judgeable_conditions(
    endpoint: str, since: datetime, version_ids: list[int] | None, readable: list[Any] | None = None
) -> list[Any]:
    """The conditions on a live record a judge can read (``readable_conditions``) of
    ``endpoint`` since ``since``, of ``version_ids`` (of any version when None);
    ``readable``: ``readable_conditions()``, built once for many windows."""
    rec = InferenceRecordRow
    return [
        rec.endpoint_name == endpoint,
        rec.created_at >= since,
        rec.version_id.is_not(None) if version_ids is None else rec.version_id.in_(version_ids),
        *(readable_conditions() if readable is None else readable),
    ]


def readable_conditions() -> list[Any]:
    """The conditions on a record a judge can read: a live answer (``_live_answer``:
    answered ok, not a shadow), not a fallback, its prompt and response kept as text (a
    tenant that keeps hashes or nothing leaves none)."""
    rec = InferenceRecordRow
    return [
        _live_answer(),
        rec.fallback_from_id.is_(None),
        rec.prompt.is_not(None),
        rec.response.is_not(None),
        ~(rec.prompt.like("sha256:%") & (func.length(rec.prompt) == _HASHED_CHARS)),
    ]


def asked_exists(judge: str) -> Any:
    """Whether ``judge``'s current revision was asked about the record (a score or none):
    an EXISTS on the judgements by record id (``ix_judgements_record``)."""
    return (
        select(JudgementRow.id)
        .where(JudgementRow.record_id == InferenceRecordRow.id, current_revision(judge))
        .exists()
    )


def _past(after: tuple[datetime, str] | None) -> list[Any]:
    """The conditions on a record that comes after the position ``after`` (time, id)."""
    if after is None:
        return []
    at, record_id = after
    rec = InferenceRecordRow
    return [  # the first bound alone is a range on ix_inference_records_endpoint_created
        rec.created_at >= at,
        or_(rec.created_at > at, and_(rec.created_at == at, rec.id > record_id)),
    ]


class JudgeStore(StoreCore):
    """Judge definitions (audited) and their judgements (a cache and a record of calls)."""

    def put_judge(
        self,
        name: str,
        *,
        rubric: str,
        base_url: str,
        model: str,
        prompt: str | None = None,
        api_key_env: str | None = None,
        max_tokens: int = 16,
        input_per_1k: float = 0.0,
        output_per_1k: float = 0.0,
        replace: bool = False,
    ) -> JudgeDef:
        """Add judge ``name``, or with ``replace`` change it (its revision goes up, so what it
        judged before is not taken from the cache again); audited.

        The fields are checked by ``modelyard.judges.check_definition`` before they get here;
        the store checks only what its rows need.
        """
        check_name("judge", name)
        if rubric not in RUBRIC_NAMES:
            raise ConfigError(
                f"unknown rubric {rubric!r}", hint=f"Use one of {', '.join(RUBRIC_NAMES)}.",
                field="rubric",
            )  # fmt: skip
        _check_price("input_per_1k", input_per_1k)
        _check_price("output_per_1k", output_per_1k)
        fields = {
            "rubric": rubric, "prompt": prompt, "base_url": base_url, "model": model,
            "api_key_env": api_key_env, "max_tokens": max_tokens,
            "input_per_1k": input_per_1k, "output_per_1k": output_per_1k,
        }  # fmt: skip
        with self._write(f"put judge {name!r}") as s:
            self._require(s, "judge.put", name, f"define judge {name!r}")
            lock_name(s, "judge", name)
            row = get_locked(s, JudgeRow, name)
            if row is not None and not replace:
                raise ConfigError(
                    f"judge {name!r} already exists (revision {row.revision})",
                    hint="Pass --replace to change it, or choose another name.", judge=name,
                )  # fmt: skip
            if row is None:
                row = JudgeRow(name=name, revision=1, created_by=self.actor, **fields)
                s.add(row)
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
                row.revision += 1
                row.created_at = utcnow()
                row.created_by = self.actor
            s.flush()
            payload = {k: v for k, v in fields.items() if k != "prompt"}
            payload["revision"] = row.revision
            payload["prompt_chars"] = len(prompt or "")
            self._audit(s, "judge.put", name, payload)
            return _to_judge(row)

    def get_judge(self, name: str) -> JudgeDef:
        with self._session(f"read judge {name!r}") as s:
            row = s.get(JudgeRow, name)
            if row is None:
                raise _not_found(name)
            return _to_judge(row)

    def list_judges(self) -> list[JudgeDef]:
        with self._session("list judges") as s:
            return [_to_judge(r) for r in s.scalars(select(JudgeRow).order_by(JudgeRow.name))]

    def remove_judge(self, name: str) -> None:
        """Remove judge ``name`` and its judgements; audited."""
        with self._write(f"remove judge {name!r}") as s:
            self._require(s, "judge.removed", name, f"remove judge {name!r}")
            row = get_locked(s, JudgeRow, name)
            if row is None:
                raise _not_found(name)
            dropped = s.execute(delete(JudgementRow).where(JudgementRow.judge == name))
            s.delete(row)
            self._audit(
                s, "judge.removed", name,
                {"revision": row.revision, "judgements": int(dropped.rowcount or 0)},  # type: ignore[attr-defined]
            )  # fmt: skip

    def cached_judgements(
        self, judge: JudgeDef, input_hashes: Iterable[str]
    ) -> dict[str, Judgement]:
        """What ``judge`` (this revision) already scored, by input hash; the newest wins."""
        wanted = list(dict.fromkeys(input_hashes))
        found: dict[str, Judgement] = {}
        with self._session(f"read judgements of {judge.name!r}") as s:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = s.scalars(
                    select(JudgementRow)
                    .where(
                        JudgementRow.judge == judge.name,
                        JudgementRow.revision == judge.revision,
                        JudgementRow.input_hash.in_(chunk),
                        JudgementRow.error.is_(None),
                    )
                    .order_by(JudgementRow.id)
                )
                for row in rows:
                    found[row.input_hash] = _to_judgement(row)
        return found

    def save_judgements(self, judgements: Sequence[Judgement]) -> None:
        """Keep ``judgements`` (one transaction); a judgement's judge must exist."""
        if not judgements:
            return
        with self._write("save judgements") as s:
            for j in judgements:
                s.add(
                    JudgementRow(
                        judge=j.judge, revision=j.revision, input_hash=j.input_hash,
                        record_id=j.record_id, score=j.score, output=j.output, error=j.error,
                        prompt_tokens=j.prompt_tokens, completion_tokens=j.completion_tokens,
                        cost=j.cost, latency_ms=j.latency_ms,
                    )
                )  # fmt: skip

    def judge_usage(self, judge: str, since: datetime | None = None) -> dict[str, float]:
        """Calls, failed calls, tokens and cost of ``judge`` (since ``since``)."""

        with self._session(f"read the usage of judge {judge!r}") as s:
            query = select(
                func.count(JudgementRow.id),
                func.count(JudgementRow.error),
                func.coalesce(func.sum(JudgementRow.prompt_tokens), 0),
                func.coalesce(func.sum(JudgementRow.completion_tokens), 0),
                func.coalesce(func.sum(JudgementRow.cost), 0.0),
            ).where(JudgementRow.judge == judge)
            if since is not None:
                query = query.where(JudgementRow.created_at >= since)
            calls, failed, prompt, completion, cost = s.execute(query).one()
        return {
            "calls": int(calls), "failed": int(failed), "prompt_tokens": int(prompt),
            "completion_tokens": int(completion), "cost": float(cost),
        }  # fmt: skip

    # -- judging live traffic (a rollout guard's window: ``_judge_windows``) ----------------

    def unjudged_after(
        self,
        judge: str,
        endpoint: str,
        since: datetime,
        after: tuple[datetime, str] | None,
        limit: int | None,
    ) -> list[tuple[str, datetime]]:
        """Up to ``limit`` (id, time) of ``endpoint``'s records (of any version) since
        ``since`` that a judge can read (``judgeable_conditions``) and ``judge``'s current
        revision was never asked about, after the position ``after`` (time, id) when given, in
        that order: the database excludes what was judged (NOT EXISTS on the judgements by
        record id) and bounds the read, so online judging reads on from where its last tick
        stopped."""
        rec = InferenceRecordRow
        with self._session(f"read the records judge {judge!r} has not judged") as s:
            rows = s.execute(
                select(rec.id, rec.created_at)
                .where(
                    *judgeable_conditions(endpoint, since, None),
                    ~asked_exists(judge),
                    *_past(after),
                )
                .order_by(rec.created_at, rec.id)
                .limit(limit)
            ).all()
        return [(record_id, created_at) for record_id, created_at in rows]

    def count_unjudged_after(
        self, judge: str, endpoint: str, since: datetime, after: tuple[datetime, str] | None
    ) -> int:
        """How many records ``unjudged_after`` would list with no limit (counted, not read)."""
        rec = InferenceRecordRow
        with self._session(f"count the records judge {judge!r} has not judged") as s:
            where = [
                *judgeable_conditions(endpoint, since, None),
                ~asked_exists(judge),
                *_past(after),
            ]
            return int(s.scalar(select(func.count(rec.id)).where(*where)) or 0)

    def record_texts(self, record_ids: Iterable[str]) -> dict[str, tuple[int | None, str, str]]:
        """``{record id: (version id, prompt, response)}`` of the records that kept both."""
        wanted = list(dict.fromkeys(record_ids))
        found: dict[str, tuple[int | None, str, str]] = {}
        rec = InferenceRecordRow
        with self._session("read records' prompts and responses") as s:
            for start in range(0, len(wanted), 500):
                rows = s.execute(
                    select(rec.id, rec.version_id, rec.prompt, rec.response).where(
                        rec.id.in_(wanted[start : start + 500])
                    )
                ).all()
                for record_id, version_id, prompt, response in rows:
                    if prompt is not None and response is not None:
                        found[record_id] = (version_id, prompt, response)
        return found

    def judgement_states(
        self, judge: str, record_ids: Iterable[str]
    ) -> tuple[dict[str, float], set[str]]:
        """(the newest score ``judge``'s current revision gave each of ``record_ids`` it
        scored, the records it was asked about and gave no score)."""
        wanted = list(dict.fromkeys(record_ids))
        scores: dict[str, float] = {}
        failed: set[str] = set()
        with self._session(f"read judgements of {judge!r}") as s:
            for start in range(0, len(wanted), 500):
                rows = s.execute(
                    select(JudgementRow.record_id, JudgementRow.score)
                    .where(
                        current_revision(judge),
                        JudgementRow.record_id.in_(wanted[start : start + 500]),
                    )
                    .order_by(JudgementRow.id)
                ).all()
                for record_id, score in rows:
                    if record_id is None:
                        continue
                    if score is None:
                        failed.add(record_id)
                    else:
                        scores[record_id] = float(score)
        return scores, failed - scores.keys()

    # -- judging live traffic (online judging, alert rules) -----------------------------------

    def judge_mean(
        self, judge: str, endpoint: str, since: datetime, until: datetime
    ) -> tuple[float | None, int]:
        """(the mean score ``judge``'s current revision gave ``endpoint``'s live records made
        in [since, until), how many records that is; each record counted once)."""
        return self.judge_means(judge, [endpoint], since, until)[endpoint]

    def judge_means(
        self, judge: str, endpoints: Sequence[str], since: datetime, until: datetime
    ) -> dict[str, tuple[float | None, int]]:
        """``judge_mean`` of each of ``endpoints``, read together (an alert rule on a judge
        reads every endpoint's at each evaluation): a query for every 500 endpoints."""
        rec = InferenceRecordRow
        names = sorted(set(endpoints))
        found: dict[str, tuple[float | None, int]] = {}
        with self._session(f"read the mean score of judge {judge!r}") as s:
            for k in range(0, len(names), 500):
                part = names[k : k + 500]
                named = (
                    rec.endpoint_name == part[0] if len(part) == 1 else rec.endpoint_name.in_(part)
                )
                rows = s.execute(
                    select(rec.endpoint_name, func.avg(JudgementRow.score),
                           func.count(JudgementRow.score))
                    .join(rec, rec.id == JudgementRow.record_id)
                    .where(
                        JudgementRow.id.in_(_latest_scores(judge, since)),
                        named,
                        rec.created_at >= since,
                        rec.created_at < until,
                        _live_answer(),
                    )
                    .group_by(rec.endpoint_name)
                ).all()  # fmt: skip
                found |= {e: (None if m is None else float(m), int(n)) for e, m, n in rows}
        return {name: found.get(name, (None, 0)) for name in names}

    def judge_summary(
        self, judge: str, endpoint: str, since: datetime
    ) -> list[tuple[str, int, float, float, float]]:
        """Per version of ``endpoint``'s live records since ``since`` that ``judge``'s current
        revision scored: (version ref, records, mean, lowest, highest), by version."""
        rec = InferenceRecordRow
        with self._session(f"summarize the scores of judge {judge!r}") as s:
            rows = s.execute(
                select(
                    rec.version_id,
                    func.count(JudgementRow.score),
                    func.avg(JudgementRow.score),
                    func.min(JudgementRow.score),
                    func.max(JudgementRow.score),
                )
                .join(rec, rec.id == JudgementRow.record_id)
                .where(
                    JudgementRow.id.in_(_latest_scores(judge, since)),
                    rec.endpoint_name == endpoint,
                    rec.created_at >= since,
                    _live_answer(),
                )
                .group_by(rec.version_id)
            ).all()
            refs = version_info(s, [r[0] for r in rows])
        out = [
            (refs[vid][0] if vid in refs else "?", int(n), float(mean), float(low), float(high))
            for vid, n, mean, low, high in rows
        ]
        return sorted(out)
