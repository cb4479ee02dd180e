"""Sealing inference records in the transaction that writes them (issue 19).

Design (the encoding and the tree: ``modelyard.audit._seals`` and ``_merkle``):

- **What is sealed.** A record in its final state, never a ``running`` one. The
  record writer seals, in each transaction it writes, the records that reach their
  final state there: new ones, and ``running`` rows of the request journal that their
  end updates. ``close_running_records`` seals the rows it closes (a stopped server's
  requests). Each final record is sealed once: nothing updates it afterwards
  (feedback and features live in tables of their own and are not sealed).
- **How a root finds its leaves.** The seal's *index* (``record_seals``: per position
  the record's id, tenant and time, and the leaf hashes), written in the same
  transaction, is what finds a seal's records and names one once it is edited or
  gone: its leaves are authentic when they give the seal's root, its ids, tenants and
  times when they give the seal's index hash, both as an anchor lists them. The
  record rows carry nothing of their seal (migration 0018 dropped the ``seal`` and
  ``seal_pos`` columns 0016 had added: two more values per row cost the writer more
  than the rest of sealing); verification maps ids to seals from the index rows.
- **Anchors.** No audit event is written with the records: the writer appends one
  ``records.anchored`` event at most every ``anchor_s`` seconds (and on flush and
  close), listing the seals it wrote since its previous anchor (id, count, root, index
  hash) and the Merkle root over them. Nothing else is written: the index rows are not
  marked (an UPDATE rewrites a whole row, its ids and leaves too, which cost the
  writer as much as writing it); an inclusion proof finds its seal's anchor among the
  anchors written after the seal. One server at one request a second writes one
  event per anchor interval, not one per request. Until its anchor, a seal vouches for
  nothing: someone with write access to the database could rewrite a record and its
  seal row together unnoticed in that window (seconds). A seal that no anchor lists is
  reported by verification as pending while younger than ``UNANCHORED_GRACE``, as a
  problem (``unanchored``) afterwards: its server stopped before anchoring it, or the
  seal row was forged. ``close_running_records`` and callers of the store without a
  writer seal and anchor in one transaction (one event).
- **What verification finds** (``_seal_check``): an edited record (its leaf is not the
  sealed one), a deleted one (a position with no row, not explained by retention or by
  a batch job's replacement, which are audited: ``records.purged`` says which tenant's
  records before which time went, ``records.discarded`` lists ids), an inserted one (a
  final record with no seal, younger than the first seal; or a row claiming a position
  that holds another id, or a seal with no index row and no anchor). Because a record
  and its seal commit together, no record is ever final and unsealed in between.
- **Retention.** Records go, seals stay: the chain's events are never deleted and
  neither are ``record_seals`` rows, so what remains still verifies and the purge is
  on record.
- **Cost.** Per batch: one canonical encoding and SHA-256 per record, the tree
  (about one more hash per record) and one ``record_seals`` row, its lists encoded
  once by orjson (the bytes the index hash is taken of); the chain is not touched.
  Per anchor: one audit event. On PostgreSQL the chain's advisory lock is held from
  the event to commit, as for every audited change. The cost on the writer's ingest
  rate is measured by ``benchmarks/monitoring.py --seals-only``.

When the chain refuses an anchor (a recorded break, a wrong or missing key), the
records are written and sealed already; the writer logs it, counts them
(``RecordWriter.unanchored``) and tries again at the next interval: verification
reports their seals as unanchored once the grace period is over.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Dialect, LargeBinary, String, column, insert, table
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from modelyard.audit import (
    ANCHOR_ACTION,
    FINAL_STATUSES,
    AuditEvent,
    AuditKeySource,
    SealEntry,
    anchor_payload,
    blob_root,
    index_bytes,
    seal_entry,
    seal_rows,
)
from modelyard.store import _audit
from modelyard.store._schema import Base, UTCDateTime, utcnow

# A seal younger than this with no anchor is pending (its writer anchors every few
# seconds); older, verification reports it: the writer's anchor interval plus slack.
UNANCHORED_GRACE = timedelta(minutes=2)


class RecordSealRow(Base):
    """A seal's index: per leaf position the record's id, tenant, time and leaf hash. The
    ``records.anchored`` event vouching for it lists it; the row is never updated."""

    __tablename__ = "record_seals"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ids: Mapped[list[Any]]
    tenants: Mapped[list[Any]]
    times: Mapped[list[Any]]
    leaves: Mapped[bytes] = mapped_column(LargeBinary)


class _EncodedJSON(TypeDecorator[Any]):
    """A JSON column bound from text already encoded (orjson, once, by ``write_seal``):
    the column's type (PostgreSQL's cast to JSON included) without encoding it again."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


