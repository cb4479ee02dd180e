"""Anchoring seals, checking the records against them, and exporting inclusion proofs.

``verify_record_seals`` reads the chain's ``records.*`` events (their authenticity is
``verify_audit_chain``'s business: `audit verify --records` runs both), then maps each
record id to the seal holding it from the seals' index rows (a temporary table in the
verifying connection: a record sealed twice, closed as abandoned and then ended by its
server, belongs to the later seal), then reads every sealed record once, seal by seal
(joined to that map, ordered by seal and position: one sort), and compares each seal
with what its ``records.anchored`` event lists of it (see ``_seals`` for the design):

- an anchor's lists must give its root, and the seal's index row the root and index
  hash the anchor lists; else the seal itself was edited (its records are then checked
  against the root as a whole);
- a seal that no anchor lists, with an index row: pending while younger than
  ``UNANCHORED_GRACE`` (its records are counted apart, checked against that row only);
  older, each record is reported ``unanchored``: nothing vouches for it (its server
  stopped before anchoring, or the seal row was forged);
- a seal that an anchor lists and whose index row is gone or edited: its records (those
  the edited row still names) against the root as a whole;
- a row whose leaf is not the sealed leaf: edited;
- a position with no row: deleted, unless a later ``records.purged`` of its tenant
  covers its time, a later ``records.discarded`` lists it, or the record was sealed
  again later (a request closed as abandoned that its server then ended);
- a final record with no seal: inserted, unless it is older than the first seal
  (written before sealing began: counted, not covered).

Problems are reported earliest record first.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, cast, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelyard.audit import (
    ANCHOR_ACTION,
    DISCARD_ACTION,
    PURGE_ACTION,
    RECORD_FIELDS,
    AuditEvent,
    RecordProblem,
    RecordsReport,
    SealEntry,
    anchored_seals,
    build_proof,
    format_time,
    in_order,
    index_digest,
    late_reason,
    merkle_root,
    record_leaf,
    split_leaves,
)
from modelyard.errors import AuditError, Conflict, NotFound
from modelyard.store import _audit
from modelyard.store._core import StoreCore
from modelyard.store._schema import AuditEventRow, InferenceRecordRow
from modelyard.store._seals import UNANCHORED_GRACE, RecordSealRow, append_anchor

_UNANCHORED = (
    "its seal {seal} (index row written {at}) is listed by no records.anchored event: "
    "nothing vouches for it. Its server stopped before anchoring it (a crash, a kill -9, "
    "an audit chain that refused the anchor), or the seal row was forged. Once its records "
    "are checked (a backup, the server's log), an admin may vouch for them: "
    "`modelyard audit anchor --reason ...`"
)
_EDITED = "its content is not what was sealed"
_DELETED = (
    "its seal holds it and no audited removal (retention, a batch job's replacement) "
    "explains its absence"
)
_UNSEALED = "it is in a final state and no seal holds it"

_R = InferenceRecordRow
_FIELDS = [getattr(_R, name) for name in RECORD_FIELDS]


def seal_map(s: Any) -> Table:
    """A temporary table in ``s``'s connection: each sealed record id, the seal holding it
    and its position there, from the seals' index rows, the latest seal first (a record
    closed as abandoned and then ended by its server was sealed twice: the later counts).
    The caller drops it."""
    table = Table(
        f"sealed_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("seal", String(32), nullable=False),
        Column("pos", Integer, nullable=False),
        prefixes=["TEMPORARY"],
    )
    table.create(s.connection())
    dialect = s.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    first_wins = insert.on_conflict_do_nothing(index_elements=["id"])
    newest_first = select(RecordSealRow.id, RecordSealRow.ids).order_by(
        RecordSealRow.created_at.desc(), RecordSealRow.id.desc()
    )
    rows: list[dict[str, Any]] = []
    for seal, ids in s.execute(newest_first).yield_per(200):
        rows += [{"id": str(i), "seal": seal, "pos": pos} for pos, i in enumerate(ids or ())]
        if len(rows) >= 20_000:
            s.execute(first_wins, rows)
            rows = []
    if rows:
        s.execute(first_wins, rows)
    return table


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


@dataclass
class _Tally:
    """What the chain says, and what the check found so far."""

    seals: dict[str, tuple[AuditEvent, SealEntry]]
    pending_after: datetime  # seals with no anchor written after this are pending
    anchors: int = 0
    purges: dict[Any, list[tuple[int, datetime]]] = field(default_factory=dict)
    discards: dict[str, int] = field(default_factory=dict)
    problems: list[RecordProblem] = field(default_factory=list)
    missing: list[RecordProblem] = field(default_factory=list)  # resealed later, maybe
    pending_seals: set[str] = field(default_factory=set)
    late_seals: set[str] = field(default_factory=set)  # listed by an admin's late anchor
    late_anchors: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0  # records among ``records`` that a late anchor vouches for
    records: int = 0
    pending: int = 0
    purged: int = 0
    discarded: int = 0

    @classmethod
    def of(cls, events: Sequence[AuditEvent], pending_after: datetime) -> _Tally:
        tally = cls(seals={}, pending_after=pending_after)
        for e in events:
            if e.action == ANCHOR_ACTION:
                tally.anchors += 1
                entries = anchored_seals(e.payload)
                if entries is None:  # written so by the writer: its seals are unvouched
                    detail = "this anchor's lists of seals do not give its root"
                    first = _time(e.payload.get("first"))
                    tally.problems.append(
                        RecordProblem("seal", None, detail, None, e.seq, None, first)
                    )
                    continue
                for entry in entries:
                    tally.seals[entry.seal] = (e, entry)
                if (reason := late_reason(e.payload)) is not None:
                    tally.late_seals.update(entry.seal for entry in entries)
                    seen = {"seq": e.seq, "actor": e.actor, "time": format_time(e.time)}
                    tally.late_anchors.append(seen | {"reason": reason})
            elif e.action == PURGE_ACTION and (before := _time(e.payload.get("before"))):
                tenant = e.payload.get("tenant_id")
                tally.purges.setdefault(tenant, []).append((e.seq, before))
            elif e.action == DISCARD_ACTION:
                for record_id in e.payload.get("ids") or ():
                    tally.discards[str(record_id)] = e.seq
        return tally

    def explained(self, seq: int, record_id: str, tenant: Any, at: datetime | None) -> bool:
        """Whether an audited removal after the seal ``seq`` covers this record."""
        if self.discards.get(record_id, 0) > seq:
            self.discarded += 1
            return True
        purges = self.purges.get(tenant, ()) if tenant is not None else ()
        if at is not None and any(p > seq and at < before for p, before in purges):
            self.purged += 1
            return True
        return False

    def check(self, seal: str, rows: list[Mapping[str, Any]], index: RecordSealRow | None) -> None:
        anchored = self.seals.get(seal)
        event: AuditEvent | None = None
        if anchored is not None:
            event, entry = anchored
        else:  # a seal of the id map (no anchor lists it): its index row is there
            assert index is not None
            if _utc(index.created_at) <= self.pending_after:
                why = _UNANCHORED.format(seal=seal, at=format_time(_utc(index.created_at)))
                self.problems += [_problem("unanchored", m, why) for m in rows]
                return
            # pending: checked against its own index row, which nothing vouches for yet
            self.pending_seals.add(seal)
            leaves = split_leaves(index.leaves)
            digest = index_digest(index.ids, index.tenants, index.times)
            entry = SealEntry(seal, len(index.ids), merkle_root(leaves).hex(), digest, "", "")
        n, root = entry.records, entry.root
        leaves = split_leaves(index.leaves) if index is not None else []
        if (
            index is None
            or len(index.ids) != n
            or len(leaves) != n
            or merkle_root(leaves).hex() != root
            or index_digest(index.ids, index.tenants, index.times) != entry.index
        ):
            assert event is not None  # a pending seal's entry is its index row's
            self._check_whole(event, seal, rows, n, root)
            return
        seq = None if event is None else event.seq
        at_pos: dict[int, Mapping[str, Any]] = {}
        for m in rows:  # each at the place its seal's index gives it (the id map's)
            pos = m["seal_pos"]
            at_pos[pos] = m
            if record_leaf(m) != leaves[pos]:
                self.problems.append(_problem("edited", m, _EDITED, seq))
            elif event is None:
                self.pending += 1
            else:
                self.records += 1
                self.late += seal in self.late_seals
        for pos in range(n):
            record_id, at = index.ids[pos], _time(index.times[pos])
            if pos in at_pos or self.explained(seq or 0, record_id, index.tenants[pos], at):
                continue
            gone = RecordProblem("deleted", record_id, _DELETED, seal, seq, pos, at)
            self.missing.append(gone)

    def _check_whole(
        self, event: AuditEvent, seal: str, rows: list[Mapping[str, Any]], n: int, root: str
    ) -> None:
        """The seal's index row was edited or removed: its records against the root."""
        ordered = sorted(rows, key=lambda m: m["seal_pos"] or 0)
        whole = [m["seal_pos"] for m in ordered] == list(range(n))
        if whole and merkle_root([record_leaf(m) for m in ordered]).hex() == root:
            detail = "its index row (record_seals) was edited or removed; its records match"
            self.records += n
            self.late += n if seal in self.late_seals else 0
        else:
            ids = ", ".join(m["id"] for m in ordered[:5]) + (" ..." if len(ordered) > 5 else "")
            detail = (
                "its index row (record_seals) was edited or removed, and its records "
                f"({len(ordered)} of {n}: {ids or 'none'}) do not give its root: which record "
                "changed cannot be said"
            )
        first = _time(event.payload.get("first"))
        self.problems.append(RecordProblem("seal", None, detail, seal, event.seq, None, first))


