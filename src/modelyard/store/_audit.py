"""Audited writes inside a store transaction: serializing appends, hashing, roles.

Appends are serialized so that concurrent writers (threads, processes, machines)
build one linear chain: on SQLite every write transaction starts with ``BEGIN
IMMEDIATE`` (the database write lock, taken before anything is read); on
PostgreSQL the append takes a transaction-scoped advisory lock, held until
commit. The primary key on ``seq`` is the last line of defence.

Before each append the chain's end is checked in O(1) rows: no break recorded and
left unacknowledged (``audit_breaks``), the newest event is the recorded head, and
the two newest events carry the hashes of their content and link to each other. A
break found there is refused (``AuditChainBroken``) and recorded by the caller.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, event, select, text, update
from sqlalchemy.orm import Session

from modelyard.audit import (
    ACK_ACTION,
    EMPTY_HEAD,
    GENESIS,
    HASH_REASON,
    AccessPolicy,
    AuditEvent,
    AuditHead,
    AuditKeySource,
    BreakFound,
    ChainBreak,
    RecordedBreak,
    Role,
    check_role,
    event_hash,
    hash_of,
    head_problem,
    link_reason,
    missing_reason,
    normalize_payload,
)
from modelyard.errors import AuditChainBroken, AuditKeyMismatch, ConfigError
from modelyard.store._schema import ActorRow, AuditBreakRow, AuditEventRow, AuditHeadRow, utcnow

WRITE_OPTION = "modelyard_write"
"""Execution option marking the engine of write transactions (BEGIN IMMEDIATE on SQLite)."""

AUDIT_LOCK_ID = 0x6D79_6175_6469_7431  # "myaudit1": pg_advisory_xact_lock key of the chain

_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_ACTOR_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,200}$")


def check_action(action: str) -> str:
    if not _ACTION_RE.match(action) or len(action) > 100:
        raise ConfigError(
            f"invalid audit action {action!r}: use dotted lowercase words such as "
            "'model_version.registered'"
        )
    return action


def check_actor(name: str) -> str:
    if not _ACTOR_RE.match(name):
        raise ConfigError(
            f"invalid actor name {name!r}: use 1-200 characters without spaces",
            hint="Pass --actor NAME or set MODELYARD_ACTOR.",
        )
    return name


def check_subject(subject: str) -> str:
    if not subject or len(subject) > 300:
        raise ConfigError(f"invalid audit subject {subject!r}: use 1-300 characters")
    return subject


# -- transactions --------------------------------------------------------------------------


def _sqlite_begin(conn: Connection) -> None:
    # pysqlite would otherwise begin transactions itself, lazily and DEFERRED; the
    # documented recipe is to switch that off and emit BEGIN here (see SQLAlchemy's
    # "Serializable isolation / Savepoints / Transactional DDL" notes for pysqlite).
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and dbapi.isolation_level is not None:
        dbapi.isolation_level = None
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def install_sqlite_hooks(engine: Engine) -> None:
    """Make SQLite transactions explicit: ``BEGIN IMMEDIATE`` for writes, ``BEGIN`` for reads."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "begin", _sqlite_begin):
        event.listen(engine, "begin", _sqlite_begin)


def write_engine(engine: Engine) -> Engine:
    return engine.execution_options(**{WRITE_OPTION: True})


# -- the chain -----------------------------------------------------------------------------


def lock_chain(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": AUDIT_LOCK_ID})


UNREADABLE_TIME = datetime(1970, 1, 1, tzinfo=UTC)
"""The time given to an event whose stored row cannot be read (see ``read_events``)."""


def read_events(s: Session, query: Select[Any]) -> list[AuditEvent]:
    """The events ``query`` selects, in its order.

    SQLite keeps whatever text a column is given: a row whose time was edited to
    something that is no date, or whose payload to something that is no JSON, cannot
    be loaded. Such a row becomes an event carrying its stored hashes, an
    ``unreadable`` payload saying why, and ``UNREADABLE_TIME``: it cannot verify, so
    verification and the check before each write name its seq as an edited event,
    instead of every read of the chain failing with the database's error.
    """
    query = query.execution_options(populate_existing=True)
    try:
        return [to_event(r) for r in s.scalars(query)]
    except ValueError:  # a date or JSON parser's (JSONDecodeError is one); no SQL failed
        pass
    seqs = s.scalars(query.with_only_columns(AuditEventRow.seq)).all()
    return [_read_one(s, seq) for seq in seqs]


def _read_one(s: Session, seq: int) -> AuditEvent:
    try:
        row = s.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.seq == seq)
            .execution_options(populate_existing=True)
        ).one()
        return to_event(row)
    except ValueError as exc:
        why = f"the stored row cannot be read: {str(exc).splitlines()[0][:200]}"
    cols = AuditEventRow
    actor, action, subject, prev_hash, digest = s.execute(
        select(cols.actor, cols.action, cols.subject, cols.prev_hash, cols.hash)
        .where(cols.seq == seq)
    ).one()  # fmt: skip
    return AuditEvent(
        seq, UNREADABLE_TIME, actor, action, subject, {"unreadable": why}, prev_hash, digest
    )


