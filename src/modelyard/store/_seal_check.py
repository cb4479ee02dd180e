"""Checking the records against their seals, and exporting one record's inclusion proof.

``verify_record_seals`` reads the chain's ``records.*`` events (their authenticity is
``verify_audit_chain``'s business: `audit verify --records` runs both), then every
sealed record once, seal by seal (ordered by ``seal, seal_pos``: no index needed, one
sort), and compares each seal with its event (see ``_seals`` for the design):

- the seal's index row must give the event's root and index hash; else the seal
  itself was edited (its records are then checked against the root as a whole);
- a row at a position of another id, or claiming a seal no event holds: inserted;
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from modelyard.audit import (
    DISCARD_ACTION,
    PURGE_ACTION,
    RECORD_FIELDS,
    SEAL_ACTION,
    AuditEvent,
    RecordProblem,
    RecordsReport,
    build_proof,
    in_order,
    index_digest,
    merkle_root,
    record_leaf,
)
from modelyard.errors import AuditError, Conflict, NotFound
from modelyard.store import _audit
from modelyard.store._core import StoreCore
from modelyard.store._schema import AuditEventRow, InferenceRecordRow
from modelyard.store._seals import RecordSealRow, split_leaves

_NO_EVENT = "it claims a seal that no records.sealed event of the chain holds"
_OTHER_PLACE = "it claims a place in its seal that holds another record"
_EDITED = "its content is not what was sealed"
_DELETED = (
    "its seal holds it and no audited removal (retention, a batch job's replacement) "
    "explains its absence"
)
_UNSEALED = "it is in a final state and no seal holds it"

_R = InferenceRecordRow
_COLUMNS = [*(getattr(_R, name) for name in RECORD_FIELDS), _R.seal, _R.seal_pos]


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


@dataclass
class _Tally:
    """What the chain says, and what the check found so far."""

    seals: dict[str, AuditEvent]
    purges: dict[Any, list[tuple[int, datetime]]] = field(default_factory=dict)
    discards: dict[str, int] = field(default_factory=dict)
    problems: list[RecordProblem] = field(default_factory=list)
    missing: list[RecordProblem] = field(default_factory=list)  # resealed later, maybe
    records: int = 0
    purged: int = 0
    discarded: int = 0

    @classmethod
    def of(cls, events: Sequence[AuditEvent]) -> _Tally:
        tally = cls(seals={})
        for e in events:
            if e.action == SEAL_ACTION and isinstance(e.payload.get("seal"), str):
                tally.seals[e.payload["seal"]] = e
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
        event = self.seals.get(seal)
        if event is None:
            self.problems += [_problem("inserted", m, _NO_EVENT) for m in rows]
            return
        p = event.payload
        n, root = int(p.get("records", -1)), str(p.get("root"))
        leaves = split_leaves(index.leaves) if index is not None else []
        if (
            index is None
            or len(index.ids) != n
            or len(leaves) != n
            or merkle_root(leaves).hex() != root
            or index_digest(index.ids, index.tenants, index.times) != p.get("index")
        ):
            self._check_whole(event, rows, n, root)
            return
        at_pos: dict[int, Mapping[str, Any]] = {}
        for m in rows:
            pos = m["seal_pos"]
            if pos is None or not 0 <= pos < n or index.ids[pos] != m["id"] or pos in at_pos:
                self.problems.append(_problem("inserted", m, _OTHER_PLACE, event))
            elif record_leaf(m).hex() != leaves[pos].hex():
                at_pos[pos] = m
                self.problems.append(_problem("edited", m, _EDITED, event))
            else:
                at_pos[pos] = m
                self.records += 1
        for pos in range(n):
            record_id, at = index.ids[pos], _time(index.times[pos])
            if pos in at_pos or self.explained(event.seq, record_id, index.tenants[pos], at):
                continue
            gone = RecordProblem("deleted", record_id, _DELETED, seal, event.seq, pos, at)
            self.missing.append(gone)

    def _check_whole(
        self, event: AuditEvent, rows: list[Mapping[str, Any]], n: int, root: str
    ) -> None:
        """The seal's index row was edited or removed: its records against the root."""
        seal = str(event.payload["seal"])
        ordered = sorted(rows, key=lambda m: m["seal_pos"] or 0)
        whole = [m["seal_pos"] for m in ordered] == list(range(n))
        if whole and merkle_root([record_leaf(m) for m in ordered]).hex() == root:
            detail = "its index row (record_seals) was edited or removed; its records match"
            self.records += n
        else:
            ids = ", ".join(m["id"] for m in ordered[:5]) + (" ..." if len(ordered) > 5 else "")
            detail = (
                "its index row (record_seals) was edited or removed, and its records "
                f"({len(ordered)} of {n}: {ids or 'none'}) do not give its root: which record "
                "changed cannot be said"
            )
        first = _time(event.payload.get("first"))
        self.problems.append(RecordProblem("seal", None, detail, seal, event.seq, None, first))