def _problem(kind: Any, m: Mapping[str, Any], detail: str, seq: int | None = None) -> RecordProblem:
    return RecordProblem(kind, m["id"], detail, m["seal"], seq, m["seal_pos"], m["created_at"])


class SealStore(StoreCore):
    """Anchoring and verifying the seals of inference records, and their inclusion proofs."""

    def anchor_record_seals(
        self, seals: Sequence[SealEntry], *, closed: str | None = None
    ) -> AuditEvent | None:
        """Append one ``records.anchored`` event vouching for ``seals`` (written by
        ``add_monitored_records(sealed=...)``) and mark their index rows, in one
        transaction; None when there are none. The chain's refusals raise (AuditError,
        AuditKeyMissing): the seals stay unanchored."""
        if not seals:
            return None
        with self._write(f"anchor {len(seals)} seals of inference records") as s:
            return append_anchor(s, self.audit_key_source, self.actor, seals, closed=closed)

    def verify_record_seals(self, *, grace: timedelta = UNANCHORED_GRACE) -> RecordsReport:
        """Every seal against the records table (trusting the chain's events: verify the
        chain with ``verify_audit_chain``). A seal no anchor lists is pending while its
        index row is younger than ``grace``, a problem afterwards."""
        actions = (ANCHOR_ACTION, PURGE_ACTION, DISCARD_ACTION)
        query = select(AuditEventRow).where(AuditEventRow.action.in_(actions))
        with self._session("read the seals in the audit chain") as s:
            events = [_audit.to_event(r) for r in s.scalars(query.order_by(AuditEventRow.seq))]
        tally = _Tally.of(events, datetime.now(UTC) - grace)
        firsts = (_time(e.payload.get("first")) for e in events if e.action == ANCHOR_ACTION)
        first_seal = min((_utc(t) for t in firsts if t is not None), default=None)
        running = before_sealing = 0
        seen: set[str] = set()
        with self._session("verify the seals of inference records") as s:
            sealed = seal_map(s)
            try:
                at = sealed.c
                query = (
                    select(*_FIELDS, at.seal.label("seal"), at.pos.label("seal_pos"))
                    .join(sealed, at.id == _R.id)
                    .order_by(at.seal, at.pos)
                    .execution_options(yield_per=1000)
                )
                rows = (dict(m) for m in s.execute(query).mappings())
                for seal, group in itertools.groupby(rows, key=lambda m: str(m["seal"])):
                    seen.add(seal)
                    tally.check(seal, list(group), s.get(RecordSealRow, seal))
                for seal in tally.seals.keys() - seen:  # no record left, or no index row
                    tally.check(seal, [], s.get(RecordSealRow, seal))
                unsealed = (
                    select(_R.id, _R.status, _R.created_at)
                    .outerjoin(sealed, at.id == _R.id)
                    .where(at.id.is_(None))
                )
                for m in map(dict, s.execute(unsealed).mappings()):
                    if m["status"] == "running":
                        running += 1
                    elif first_seal is None or _utc(m["created_at"]) < first_seal:
                        before_sealing += 1
                    else:
                        m |= {"seal": None, "seal_pos": None}
                        tally.problems.append(_problem("inserted", m, _UNSEALED))
                resealed = _resealed(s, tally, sealed)
            finally:
                sealed.drop(s.connection())
        problems = tally.problems + [m for m in tally.missing if m.record_id not in resealed]
        return RecordsReport(
            seals=len(tally.seals),
            records=tally.records,
            purged=tally.purged,
            discarded=tally.discarded,
            running=running,
            before_sealing=before_sealing,
            pending=tally.pending,
            pending_seals=len(tally.pending_seals),
            late=tally.late,
            late_anchors=tally.late_anchors,
            problems=in_order(problems),
        )

    def record_proof(self, record_id: str) -> dict[str, Any]:
        """The inclusion proof of one record (``audit.check_proof`` checks it offline):
        its canonical bytes, its leaf, the Merkle path to its seal's root, the path from
        the seal to its anchor's root and the audit event holding that root. Refused
        (AuditError) when the record or its seal no longer match the chain."""
        with self._session(f"export the inclusion proof of record {record_id!r}") as s:
            found = s.execute(select(*_FIELDS).where(_R.id == record_id)).mappings().first()
            if found is None:
                raise NotFound(f"no inference record with id {record_id!r}", param="record_id")
            m = dict(found)
            index = _holding_seal(s, record_id, _utc(m["created_at"]))
            if index is None:
                why = ("it is still running (a record is sealed when it ends)"
                       if m["status"] == "running" else
                       "no seal's index holds it: it was written before sealing began or "
                       "without a seal, or its seal's index row was removed "
                       "(`modelyard audit verify --records` says which)")  # fmt: skip
                raise Conflict(f"record {record_id} is not sealed: {why}")
            event, listed = _anchor_of(s, index)
            if event is None:
                raise Conflict(
                    f"record {record_id} is sealed but its seal is not anchored in the audit "
                    "chain yet: its writer anchors every few seconds; try again shortly",
                    hint="`modelyard audit verify --records` reports seals left unanchored.",
                )
            leaves = split_leaves(index.leaves)
            pos = index.ids.index(record_id)
            if (
                event is None
                or event.action != ANCHOR_ACTION
                or listed is None
                or merkle_root(leaves).hex() != listed.root
                or index_digest(index.ids, index.tenants, index.times) != listed.index
                or not 0 <= pos < len(leaves)
                or index.ids[pos] != record_id
                or record_leaf(m) != leaves[pos]
            ):
                raise AuditError(
                    f"record {record_id} does not match its seal: no proof can be given",
                    hint="`modelyard audit verify --records` says what changed.",
                    record_id=record_id,
                )
            return build_proof(m, leaves, pos, index.id, event.to_json())