_INSERT = insert(
    table(
        RecordSealRow.__tablename__,
        column("id", String(32)),
        column("created_at", UTCDateTime()),
        column("ids", _EncodedJSON()),
        column("tenants", _EncodedJSON()),
        column("times", _EncodedJSON()),
        column("leaves", LargeBinary()),
    )
)


# Seal ids: 128 random bits from a generator seeded by the OS (again in a forked child),
# not uuid4: its os.urandom per call releases the GIL, and a writer thread sharing the
# GIL with busy request threads waited milliseconds per seal to take it back. An id
# only has to be unique (the chain's keyed hashes vouch for the seals, not their ids).
_seal_ids = random.Random()
os.register_at_fork(after_in_child=_seal_ids.seed)


def new_seal_id() -> str:
    return f"{_seal_ids.getrandbits(128):032x}"


@dataclass(frozen=True)
class PendingSeal:
    """The seal of a batch, not written yet."""

    id: str
    ids: list[str]
    tenants: list[int | None]
    times: list[str]
    leaves: bytes  # 32 bytes a record, in the order of ids


def prepare_seal(rows: Sequence[dict[str, Any]]) -> PendingSeal | None:
    """The seal of the rows in a final state, in their order (the others are not sealed),
    or None when no row is final. The leaves are computed for the batch at once
    (``audit._leaves``: in C where it is built)."""
    final = [row for row in rows if row["status"] in FINAL_STATUSES]
    if not final:
        return None
    leaves, times = seal_rows(final)
    return PendingSeal(
        id=new_seal_id(),
        ids=[row["id"] if type(row["id"]) is str else str(row["id"]) for row in final],
        tenants=[row["tenant_id"] for row in final],
        times=times,
        leaves=leaves,
    )


def write_seal(s: Session, seal: PendingSeal) -> SealEntry:
    """Write the seal's index row in ``s``'s transaction (unanchored); what its anchor
    will list of it. Its three lists are encoded once, and the index hash is taken of
    the same bytes when they are the canonical ones (``index_bytes``)."""
    ids, tenants, times = seal.ids, seal.tenants, seal.times
    encoded = index_bytes(ids, tenants, times)
    root = blob_root(seal.leaves)
    if encoded is None:  # not orjson's to write: the column's encoder, the canonical hash
        texts = [json.dumps(values) for values in (ids, tenants, times)]
        entry = seal_entry(seal.id, root, ids, tenants, times)
    else:
        texts = [part.decode() for part in encoded.parts]
        entry = seal_entry(seal.id, root, ids, tenants, times, digest=encoded.digest)
    index = {"id": seal.id, "created_at": utcnow(), "leaves": seal.leaves}
    row = index | dict(zip(("ids", "tenants", "times"), texts, strict=True))
    s.connection().execute(_INSERT, [row])  # Core, in the session's transaction: no ORM pass
    return entry


def append_anchor(
    s: Session,
    source: AuditKeySource,
    actor: str,
    seals: Sequence[SealEntry],
    *,
    closed: str | None = None,
    late: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append the ``records.anchored`` event vouching for ``seals`` in ``s``'s
    transaction (``late``: an admin's, ``_late_anchor``)."""
    payload = anchor_payload(seals, closed=closed, late=late)
    subject = f"seals:{seals[0].seal}" + (f"+{len(seals) - 1}" if len(seals) > 1 else "")
    return _audit.append_event(
        s, source, actor=actor, action=ANCHOR_ACTION, subject=subject, payload=payload
    )


__all__ = [
    "UNANCHORED_GRACE",
    "PendingSeal",
    "RecordSealRow",
    "append_anchor",
    "prepare_seal",
    "write_seal",
]
