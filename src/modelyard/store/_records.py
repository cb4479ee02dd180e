"""Inference records and their features (feedback: ``_feedback``; retention: ``_retention``).

Writing records and their features is data-plane traffic and is not audited;
discarding a job's records is.

The order in which its transactions lock rows: ``_record_locks``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from modelyard.audit import DISCARD_ACTION, FINAL_STATUSES, SealEntry
from modelyard.errors import ConfigError, Conflict
from modelyard.store._convert import to_record
from modelyard.store._core import StoreCore
from modelyard.store._record_locks import close_unsealed, rolled_back, update_running
from modelyard.store._rows import (
    epoch_seconds,
    in_scope,
    tenant_names,
    tenant_row,
    version_info,
)
from modelyard.store._samples import user_facing
from modelyard.store._schema import (
    FeedbackRow,
    InferenceRecordRow,
    RecordFeaturesRow,
    utcnow,
)
from modelyard.store._seals import PendingSeal, append_anchor, prepare_seal, write_seal
from modelyard.store._usage import USAGE_COLUMNS, add_usage
from modelyard.store.entities import (
    InferenceRecord,
    NewInferenceRecord,
    RecordFeatures,
)

_RECORD_COLUMNS = (
    "id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "endpoint_name",
    "version_id",
    "route",
    "prompt",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "http_status",
    "error",
    "shadow",
    "fallback_from_id",
    "tool_calls",
    "format_ok",
    "source",
    "job_id",
)
FEATURE_COLUMNS = (
    "prompt_chars",
    "response_chars",
    "prompt_non_ascii",
    "prompt_digits",
    "response_non_ascii",
    "response_digits",
    "unknown_token_rate",
    "cache_hit",
)
# Record columns copied onto its features, so a drift window needs no join (migration 0007).
_COPIED_COLUMNS = (
    "endpoint_name",
    "version_id",
    "status",
    "shadow",  # migration 0029: drift reads users' requests, never a shadow copy
    "created_at",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
)
_INSERT_RECORDS = insert(cast(Table, InferenceRecordRow.__table__))
RECORD_STATUSES = ("ok", "error", "cancelled", "timeout", "running", "refused")
RECORDS_PAGE = 5000  # records iter_records reads at a time
DISCARD_PAGE = 500  # record ids discard_job_records looks up (and deletes) at a time
WRITE_TRIES = 3  # add_monitored_records' tries of a write that PostgreSQL rolled back

log = logging.getLogger(__name__)


class RecordStore(StoreCore):
    """Records and their features."""

    # -- inference records -----------------------------------------------------------------

    def add_inference_records(self, records: Iterable[NewInferenceRecord]) -> int:
        """Insert a batch of records in one transaction; returns how many were written."""
        rows = [
            InferenceRecordRow(
                **{k: v for k, v in vars(r).items() if k != "created_at"},
                created_at=r.created_at or utcnow(),
            )
            for r in records
        ]
        if not rows:
            return 0
        with self._write(f"write {len(rows)} inference records") as s:  # data plane: not audited
            s.add_all(rows)
            add_usage(s, [{name: getattr(row, name) for name in USAGE_COLUMNS} for row in rows])
        return len(rows)

    def list_inference_records(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        limit: int = 100,
    ) -> list[InferenceRecord]:
        with self._session("list inference records") as s:
            query = (
                select(InferenceRecordRow)
                .order_by(InferenceRecordRow.created_at.desc(), InferenceRecordRow.id)
                .limit(limit)
            )
            if endpoint is not None:
                query = query.where(InferenceRecordRow.endpoint_name == endpoint)
            if tenant is not None:
                query = query.where(InferenceRecordRow.tenant_id == tenant_row(s, tenant).id)
            return [to_record(s, r) for r in s.scalars(query)]

    def count_inference_records(
        self,
        *,
        endpoint: str | None = None,
        job_id: str | None = None,
        since: datetime | None = None,
    ) -> int:
        """How many records there are (of ``endpoint``, of job ``job_id``, of requests
        made at ``since`` or later)."""
        with self._session("count inference records") as s:
            query = select(func.count()).select_from(InferenceRecordRow)
            if endpoint is not None:
                query = query.where(InferenceRecordRow.endpoint_name == endpoint)
            if since is not None:
                query = query.where(InferenceRecordRow.created_at >= since)
            if job_id is not None:
                query = query.where(InferenceRecordRow.job_id == job_id)
            return int(s.scalar(query) or 0)

    def discard_job_records(self, job_id: str, record_ids: Iterable[str]) -> int:
        """Delete the records (features, feedback) of batch job ``job_id`` among
        ``record_ids``; returns how many went.

        A batch job that resumes answers again the rows it had answered but not yet
        written to its output when it stopped; their first records go, so that each row
        keeps one. Data plane bookkeeping, like closing running records: not audited,
        except that sealed records going is: one ``records.discarded`` event lists them,
        so that verification knows why their seals miss them.

        ``record_ids`` is read ``DISCARD_PAGE`` at a time (a generator of a million ids
        is fine): each page is looked up by primary key, among the job's records only,
        and its records deleted in a transaction of its own, with its own event. The
        job's other records are never read, and no statement names more than a page.
        """
        r = InferenceRecordRow
        gone = 0
        ids = iter(record_ids)
        while page := list(dict.fromkeys(itertools.islice(ids, DISCARD_PAGE))):
            mine = (r.job_id == job_id, r.id.in_(page))
            with self._session(f"find records of batch job {job_id!r}") as s:
                if s.scalar(select(func.count()).select_from(r).where(*mine)) == 0:
                    continue  # nothing of this page: no write transaction
            with self._write(f"discard unwritten records of batch job {job_id!r}") as s:
                columns = (r.id, *(getattr(r, name) for name in USAGE_COLUMNS))
                # locked (by id, as a close and an end lock them): one ending meanwhile is
                # waited for, and its usage then taken back
                query = select(*columns).where(*mine).order_by(r.id)
                found = s.execute(query.with_for_update()).mappings().all()
                chunk = [m["id"] for m in found]
                # final records are sealed (those written before sealing began are listed
                # too: the event only explains seals that miss them)
                sealed = sorted(m["id"] for m in found if m["status"] in FINAL_STATUSES)
                add_usage(s, found, sign=-1)  # their tokens were counted: no longer
                s.execute(delete(RecordFeaturesRow).where(RecordFeaturesRow.record_id.in_(chunk)))
                s.execute(delete(FeedbackRow).where(FeedbackRow.record_id.in_(chunk)))
                s.execute(delete(r).where(r.id.in_(chunk)))
                if sealed:
                    self._audit(s, DISCARD_ACTION, f"job:{job_id}", {"job": job_id, "ids": sealed})
                gone += len(chunk)
        return gone

    # -- feedback (data plane: not audited, like inference records) -------------------------

    # -- records and their features (data plane: not audited) -------------------------------

    def add_monitored_records(
        self,
        items: Sequence[tuple[NewInferenceRecord, RecordFeatures | None]],
        *,
        started: Sequence[NewInferenceRecord] = (),
        running: Collection[str] = frozenset(),
        server_id: str | None = None,
        seal: bool = False,
        sealed: list[SealEntry] | None = None,
    ) -> int:
        """Insert records and their features in one transaction (bulk); returns the count.

        The request journal (``monitoring.RecordWriter``): ``started`` are requests still
        running, inserted with status ``running``; the ids in ``running`` were inserted so
        before, and their records in ``items`` update those rows instead of inserting.
        Every row gets ``server_id``, the server that runs the request.

        With ``seal``, the records in a final state are sealed in the same transaction
        (``_seals``: their Merkle root's index row). With ``sealed`` (the record writer)
        the seal is appended to that list for the caller to anchor later
        (``anchor_record_seals``) and the chain is not touched; without it, the seal is
        anchored here (one ``records.anchored`` event), and the chain's refusals
        (AuditChainBroken, a wrong or missing key) then fail the write.
        """
        if not items and not started:
            return 0
        now = utcnow()
        records: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        features = []
        for record, feats in items:
            row = {name: getattr(record, name) for name in _RECORD_COLUMNS}
            row["created_at"] = record.created_at or now
            row["server_id"] = server_id
            (updates if record.id in running else records).append(row)
            if feats is not None:
                features.append(
                    {"record_id": record.id, "embedding": feats.embedding}
                    | {name: getattr(feats, name) for name in FEATURE_COLUMNS}
                    | {name: row[name] for name in _COPIED_COLUMNS}
                )
        for record in started:
            row = {name: getattr(record, name) for name in _RECORD_COLUMNS}
            row |= {"created_at": record.created_at or now, "server_id": server_id}
            records.append(row | {"status": "running"})
        what = f"write {len(items) + len(started)} inference records"
        pending = prepare_seal(records + updates) if seal else None  # hashed before the write
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                entry = self._write_monitored(what, records, updates, features, pending, sealed)
                break
            except Conflict as exc:  # a deadlock's victim: nothing was written, write it again
                if attempt == WRITE_TRIES or not rolled_back(exc):
                    raise
                log.warning("%s (try %d of %d), writing it again", exc.one_line(), attempt,
                            WRITE_TRIES)  # fmt: skip
        if entry is not None and sealed is not None:  # once committed: for the caller to anchor
            sealed.append(entry)
        return len(items)

    def _write_monitored(
        self,
        what: str,
        records: list[dict[str, Any]],
        updates: list[dict[str, Any]],
        features: list[dict[str, Any]],
        pending: PendingSeal | None,
        sealed: list[SealEntry] | None,
    ) -> SealEntry | None:
        """``add_monitored_records``' transaction; the seal it wrote (None: none)."""
        with self._write(what) as s:
            gone, taken_back = update_running(s, updates) if updates else (set(), [])
            if gone:
                updates = [u for u in updates if u["id"] not in gone]
                features = [f for f in features if f["record_id"] not in gone]
                pending = prepare_seal(records + updates) if pending is not None else None
            if records:
                s.execute(_INSERT_RECORDS, records)  # Core: every column given, no ORM pass
            if updates:  # bulk UPDATE by primary key
                s.execute(update(InferenceRecordRow), updates)
            # those still running count when they end; one upsert: its rows locked in order
            add_usage(s, [*taken_back, *records, *updates])
            if features:
                s.execute(insert(RecordFeaturesRow), features)
            if pending is None:
                return None
            entry = write_seal(s, pending)
            if sealed is None:
                append_anchor(s, self.audit_key_source, self.actor, [entry])
            return entry

    def running_record_servers(self, *, started_before: datetime | None = None) -> list[str]:
        """The servers that have requests recorded as ``running`` (partial index); with
        ``started_before``, only requests started before it count."""
        r = InferenceRecordRow
        with self._session("read the servers of running requests") as s:
            query = select(r.server_id).where(r.status == "running", r.server_id.is_not(None))
            if started_before is not None:
                query = query.where(r.created_at < started_before)
            return sorted({sid for sid in s.scalars(query.distinct()) if sid is not None})

    def close_running_records(
        self, server_ids: Collection[str], error: str, *, seal: bool = False
    ) -> int:
        """Close the ``running`` records of servers that stopped before their requests
        finished (a kill -9, a crash): status ``error``, HTTP 500 and ``error``. Returns
        how many were closed. Data plane bookkeeping: not audited; with ``seal``, the
        closed records are sealed and anchored (``_seals``) in the same transaction."""
        if not server_ids:
            return 0
        r = InferenceRecordRow
        running = (r.status == "running", r.server_id.in_(list(server_ids)))
        with self._write(f"close the running requests of {len(server_ids)} stopped servers") as s:
            if not seal:  # the rows it closes, as it closes them: one that started since counts
                close = close_unsealed(s.get_bind().dialect.name)
                params = {"server_ids": list(server_ids), "close_error": error}
                closed = s.execute(close, params).mappings().all()
                add_usage(s, closed)
                return len(closed)
            columns = [getattr(r, name) for name in (*_RECORD_COLUMNS, "server_id")]
            query = select(*columns).where(*running).order_by(r.id)  # locked by id, as all
            rows = [
                dict(m) | {"status": "error", "http_status": 500, "error": error}
                for m in s.execute(query.with_for_update()).mappings()
            ]
            pending = prepare_seal(rows)
            if pending is None:
                return 0
            s.execute(update(r), rows)  # bulk UPDATE by primary key
            add_usage(s, rows)
            entry = write_seal(s, pending)
            append_anchor(s, self.audit_key_source, self.actor, [entry], closed=error)
            return len(rows)

    def query_records(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
        embeddings: bool = False,
        text: bool = True,
        job_id: str | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Records with their features, tenant name, version ref, feedback score and label.

        ``since`` is inclusive, ``until`` exclusive; ``status`` is one of
        ``ok|error|cancelled|timeout|running``; ``text=False`` leaves out prompt, response
        and error; ``job_id`` keeps one batch job's records. ``after`` (oldest first only)
        is the ``(created_at, id)`` of the last record of a page: the next page starts
        after it (``iter_records`` reads a window so, a page at a time).
        """
        self._check_status(status)
        if after is not None:  # one lower bound on created_at: the index's range starts there
            if newest_first:
                raise ConfigError("after= pages oldest first: newest_first=False", field="after")
            since = after[0] if since is None else max(since, after[0])
        r, f, fb = InferenceRecordRow, RecordFeaturesRow, FeedbackRow
        names = [c for c in _RECORD_COLUMNS if text or c not in ("prompt", "response", "error")]
        columns: list[Any] = [getattr(r, c) for c in names]
        columns += [getattr(f, c) for c in FEATURE_COLUMNS]
        columns += [fb.score.label("feedback_score"), fb.label.label("feedback_label")]
        if embeddings:
            columns.append(f.embedding)
        query = (
            select(*columns).outerjoin(f, f.record_id == r.id).outerjoin(fb, fb.record_id == r.id)
        )
        with self._session("read inference records") as s:
            query = in_scope(query, s, r, r.created_at, tenant=tenant, endpoint=endpoint,
                             version_id=version_id, since=since, until=until)  # fmt: skip
            if status is not None:
                query = query.where(r.status == status)
            if job_id is not None:
                query = query.where(r.job_id == job_id)
            if after is not None:
                query = query.where(or_(r.created_at > after[0], r.id > after[1]))
            order = (r.created_at.desc(), r.id) if newest_first else (r.created_at, r.id)
            query = query.order_by(*order)
            if limit is not None:
                query = query.limit(limit)
            rows = [dict(m) for m in s.execute(query).mappings()]
            refs = version_info(s, {row["version_id"] for row in rows})
            tenants = tenant_names(s)
        for row in rows:
            info = refs.get(row["version_id"])
            row["version"] = info[0] if info else None
            row["base_model"] = info[1] if info else None
            row["tenant"] = tenants.get(row["tenant_id"])
        return rows

    def iter_records(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        page: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``query_records``' records of a window, oldest first, read ``page`` (default
        ``RECORDS_PAGE``) at a time, each page its own short read after the last record of
        the one before: a window of a million records is never in memory at once."""
        page = page or RECORDS_PAGE
        after: tuple[datetime, str] | None = None
        while True:
            found = self.query_records(
                endpoint=endpoint, tenant=tenant, version_id=version_id, since=since,
                until=until, status=status, limit=page, newest_first=False, after=after,
            )  # fmt: skip
            yield from found
            if len(found) < page:
                return
            after = (found[-1]["created_at"], found[-1]["id"])

    def record_counts(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
    ) -> dict[int | None, int]:
        """How many records ``iter_records`` gives with the same arguments, by version id
        (None: records of no version), counted in the database."""
        self._check_status(status)
        r = InferenceRecordRow
        columns: list[Any] = [r.version_id, func.count()]
        query = select(*columns).group_by(r.version_id)
        with self._session("count inference records by version") as s:
            query = in_scope(query, s, r, r.created_at, tenant=tenant, endpoint=endpoint,
                             version_id=version_id, since=since, until=until)  # fmt: skip
            if status is not None:
                query = query.where(r.status == status)
            return {vid: int(n) for vid, n in s.execute(query).all()}

    @staticmethod
    def _check_status(status: str | None) -> None:
        if status is not None and status not in RECORD_STATUSES:
            raise ConfigError(
                f"unknown record status {status!r}: use one of {', '.join(RECORD_STATUSES)}",
                field="status",
            )

    def feature_columns(
        self,
        *,
        endpoint: str,
        version_id: int | None,
        since: datetime,
        until: datetime,
        status: str = "ok",
    ) -> dict[str, tuple[Any, ...]]:
        """Drift feature columns (None where a record has no value) of the matching records
        of users' requests (``user_facing``: a shadow copy's are in no drift).

        Columns, not rows: drift reads up to millions of records, and a row object per
        record would cost more than the statistics.
        """
        f = RecordFeaturesRow
        keys = ["prompt_tokens", "completion_tokens", "latency_ms"]
        keys += [c for c in FEATURE_COLUMNS if c != "cache_hit"]
        # One range scan of the covering index ix_record_features_window, no join.
        query = select(*(getattr(f, k) for k in keys)).where(
            f.endpoint_name == endpoint,
            f.version_id == version_id if version_id is not None else f.version_id.is_(None),
            f.status == status,
            user_facing(f.shadow),
            f.created_at >= since,
            f.created_at < until,
        )
        with self._session("read drift features") as s:
            # plain numbers need no result processing: read the driver's rows directly
            result = s.connection().execute(query)
            rows = result.cursor.fetchall() if result.cursor is not None else []
        if not rows:
            return dict.fromkeys(keys, ())
        return dict(zip(keys, zip(*rows, strict=True), strict=True))

    def record_hours(self, since: datetime, until: datetime) -> list[datetime]:
        """The starts of the hours in [since, until) that hold at least one record, oldest
        first: what a first profile run computes, instead of every hour since the oldest
        record (a year of history was 8,760 queries, most of them for empty hours)."""
        with self._session("read the hours with records") as s:
            hour = epoch_seconds(s, InferenceRecordRow.created_at) // 3600
            found = s.scalars(
                select(hour)
                .distinct()
                .where(
                    InferenceRecordRow.created_at >= since, InferenceRecordRow.created_at < until
                )
                .order_by(hour)
            )
            return [datetime.fromtimestamp(int(h) * 3600, UTC) for h in found]

    def oldest_record_time(self) -> datetime | None:
        with self._session("read the oldest record") as s:
            return s.scalar(
                select(InferenceRecordRow.created_at)
                .order_by(InferenceRecordRow.created_at)
                .limit(1)
            )