def newest_events(s: Session, n: int = 1) -> list[AuditEvent]:
    """The ``n`` newest events, newest first."""
    return read_events(s, select(AuditEventRow).order_by(AuditEventRow.seq.desc()).limit(n))


def last_event(s: Session) -> AuditEvent | None:
    newest = newest_events(s)
    return newest[0] if newest else None


def events_in_order(s: Session, page: int = 1000) -> Iterator[AuditEvent]:
    """Every event in ``seq`` order, read page by page in ``s``'s transaction."""
    after = 0
    while True:
        events = read_events(
            s,
            select(AuditEventRow).where(AuditEventRow.seq > after).order_by(AuditEventRow.seq)
            .limit(page),
        )  # fmt: skip
        yield from events
        if len(events) < page:
            return
        after = events[-1].seq


HEAD_ID = 1  # the one row of audit_head


def recorded_head(s: Session) -> AuditHead | None:
    """The head the store recorded with its last append (None: the row was deleted)."""
    row = s.get(AuditHeadRow, HEAD_ID, populate_existing=True)
    return None if row is None else AuditHead(row.seq, row.hash)


def head_of(last: AuditEvent | None) -> AuditHead:
    return EMPTY_HEAD if last is None else AuditHead(last.seq, last.hash)


def to_event(r: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        r.seq, r.time, r.actor, r.action, r.subject, dict(r.payload), r.prev_hash, r.hash
    )


def check_key(key: bytes, last: AuditEvent, source: AuditKeySource) -> None:
    """Refuse to extend a chain whose newest event our key does not verify."""
    if not hmac.compare_digest(hash_of(key, last), last.hash):
        raise AuditKeyMismatch(
            f"the audit key from {source.description} does not verify the newest audit "
            f"event (seq {last.seq}): the chain was written with another key, or that "
            "event was altered",
            hint="Use the key that wrote the chain (copy its key file, or set "
            "MODELYARD_AUDIT_KEY); `modelyard audit verify` names the first bad event.",
        )


# -- breaks --------------------------------------------------------------------------------


def to_break(r: AuditBreakRow) -> RecordedBreak:
    found_in: BreakFound = "verify" if r.found_in == "verify" else "write"
    return RecordedBreak(r.seq, r.reason, r.found_at, r.found_by, found_in, r.acknowledged_seq)


def open_breaks(s: Session, limit: int | None = None) -> list[RecordedBreak]:
    """Recorded breaks no acknowledgment closed yet, the first seq first."""
    query = (
        select(AuditBreakRow)
        .where(AuditBreakRow.acknowledged_seq.is_(None))
        .order_by(AuditBreakRow.seq, AuditBreakRow.id)
    )
    return [to_break(r) for r in s.scalars(query if limit is None else query.limit(limit))]


def record_break(s: Session, brk: ChainBreak, *, actor: str, found_in: BreakFound) -> bool:
    """Record ``brk`` unless an open record names its seq already; whether it was new."""
    lock_chain(s)
    known = s.scalar(
        select(AuditBreakRow.id)
        .where(AuditBreakRow.acknowledged_seq.is_(None), AuditBreakRow.seq == brk.seq)
        .limit(1)
    )
    if known is not None:
        return False
    s.add(AuditBreakRow(seq=brk.seq, reason=brk.reason, found_by=actor, found_in=found_in))
    return True


def close_breaks(s: Session, ack_seq: int) -> None:
    """Every open record is acknowledged by the event ``ack_seq``."""
    s.execute(
        update(AuditBreakRow)
        .where(AuditBreakRow.acknowledged_seq.is_(None))
        .values(acknowledged_seq=ack_seq)
    )