# How much earlier than its seal's index row an anchor may say it was written (the
# clocks of the seal's writer and of the anchor's are one; this is slack, not skew).
_ANCHOR_SLACK = timedelta(minutes=5)


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _holding_seal(s: Session, record_id: str, created_at: datetime) -> RecordSealRow | None:
    """The latest seal whose index holds ``record_id`` (a record is sealed when it ends,
    after it was created: the index rows written since, their ids matched as text first)."""
    ids = cast(RecordSealRow.ids, Text)
    # as the index's JSON list holds it: orjson's bytes, or the json module's (ASCII)
    forms = {orjson.dumps(record_id).decode(), json.dumps(record_id)}
    like = [ids.like(f"%{_like_escaped(form)}%", escape="\\") for form in sorted(forms)]
    query = (
        select(RecordSealRow)
        .where(RecordSealRow.created_at >= created_at - _ANCHOR_SLACK, or_(*like))
        .order_by(RecordSealRow.created_at.desc(), RecordSealRow.id.desc())
    )
    for index in s.scalars(query):
        if record_id in (index.ids or ()):
            return index
    return None


def _anchor_of(s: Any, index: RecordSealRow) -> tuple[AuditEvent | None, SealEntry | None]:
    """The ``records.anchored`` event listing the seal, and what it lists of it: the first
    anchor after the seal was written that names it (nothing marks the seal's row: the
    writer's anchor is its next one, or a later one after a refused try)."""
    query = (
        select(AuditEventRow)
        .where(
            AuditEventRow.action == ANCHOR_ACTION,
            AuditEventRow.time >= _utc(index.created_at) - _ANCHOR_SLACK,
        )
        .order_by(AuditEventRow.seq)
        .execution_options(yield_per=100)
    )
    rows = s.scalars(query)
    try:
        for row in rows:
            if index.id not in (row.payload.get("seals") or ()):
                continue
            event = _audit.to_event(row)
            listed = {e.seal: e for e in anchored_seals(event.payload) or ()}.get(index.id)
            return event, listed
        return None, None
    finally:
        rows.close()  # a server-side cursor on PostgreSQL, left before its end


def _resealed(s: Any, tally: _Tally, sealed: Table) -> set[str]:
    """The ids among the missing leaves whose record is there, sealed by a later seal
    (anchored later, or pending) that holds it as it is (closed as abandoned, then
    ended by its server)."""
    later: set[str] = set()
    missing = {p.record_id: p for p in tally.missing if p.record_id is not None}
    ids = sorted(missing)
    bad = {p.record_id for p in tally.problems}
    for start in range(0, len(ids), 500):
        query = select(sealed.c.id, sealed.c.seal).where(sealed.c.id.in_(ids[start : start + 500]))
        for record_id, seal in s.execute(query).all():
            anchored = tally.seals.get(str(seal))
            gone = missing[record_id]
            if record_id in bad or str(seal) == gone.seal:
                continue
            if str(seal) in tally.pending_seals or (
                anchored is not None and anchored[0].seq > (gone.seq or 0)
            ):
                later.add(record_id)
    return later


__all__ = ["SealStore"]