def _problem(
    kind: Any, m: Mapping[str, Any], detail: str, event: AuditEvent | None = None
) -> RecordProblem:
    return RecordProblem(
        kind, m["id"], detail, m["seal"], None if event is None else event.seq,
        m["seal_pos"], m["created_at"],
    )  # fmt: skip


class SealStore(StoreCore):
    """Verifying the seals of inference records, and their inclusion proofs."""

    def verify_record_seals(self) -> RecordsReport:
        """Every seal against the records table (trusting the chain's events: verify the
        chain with ``verify_audit_chain``)."""
        actions = (SEAL_ACTION, PURGE_ACTION, DISCARD_ACTION)
        query = select(AuditEventRow).where(AuditEventRow.action.in_(actions))
        with self._session("read the seals in the audit chain") as s:
            events = [_audit.to_event(r) for r in s.scalars(query.order_by(AuditEventRow.seq))]
        tally = _Tally.of(events)
        first_seal = min((e.time for e in tally.seals.values()), default=None)
        running = before_sealing = 0
        seen: set[str] = set()
        with self._session("verify the seals of inference records") as s:
            query = (
                select(*_COLUMNS)
                .where(_R.seal.is_not(None))
                .order_by(_R.seal, _R.seal_pos, _R.id)
                .execution_options(yield_per=1000)
            )
            rows = (dict(m) for m in s.execute(query).mappings())
            for seal, group in itertools.groupby(rows, key=lambda m: str(m["seal"])):
                seen.add(seal)
                tally.check(seal, list(group), s.get(RecordSealRow, seal))
            for seal in tally.seals.keys() - seen:  # no record left: all gone, or all deleted
                tally.check(seal, [], s.get(RecordSealRow, seal))
            unsealed = select(_R.id, _R.status, _R.created_at, _R.seal, _R.seal_pos)
            for m in map(dict, s.execute(unsealed.where(_R.seal.is_(None))).mappings()):
                if m["status"] == "running":
                    running += 1
                elif first_seal is None or m["created_at"] < first_seal:
                    before_sealing += 1
                else:
                    tally.problems.append(_problem("inserted", m, _UNSEALED))
            resealed = _resealed(s, tally)
        problems = tally.problems + [m for m in tally.missing if m.record_id not in resealed]
        return RecordsReport(
            seals=len(tally.seals),
            records=tally.records,
            purged=tally.purged,
            discarded=tally.discarded,
            running=running,
            before_sealing=before_sealing,
            problems=in_order(problems),
        )

    def record_proof(self, record_id: str) -> dict[str, Any]:
        """The inclusion proof of one record (``audit.check_proof`` checks it offline):
        its canonical bytes, its leaf, the Merkle path to its seal's root and the audit
        event holding that root. Refused (AuditError) when the record or its seal no
        longer match the chain."""
        with self._session(f"export the inclusion proof of record {record_id!r}") as s:
            found = s.execute(select(*_COLUMNS).where(_R.id == record_id)).mappings().first()
            if found is None:
                raise NotFound(f"no inference record with id {record_id!r}", param="record_id")
            m = dict(found)
            if m["seal"] is None:
                why = ("it is still running (a record is sealed when it ends)"
                       if m["status"] == "running" else
                       "it was written before sealing began, or without a seal")  # fmt: skip
                raise Conflict(f"record {record_id} is not sealed: {why}")
            index = s.get(RecordSealRow, m["seal"])
            row = None if index is None else s.get(AuditEventRow, index.audit_seq)
            event = None if row is None else _audit.to_event(row)
            leaves = [] if index is None else split_leaves(index.leaves)
            pos = int(m["seal_pos"])
            if (
                index is None
                or event is None
                or event.action != SEAL_ACTION
                or event.payload.get("seal") != m["seal"]
                or merkle_root(leaves).hex() != event.payload.get("root")
                or not 0 <= pos < len(leaves)
                or index.ids[pos] != record_id
                or record_leaf(m) != leaves[pos]
            ):
                raise AuditError(
                    f"record {record_id} does not match its seal: no proof can be given",
                    hint="`modelyard audit verify --records` says what changed.",
                    record_id=record_id,
                )
            return build_proof(m, leaves, pos, event.to_json())


def _resealed(s: Any, tally: _Tally) -> set[str]:
    """The ids among the missing leaves whose record is there, sealed by a later seal
    that holds it as it is (closed as abandoned, then ended by its server)."""
    later: set[str] = set()
    missing = {p.record_id: p for p in tally.missing if p.record_id is not None}
    ids = sorted(missing)
    bad = {p.record_id for p in tally.problems}
    for start in range(0, len(ids), 500):
        query = select(_R.id, _R.seal).where(_R.id.in_(ids[start : start + 500]))
        for record_id, seal in s.execute(query).all():
            event = tally.seals.get(str(seal))
            gone = missing[record_id]
            if event is not None and record_id not in bad and event.seq > (gone.seq or 0):
                later.add(record_id)
    return later


__all__ = ["SealStore"]