def refuse(brk: ChainBreak | RecordedBreak, *, recorded: bool) -> AuditChainBroken:
    """The refusal of an append to a broken chain; ``recorded``: the break is on record."""
    said = f"{brk.reason} ({brk.describe()})" if isinstance(brk, RecordedBreak) else brk.reason
    return AuditChainBroken(
        f"refusing to append to the audit chain, broken at seq {brk.seq}: {said}",
        hint="Nothing was changed, and no audited change is accepted until the break is "
        "dealt with: find out why (`modelyard audit verify`, `modelyard audit log`, a backup "
        "or an export), then restore the audit tables from a backup, or have an admin "
        'acknowledge the break: `modelyard audit acknowledge --reason "why"` (audited; the '
        "break stays on record).",
        first_bad_seq=brk.seq,
        reason=brk.reason,
        unrecorded=not recorded,
    )


def tail_break(
    key: bytes, source: AuditKeySource, newest: AuditEvent, before: AuditEvent | None
) -> ChainBreak | None:
    """The O(1) check of the chain's end: the newest event and the one before it.

    When the key verifies neither, it is the wrong key (AuditKeyMismatch), not a
    break: one misconfigured machine must not stop every writer.
    """
    newest_ok = hmac.compare_digest(hash_of(key, newest), newest.hash)
    before_ok = before is None or hmac.compare_digest(hash_of(key, before), before.hash)
    if not newest_ok and (before is None or not before_ok):
        check_key(key, newest, source)
    prev_seq, prev_hash = (0, GENESIS) if before is None else (before.seq, before.hash)
    if newest.seq != prev_seq + 1:
        return ChainBreak(prev_seq + 1, missing_reason(prev_seq + 1, newest.seq))
    if newest.prev_hash != prev_hash:
        return ChainBreak(newest.seq, link_reason(newest.seq))
    if not newest_ok:
        return ChainBreak(newest.seq, HASH_REASON)
    if before is not None and not before_ok and not _acknowledges(newest, before.seq):
        return ChainBreak(before.seq, HASH_REASON)
    return None


def _acknowledges(event: AuditEvent, seq: int) -> bool:
    """``event`` is an acknowledgment listing a break at ``seq``."""
    listed = event.payload.get("breaks") if event.action == ACK_ACTION else None
    return isinstance(listed, list) and any(
        isinstance(b, Mapping) and b.get("seq") == seq for b in listed
    )


def check_chain_end(s: Session, source: AuditKeySource) -> tuple[AuditEvent | None, bytes]:
    """Refuse (AuditChainBroken) unless the chain may be extended; its newest event and
    the key. Costs a fixed number of rows, whatever the chain's length."""
    first_open = open_breaks(s, limit=1)
    if first_open:
        raise refuse(first_open[0], recorded=True)
    newest = newest_events(s, 2)
    last = newest[0] if newest else None
    problem = head_problem(head_of(last), recorded_head(s))
    if problem is not None:
        # never start a new chain over removed events (nor extend one that was cut)
        raise refuse(ChainBreak(*problem), recorded=False)
    key = source.load(create=last is None)
    if last is not None:
        brk = tail_break(key, source, last, newest[1] if len(newest) > 1 else None)
        if brk is not None:
            raise refuse(brk, recorded=False)
    return last, key


def append_event(
    s: Session,
    source: AuditKeySource,
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None,
    after: tuple[AuditEvent | None, bytes] | None = None,
) -> AuditEvent:
    """Append one event in the session's transaction (flushes pending changes first).

    ``after`` (the newest event and the key) skips the check of the chain's end: only
    for an acknowledgment, which verified the whole chain under the lock itself.
    """
    body = normalize_payload(payload)
    s.flush()  # row locks of the change are taken before the chain lock, never after
    lock_chain(s)
    last, key = check_chain_end(s, source) if after is None else after
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.hash
    now = utcnow()
    digest = event_hash(
        key, prev, seq=seq, time=now, actor=actor, action=action, subject=subject, payload=body
    )
    row = AuditEventRow(
        seq=seq,
        time=now,
        actor=actor,
        action=action,
        subject=subject,
        payload=body,
        prev_hash=prev,
        hash=digest,
    )
    s.add(row)
    s.merge(AuditHeadRow(id=HEAD_ID, seq=seq, hash=digest, updated_at=now))
    s.flush()
    return to_event(row)


# -- roles ---------------------------------------------------------------------------------


def has_admin(s: Session) -> bool:
    return s.scalar(select(ActorRow.name).where(ActorRow.role == "admin").limit(1)) is not None


def effective_role(s: Session, policy: AccessPolicy, name: str) -> Role:
    """The recorded role; else admin for the bootstrap admin while no admin is recorded."""
    row = s.get(ActorRow, name)
    if row is not None:
        return check_role(row.role)
    if policy.bootstrap_admin is not None and name == policy.bootstrap_admin and not has_admin(s):
        return "admin"
    return policy.default_role
