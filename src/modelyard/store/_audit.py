"""Audited writes inside a store transaction: serializing appends, hashing, roles.

Appends are serialized so that concurrent writers (threads, processes, machines)
build one linear chain: on SQLite every write transaction starts with ``BEGIN
IMMEDIATE`` (the database write lock, taken before anything is read); on
PostgreSQL the append takes a transaction-scoped advisory lock, held until
commit. The primary key on ``seq`` is the last line of defence.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, event, select, text
from sqlalchemy.orm import Session

from modelyard.audit import (
    EMPTY_HEAD,
    GENESIS,
    AccessPolicy,
    AuditEvent,
    AuditHead,
    AuditKeySource,
    Role,
    check_role,
    event_hash,
    hash_of,
    head_problem,
    normalize_payload,
)
from modelyard.errors import AuditChainBroken, AuditKeyMismatch, ConfigError
from modelyard.store._schema import ActorRow, AuditEventRow, AuditHeadRow, utcnow

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


def _lock_chain(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": AUDIT_LOCK_ID})


def last_event(s: Session) -> AuditEvent | None:
    row = s.execute(
        select(AuditEventRow)
        .order_by(AuditEventRow.seq.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return None if row is None else to_event(row)


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


def append_event(
    s: Session,
    source: AuditKeySource,
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None,
) -> AuditEvent:
    """Append one event in the session's transaction (flushes pending changes first)."""
    body = normalize_payload(payload)
    s.flush()  # row locks of the change are taken before the chain lock, never after
    _lock_chain(s)
    last = last_event(s)
    problem = head_problem(head_of(last), recorded_head(s))
    if problem is not None:
        # never start a new chain over removed events (nor extend one that was cut)
        raise AuditChainBroken(
            f"refusing to append to the audit chain, broken at seq {problem[0]}: {problem[1]}",
            hint="Nothing was changed. Restore the audit_events table from a backup, then "
            "run `modelyard audit verify`; until then the store accepts no audited change.",
            first_bad_seq=problem[0],
        )
    key = source.load(create=last is None)
    if last is not None:
        check_key(key, last, source)
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
