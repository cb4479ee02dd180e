"""Tenants' batches (OpenAI's Batch API): each batch's state, and its answered lines.

A batch (``batches``) names the tenant's input file, the endpoint its lines ask,
the key that created it (its lines are asked as that key), and where it stands:
OpenAI's ``status`` with the time of each step, ``request_counts`` and, once
finished, its output and error files. The serving replica that runs a batch holds
the lease ``batch:<id>`` (``FleetStore.acquire_lease``); every change it makes
is fenced by that lease, so a replica that lost it (it stalled, another took
over) changes nothing.

``batch_lines`` keeps each answered line's output line (its JSON, whether it
succeeded) until the batch is finished: a group of lines is committed with the
counts in one transaction, so a batch stopped at any instant resumes with the
lines it had committed, and asks only the others again. Finishing a batch turns
them into its output and error files and deletes them. Data plane: not audited.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelyard.errors import Conflict, NotFound, TooManyBatches
from modelyard.store._core import StoreCore
from modelyard.store._files import (
    FileRow,
    StoredFile,
    add_file_row,
    owned_file_row,
    remove_file_row,
)
from modelyard.store._fleet import holds_lease
from modelyard.store._rows import lock_name, tenant_row
from modelyard.store._schema import Base, InferenceRecordRow, LeaseRow, TenantRow, utcnow

ACTIVE = ("validating", "in_progress", "cancelling", "finalizing")  # a worker's to run
_STEPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


class BatchRow(Base):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer, ForeignKey("tenants.id"))
    api_key_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    errors: Mapped[list[Any] | None]
    meta: Mapped[dict[str, Any] | None]
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    output_expires_s: Mapped[int | None]  # its files' lifetime; None: kept until deleted
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)  # its records', once ended
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # the one model its lines name, once its input is checked (migration 0026); None: not
    # checked yet, or its lines name several
    model: Mapped[str | None] = mapped_column(String(256))


class BatchLineRow(Base):
    __tablename__ = "batch_lines"
    batch_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class StoredBatch:
    """A batch as stored; ``times`` holds the time of each step it reached (OpenAI's
    ``in_progress_at``, ``completed_at``, ...)."""

    id: str
    tenant: str
    api_key_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    errors: tuple[Mapping[str, Any], ...] | None
    metadata: Mapping[str, str] | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    created_at: datetime
    expires_at: datetime
    times: Mapping[str, datetime]
    usage: tuple[int, int] | None = None  # its records' input and output tokens, once ended
    model: str | None = None  # the one model its lines name, once its input is checked

    @property
    def lease(self) -> str:
        """The lease its runner holds."""
        return f"batch:{self.id}"


@dataclass(frozen=True)
class LineOutput:
    """One answered line of a batch: its 1-based ``line``, whether it succeeded, its JSON."""

    line: int
    ok: bool
    output: str


@dataclass(frozen=True)
class OutputFile:
    """A file a finished batch makes (its output or its errors)."""

    kind: str  # "output" or "error"
    filename: str
    size: int
    digest: str


class LeaseLost(Conflict):
    """The replica no longer holds the batch's lease: another runs it now."""


def _check_unfinished(s: Session, tenant: str, most: int) -> None:
    owner = tenant_row(s, tenant).id
    unfinished = s.scalar(
        select(func.count()).where(BatchRow.tenant_id == owner, BatchRow.status.in_(ACTIVE))
    )
    if (unfinished or 0) >= most:
        raise TooManyBatches(
            f"tenant {tenant!r} has {unfinished} batches not finished, the most this server "
            f"runs for a tenant (--max-tenant-batches {most})"
        )


