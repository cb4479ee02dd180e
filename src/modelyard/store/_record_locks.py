"""The order in which record paths lock rows, and their statements that lock them.

Lock order (PostgreSQL; SQLite writes one transaction at a time): a transaction that
changes records locks their rows first, by id (``ORDER BY id FOR UPDATE``): an end
written over its running row (``update_running``), a close of a stopped server's running
rows (sealed: read locked, then updated by primary key; unsealed: ``close_unsealed``, one
UPDATE whose subquery locks them first), a resumed batch job's discard. Then the
``usage_days`` rows, in one upsert in key order (``_usage.add_usage``), then the audit
chain's advisory lock (an anchor, an audited event). Two such transactions over the same
rows wait for each other and never deadlock (PostgreSQL rolled one back, and the record
writer lost its batch). By id, not by time: an end changes its row's time, and two
transactions that read it before and after the end sorted it apart.

A recount of the usage locks no record; it takes ``usage_days`` whole (``_retention``),
before any of its rows. A write PostgreSQL rolls back anyway (a deadlock with a
transaction that locks otherwise) is tried again by ``add_monitored_records``
(``rolled_back``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import String, Table, Update, any_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from modelyard.errors import Conflict
from modelyard.store._schema import InferenceRecordRow
from modelyard.store._usage import USAGE_COLUMNS


@functools.cache
def close_unsealed(dialect: str) -> Update:
    """The unsealed close of the running records of servers ``server_ids`` (a list) as
    failed with error ``close_error``, returning their ``USAGE_COLUMNS`` (built once).

    On PostgreSQL it locks them by id first: ``id = ANY(ARRAY(SELECT id ... ORDER BY id
    FOR UPDATE))``, a subquery run once that locks them all in order before any is
    updated (found then by primary key). An UPDATE alone locks its rows in the order it
    scans them, and deadlocked with the ends locking theirs by id."""
    t = cast(Table, InferenceRecordRow.__table__)
    servers: BindParameter[Any] = bindparam("server_ids", expanding=True)
    if dialect == "postgresql":
        o = t.alias("locked")
        ids = select(o.c.id).where(o.c.status == "running", o.c.server_id.in_(servers))
        locked = ids.order_by(o.c.id).with_for_update().scalar_subquery()
        where: tuple[Any, ...] = (t.c.id == any_(func.array(locked)),)
    else:  # SQLite: one writer at a time
        where = (t.c.status == "running", t.c.server_id.in_(servers))
    return (
        update(t).where(*where)
        .values(status="error", http_status=500, error=bindparam("close_error"))
        .returning(*(t.c[name] for name in USAGE_COLUMNS))
    )  # fmt: skip


def update_running(
    s: Session, updates: Sequence[dict[str, Any]]
) -> tuple[set[str], list[dict[str, Any]]]:
    """Before the ends ``updates`` are written over their ``running`` rows: the ids of the
    rows gone (a resumed batch job discarded them: their ends update nothing and count
    nothing), and the usage to take back (``add_usage``'s rows, negated) of the rows a
    close already ended and counted (their server was taken for dead, yet ran on: the end
    is written over the close, and counts once). The rows are locked by id, the order in
    which every path locks records (the module's lock order): a close or a
    discard under way is waited for, and then seen. Not by time: an end changes its row's
    time, and two transactions that read it before and after sorted it apart."""
    r = InferenceRecordRow
    ids = [u["id"] for u in updates]
    columns = (r.id, *(getattr(r, name) for name in USAGE_COLUMNS))
    if s.get_bind().dialect.name == "postgresql":  # one array: an IN of 256 ids plans slowly
        mine = r.id == any_(bindparam("ids", ids, type_=postgresql.ARRAY(String)))
    else:
        mine = r.id.in_(ids)
    query = select(*columns).where(mine).order_by(r.id)
    found = {m["id"]: m for m in s.execute(query.with_for_update()).mappings()}
    taken_back = [
        dict(m) | {"requests": -1, "prompt_tokens": -(m["prompt_tokens"] or 0),
                   "completion_tokens": -(m["completion_tokens"] or 0)}
        for m in found.values() if m["status"] != "running"
    ]  # fmt: skip
    return set(ids) - set(found), taken_back


def rolled_back(exc: Conflict) -> bool:
    """Whether PostgreSQL rolled the transaction back (a deadlock's victim, a serialization
    failure: SQLSTATE class 40), so that trying it again may commit it."""
    orig = getattr(exc.__cause__, "orig", None)
    state = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    return isinstance(exc.__cause__, OperationalError) and state.startswith("40")


__all__ = ["close_unsealed", "rolled_back", "update_running"]
