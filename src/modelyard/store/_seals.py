"""Sealing inference records in the transaction that writes them (issue 19).

Design (the encoding and the tree: ``modelyard.audit._seals`` and ``_merkle``):

- **What is sealed.** A record in its final state, never a ``running`` one. The
  record writer seals, in each transaction it writes, the records that reach their
  final state there: new ones, and ``running`` rows of the request journal that their
  end updates. ``close_running_records`` seals the rows it closes (a stopped server's
  requests). Each final record is sealed once: nothing updates it afterwards
  (feedback and features live in tables of their own and are not sealed).
- **How a root finds its leaves.** Every sealed row carries ``seal`` (the seal's
  random id) and ``seal_pos`` (its leaf's position). The batch's ``records.sealed``
  audit event (appended in the same transaction, after the rows, so row locks come
  before the chain's lock as everywhere else) holds the root, the count, the first and
  last record time and the hash of the seal's *index*. The index (``record_seals``:
  per position the record's id, tenant and time, and the leaf hashes) is what names a
  record once it is edited or gone: its leaves are authentic when they give the
  chain's root, its ids, tenants and times when they give the chain's index hash.
- **What verification finds** (``_seal_check``): an edited record (its leaf is not the
  sealed one), a deleted one (a position with no row, not explained by retention or by
  a batch job's replacement, which are audited: ``records.purged`` says which tenant's
  records before which time went, ``records.discarded`` lists ids), an inserted one (a
  final record with no seal, younger than the first seal; or a row claiming a position
  that holds another id, or a seal no event holds). Because a record and its seal
  commit together, no record is ever final and unsealed in between: there is no
  flush horizon to wait for.
- **Retention.** Records go, seals stay: the chain's events are never deleted and
  neither are ``record_seals`` rows, so what remains still verifies and the purge is
  on record.
- **Cost.** Per batch: one canonical encoding and SHA-256 per record, the tree
  (about one more hash per record), one audit event and one ``record_seals`` row. On
  PostgreSQL the chain's advisory lock is taken only after the rows are written and
  held to commit, as for every audited change; writers of several servers queue
  there for one event each, never for their rows.

When the chain refuses (a recorded break, a wrong or missing key), the writer keeps
the records and writes them unsealed (``monitoring.RecordWriter``): verification then
reports them, rather than losing inference records to an audit problem.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, LargeBinary, String, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelyard.audit import (
    FINAL_STATUSES,
    SEAL_ACTION,
    AuditEvent,
    AuditKeySource,
    format_time,
    merkle_root,
    record_leaf,
    seal_payload,
)
from modelyard.store import _audit
from modelyard.store._schema import Base, utcnow


class RecordSealRow(Base):
    """A seal's index: per leaf position the record's id, tenant, time and leaf hash."""

    __tablename__ = "record_seals"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    audit_seq: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ids: Mapped[list[Any]]
    tenants: Mapped[list[Any]]
    times: Mapped[list[Any]]
    leaves: Mapped[bytes] = mapped_column(LargeBinary)


def split_leaves(blob: bytes) -> list[bytes]:
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]


@dataclass(frozen=True)
class PendingSeal:
    """The seal of a batch, its rows marked and not written yet."""

    id: str
    ids: list[str]
    tenants: list[int | None]
    times: list[str]
    leaves: list[bytes]


def prepare_seal(
    rows: Sequence[dict[str, Any]], leaves: Mapping[str, bytes] | None = None
) -> PendingSeal | None:
    """Give each row in a final state its ``seal`` and ``seal_pos`` (in place; the others
    get none); the seal, or None when no row is final. ``leaves``: leaf hashes by record
    id already computed from the same values (the writer computes them off its thread)."""
    known = leaves or {}
    final = [row for row in rows if row["status"] in FINAL_STATUSES]
    for row in rows:
        row["seal"] = row["seal_pos"] = None
    if not final:
        return None
    seal = uuid.uuid4().hex
    for pos, row in enumerate(final):
        row["seal"], row["seal_pos"] = seal, pos
    return PendingSeal(
        id=seal,
        ids=[str(row["id"]) for row in final],
        tenants=[row["tenant_id"] for row in final],
        times=[format_time(row["created_at"]) for row in final],
        leaves=[known.get(row["id"]) or record_leaf(row) for row in final],
    )


def append_seal(
    s: Session,
    source: AuditKeySource,
    actor: str,
    seal: PendingSeal,
    *,
    closed: str | None = None,
) -> AuditEvent:
    """Append the seal's ``records.sealed`` event and write its index, in ``s``'s
    transaction (after its rows: the chain's lock is taken last)."""
    root = merkle_root(seal.leaves)
    payload = seal_payload(seal.id, root, seal.ids, seal.tenants, seal.times, closed=closed)
    event = _audit.append_event(
        s, source, actor=actor, action=SEAL_ACTION, subject=f"seal:{seal.id}", payload=payload
    )
    leaves = b"".join(seal.leaves)
    index = {"id": seal.id, "audit_seq": event.seq, "created_at": event.time}
    index |= {"ids": seal.ids, "tenants": seal.tenants, "times": seal.times, "leaves": leaves}
    s.execute(insert(RecordSealRow), [index])
    return event


__all__ = ["PendingSeal", "RecordSealRow", "append_seal", "prepare_seal", "split_leaves"]