class BatchStore(StoreCore):
    """Tenants' batches and their answered lines (data plane: not audited)."""

    def create_batch(
        self,
        tenant: str,
        *,
        api_key_id: str,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        window: timedelta,
        metadata: Mapping[str, str] | None,
        max_unfinished: int | None = None,
        output_expires_s: int | None = None,
    ) -> StoredBatch:
        """A new batch of ``tenant``, ``validating``; with ``max_unfinished``, refused
        (``TooManyBatches``) when the tenant has that many not finished already (one
        tenant's creations are serialized on the count)."""
        now = utcnow()
        with self._write(f"create a batch for tenant {tenant!r}") as s:
            # the input is the tenant's, and held against a delete until the batch exists
            # (``delete_unread_file`` then sees it)
            owned_file_row(s, tenant, input_file_id, lock="share")
            if max_unfinished is not None:
                lock_name(s, "batch_quota", tenant)
                _check_unfinished(s, tenant, max_unfinished)
            row = BatchRow(
                id=f"batch_{secrets.token_hex(16)}", tenant_id=tenant_row(s, tenant).id,
                api_key_id=api_key_id, endpoint=endpoint, input_file_id=input_file_id,
                completion_window=completion_window, status="validating", errors=None,
                meta=dict(metadata) if metadata is not None else None, total=0, completed=0,
                failed=0, created_at=now, expires_at=now + window,
                output_expires_s=output_expires_s,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return _to_batch(row, tenant)

    def get_batch(self, tenant: str, batch_id: str) -> StoredBatch:
        """``tenant``'s batch; NotFound for another tenant's, as for none."""
        with self._session(f"read batch {batch_id!r}") as s:
            return _to_batch(_owned(s, tenant, batch_id), tenant)

    def list_batches(
        self, tenant: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[StoredBatch], bool]:
        """A page of ``tenant``'s batches, newest first, those after ``after``; and whether
        more follow."""
        with self._session(f"list the batches of tenant {tenant!r}") as s:
            owner = tenant_row(s, tenant)
            query = select(BatchRow).where(BatchRow.tenant_id == owner.id)
            if after is not None:
                mark = s.get(BatchRow, after)
                if mark is None or mark.tenant_id != owner.id:
                    raise NotFound(f"no batch with id {after!r} to list after", param="after")
                query = query.where(
                    (BatchRow.created_at < mark.created_at)
                    | ((BatchRow.created_at == mark.created_at) & (BatchRow.id < mark.id))
                )
            order = (BatchRow.created_at.desc(), BatchRow.id.desc())
            rows = list(s.scalars(query.order_by(*order).limit(limit + 1)))
            return [_to_batch(r, tenant) for r in rows[:limit]], len(rows) > limit

    def cancel_batch(self, tenant: str, batch_id: str) -> StoredBatch:
        """Ask ``tenant``'s batch to stop: ``cancelling`` (its runner ends it ``cancelled``);
        a batch already cancelling is left so; a finished one is a Conflict."""
        with self._write(f"cancel batch {batch_id!r}") as s:
            row = _owned(s, tenant, batch_id, lock=True)
            if row.status in ("validating", "in_progress"):
                row.status, row.cancelling_at = "cancelling", utcnow()
            elif row.status != "cancelling":
                raise Conflict(
                    f"batch {batch_id} is {row.status}: only a validating or in_progress batch "
                    "can be cancelled",
                    param="batch_id",
                )
            s.flush()
            return _to_batch(row, tenant)

    def delete_unread_file(self, tenant: str, file_id: str) -> tuple[StoredFile, bool]:
        """``delete_file``, refused (Conflict naming the batch) while a batch not finished
        reads the file: the check and the delete in one transaction, the file's row locked,
        so a batch created from it meanwhile is either seen or refused (NotFound)."""
        with self._write(f"delete file {file_id!r}") as s:
            row = owned_file_row(s, tenant, file_id, lock="update")
            reading = s.scalar(
                select(BatchRow.id).where(
                    BatchRow.tenant_id == row.tenant_id,
                    BatchRow.input_file_id == file_id,
                    BatchRow.status.in_(ACTIVE),
                )
            )
            if reading is not None:
                raise Conflict(
                    f"file {file_id} is the input of batch {reading}, which has not finished",
                    hint="Cancel the batch first (POST /v1/batches/{id}/cancel), or wait for it.",
                    param="file_id",
                )
            return remove_file_row(s, row, tenant)

    def purge_expired_files(self, limit: int = 100) -> list[tuple[StoredFile, bool]]:
        """Delete up to ``limit`` files whose time is up, but not the input of a batch not
        finished (it goes once the batch ends); each file and whether its bytes are now
        unused (then the caller deletes them)."""
        now = utcnow()
        with self._write("delete the expired files") as s:
            read = select(BatchRow.input_file_id).where(BatchRow.status.in_(ACTIVE))
            rows = s.scalars(
                select(FileRow)
                .where(FileRow.expires_at <= now, FileRow.id.not_in(read))
                .order_by(FileRow.expires_at)
                .limit(limit)
                .with_for_update()
            ).all()
            return [remove_file_row(s, row, _tenant_name(s, row.tenant_id)) for row in rows]

    # -- the runner's side: every change fenced by the batch's lease ---------------------------

    def unfinished_batches(self) -> dict[str, int]:
        """How many batches of every tenant are in each status not finished yet."""
        with self._session("count the batches not finished") as s:
            found = s.execute(
                select(BatchRow.status, func.count())
                .where(BatchRow.status.in_(ACTIVE))
                .group_by(BatchRow.status)
            ).all()
            return dict.fromkeys(ACTIVE, 0) | {str(k): int(n) for k, n in found}

    def batches_to_claim(self, limit: int) -> list[StoredBatch]:
        """At most ``limit`` batches not finished whose lease no replica holds, fairest
        first: a tenant's batches take turns with other tenants' (ranked by how many of its
        batches run now plus how many of its own come before), then oldest first. One query,
        however many batches wait (the runner's poll)."""
        now = utcnow()
        lease_of = literal("batch:").concat(BatchRow.id)
        held = exists().where(LeaseRow.name == lease_of, LeaseRow.expires_at >= now)
        running = (
            select(BatchRow.tenant_id, func.count().label("n"))
            .where(BatchRow.status.in_(ACTIVE), held)
            .group_by(BatchRow.tenant_id)
            .subquery()
        )
        waiting = (
            select(
                BatchRow.id,
                func.row_number()
                .over(
                    partition_by=BatchRow.tenant_id,
                    order_by=(BatchRow.created_at, BatchRow.id),
                )
                .label("turn"),
            )
            .where(BatchRow.status.in_(ACTIVE), ~held)
            .subquery()
        )
        turn = waiting.c.turn + func.coalesce(running.c.n, 0)
        with self._session("list the batches to run") as s:
            found = s.execute(
                select(BatchRow, TenantRow.name)
                .join(waiting, waiting.c.id == BatchRow.id)
                .join(TenantRow, TenantRow.id == BatchRow.tenant_id)
                .outerjoin(running, running.c.tenant_id == BatchRow.tenant_id)
                .order_by(turn, BatchRow.created_at, BatchRow.id)
                .limit(limit)
            ).all()
            return [_to_batch(row, name) for row, name in found]

    def batch(self, batch_id: str) -> StoredBatch:
        """The batch ``batch_id``, whoever's it is (the runner's read)."""
        with self._session(f"read batch {batch_id!r}") as s:
            row = s.get(BatchRow, batch_id, populate_existing=True)
            if row is None:
                raise NotFound(f"no batch with id {batch_id!r}")
            return _to_batch(row, _tenant_name(s, row.tenant_id))

    def start_batch(
        self,
        batch_id: str,
        holder: str,
        *,
        total: int,
        errors: Sequence[Mapping[str, Any]],
        model: str | None = None,
    ) -> StoredBatch:
        """Its input checked: ``in_progress`` with ``total`` lines, or (``errors``) ``failed``;
        either way ``model`` is the one model its lines name (None: several, or none). A
        batch cancelled while it was validated stays ``cancelling``, with its total."""
        with self._fenced(batch_id, holder, "start") as (s, row):
            now = utcnow()
            row.model = model
            if errors:
                row.status, row.failed_at, row.errors = "failed", now, [dict(e) for e in errors]
            else:
                row.total = total
                row.in_progress_at = row.in_progress_at or now
                if row.status == "validating":
                    row.status = "in_progress"
            return _to_batch(row, _tenant_name(s, row.tenant_id))

    def done_lines(self, batch_id: str) -> set[int]:
        """The lines of the batch committed so far."""
        with self._session(f"read the lines of batch {batch_id!r}") as s:
            return set(
                s.scalars(select(BatchLineRow.line).where(BatchLineRow.batch_id == batch_id))
            )

    def commit_lines(
        self, batch_id: str, holder: str, lines: Sequence[LineOutput]
    ) -> tuple[str, datetime]:
        """Keep ``lines`` and count them, at once; returns the batch's status (a cancel
        asked meanwhile shows as ``cancelling``) and expiry. LeaseLost when another runs
        it now."""
        with self._fenced(batch_id, holder, "commit lines of") as (s, row):
            known = set(
                s.scalars(
                    select(BatchLineRow.line).where(
                        BatchLineRow.batch_id == batch_id,
                        BatchLineRow.line.in_([x.line for x in lines]),
                    )
                )
            )
            for x in lines:
                if x.line in known:
                    continue
                s.add(BatchLineRow(batch_id=batch_id, line=x.line, ok=x.ok, output=x.output))
                if x.ok:
                    row.completed += 1
                else:
                    row.failed += 1
            return str(row.status), row.expires_at

    def mark_batch(self, batch_id: str, holder: str, status: str) -> StoredBatch:
        """Move the batch to ``status`` (``finalizing``), stamping the time it did."""
        with self._fenced(batch_id, holder, "update") as (s, row):
            row.status = status
            setattr(row, f"{status}_at", getattr(row, f"{status}_at") or utcnow())
            return _to_batch(row, _tenant_name(s, row.tenant_id))

    def batch_lines(self, batch_id: str, page: int = 1000) -> Iterator[LineOutput]:
        """The committed lines, in order, read a page at a time."""
        last = 0
        while True:
            with self._session(f"read the lines of batch {batch_id!r}") as s:
                rows = list(
                    s.scalars(
                        select(BatchLineRow)
                        .where(BatchLineRow.batch_id == batch_id, BatchLineRow.line > last)
                        .order_by(BatchLineRow.line)
                        .limit(page)
                    )
                )
                found = [LineOutput(r.line, r.ok, r.output) for r in rows]
            yield from found
            if len(found) < page:
                return
            last = found[-1].line

    def finish_batch(
        self, batch_id: str, holder: str, status: str, files: Sequence[OutputFile]
    ) -> StoredBatch:
        """End the batch ``status`` (completed, cancelled, expired) with its output and
        error ``files`` made files of its tenant (purpose ``batch_output``), expiring
        ``output_expires_s`` after (as the batch was created); its lines go."""
        with self._fenced(batch_id, holder, "finish") as (s, row):
            for f in files:
                made = add_file_row(
                    s, row.tenant_id, filename=f.filename, purpose="batch_output", size=f.size,
                    digest=f.digest, api_key_id=row.api_key_id, expires_s=row.output_expires_s,
                )  # fmt: skip
                if f.kind == "output":
                    row.output_file_id = made.id
                else:
                    row.error_file_id = made.id
            row.status = status
            setattr(row, f"{status}_at", utcnow())
            row.input_tokens, row.output_tokens = _job_tokens(s, batch_id)
            s.execute(delete(BatchLineRow).where(BatchLineRow.batch_id == batch_id))
            return _to_batch(row, _tenant_name(s, row.tenant_id))

    def _fenced(self, batch_id: str, holder: str, what: str) -> Any:
        return _Fenced(self, batch_id, holder, what)


class _Fenced:
    """A write transaction on one batch's row, refused (LeaseLost) unless ``holder`` holds
    its lease, which cannot change hands until it commits."""

    def __init__(self, store: BatchStore, batch_id: str, holder: str, what: str) -> None:
        self.store, self.batch_id, self.holder, self.what = store, batch_id, holder, what
        self._cm: Any = None

    def __enter__(self) -> tuple[Session, BatchRow]:
        self._cm = self.store._write(f"{self.what} batch {self.batch_id!r}")
        s: Session = self._cm.__enter__()
        try:
            if not holds_lease(s, f"batch:{self.batch_id}", self.holder):
                raise LeaseLost(f"this server no longer runs batch {self.batch_id}")
            row = s.get(BatchRow, self.batch_id, with_for_update=True, populate_existing=True)
            if row is None:
                raise NotFound(f"no batch with id {self.batch_id!r}")
        except BaseException as exc:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return s, row

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


def _owned(s: Session, tenant: str, batch_id: str, *, lock: bool = False) -> BatchRow:
    """``tenant``'s batch ``batch_id``, in one query whether it is missing or another
    tenant's (the same answer, the same work: its time tells nothing either)."""
    owner = select(TenantRow.id).where(TenantRow.name == tenant).scalar_subquery()
    query = select(BatchRow).where(BatchRow.id == batch_id, BatchRow.tenant_id == owner)
    if lock:
        query = query.with_for_update(of=BatchRow)
    row = s.scalar(query.execution_options(populate_existing=True))
    if row is None:
        raise NotFound(
            f"no batch with id {batch_id!r}",
            hint="List your batches with GET /v1/batches.",
            param="batch_id",
        )
    return row


def _tenant_name(s: Session, tenant_id: int) -> str:
    return str(s.scalar(select(TenantRow.name).where(TenantRow.id == tenant_id)))


def _to_batch(row: BatchRow, tenant: str) -> StoredBatch:
    times = {k: v for k in _STEPS if (v := getattr(row, f"{k}_at")) is not None}
    return StoredBatch(
        row.id, tenant, row.api_key_id, row.endpoint, row.input_file_id, row.completion_window,
        row.status, tuple(row.errors) if row.errors is not None else None,
        dict(row.meta) if row.meta is not None else None, row.output_file_id, row.error_file_id,
        row.total, row.completed, row.failed, row.created_at, row.expires_at, times,
        None if row.input_tokens is None else (row.input_tokens, row.output_tokens or 0),
        row.model,
    )  # fmt: skip


def _job_tokens(s: Session, batch_id: str) -> tuple[int, int]:
    """The input and output tokens of the batch's records (its lines' requests)."""
    r = InferenceRecordRow
    found = s.execute(
        select(func.sum(r.prompt_tokens), func.sum(r.completion_tokens)).where(r.job_id == batch_id)
    ).one()
    return int(found[0] or 0), int(found[1] or 0)


__all__ = [
    "ACTIVE",
    "BatchLineRow",
    "BatchRow",
    "BatchStore",
    "LeaseLost",
    "LineOutput",
    "OutputFile",
    "StoredBatch",
]
