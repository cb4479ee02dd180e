"""Anchoring late: an admin vouching for seals that their writer never anchored.

A server killed (a ``kill -9``, a crash) in the seconds between sealing records and
anchoring them leaves seals that no ``records.anchored`` event lists: once the grace
period is over, ``audit verify --records`` reports their records ``unanchored``, for
good. Nothing in the database tells a seal left so from one forged together with its
records: both are consistent rows that nothing vouches for. So only an admin who has
checked them elsewhere (a backup, the server's log, the callers) may vouch for them,
with a reason: ``anchor_late`` appends one ``records.anchored`` event listing them,
marked ``late`` and carrying the reason, after checking, in the same transaction and
with the records locked, that

- the seal is unanchored and older than the grace period (a younger one is its
  writer's to anchor, within seconds);
- no server that wrote its records is alive (a live server anchors its own seals;
  when the chain refuses them, its log says why and it tries again);
- its index row is whole (as many ids, tenants and times as leaves), and every record
  it names is there, final and as sealed: its leaf is the sealed leaf, its tenant and
  time those the index lists.

When a seal fails a check, nothing is anchored: the admin names the seals to anchor.
Verification counts late-anchored records apart and names their anchors (seq, actor,
reason); their inclusion proofs verify as any other and carry the ``late`` marker.

With ``closed_error`` (the text a stopped server's requests are closed with), the
records closed so and held by no seal (closed by a sweep while the chain refused
anchors, or by ``doctor --fix`` before it sealed them; verification reports them
``inserted``) are sealed in the same transaction, as one new seal in the same anchor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.audit import (
    ANCHOR_ACTION,
    FINAL_STATUSES,
    RECORD_FIELDS,
    AuditEvent,
    SealEntry,
    format_time,
    merkle_root,
    record_leaf,
    seal_entry,
    split_leaves,
)
from modelyard.errors import AuditError, ConfigError, Conflict, NotFound
from modelyard.store._core import StoreCore
from modelyard.store._schema import AuditEventRow, InferenceRecordRow, ServerRow, utcnow
from modelyard.store._seal_check import seal_map
from modelyard.store._seals import UNANCHORED_GRACE, RecordSealRow, append_anchor, prepare_seal
from modelyard.store._seals import write_seal as _write_seal

_R = InferenceRecordRow
_FIELDS = [getattr(_R, name) for name in RECORD_FIELDS]
NEW_SEAL = "(new)"  # the seal of records closed without one, before it is written


@dataclass(frozen=True)
class LateSeal:
    """A seal an admin's late anchor would list (or lists), and what its check found."""

    seal: str  # NEW_SEAL for records closed without a seal, until it is written
    written: datetime  # its index row's time (now, for a new one)
    records: int
    first: str | None  # its records' first and last time
    last: str | None
    servers: tuple[str, ...]
    problem: str | None = None  # why it cannot be vouched for
    closed: bool = False  # records closed without a seal, sealed by this anchor

    def to_json(self) -> dict[str, Any]:
        return {
            "seal": self.seal,
            "written": format_time(self.written),
            "records": self.records,
            "first": self.first,
            "last": self.last,
            "servers": list(self.servers),
            "problem": self.problem,
            "closed": self.closed,
        }


@dataclass(frozen=True)
class LateAnchor:
    """What ``anchor_late`` found, and the event it appended (None on a dry run)."""

    seals: list[LateSeal]
    event: AuditEvent | None

    @property
    def records(self) -> int:
        return sum(x.records for x in self.seals)

    @property
    def refused(self) -> list[LateSeal]:
        return [x for x in self.seals if x.problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "anchored": self.event is not None,
            "records": self.records,
            "seals": [x.to_json() for x in self.seals],
            "event": None if self.event is None else self.event.to_json(),
        }


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _anchors(s: Session) -> tuple[dict[str, int], datetime | None]:
    """Each seal an anchor lists, with the seq of the first that lists it; and the first
    sealed record's time (sealing began there: older records are not covered)."""
    query = select(AuditEventRow.seq, AuditEventRow.payload).where(
        AuditEventRow.action == ANCHOR_ACTION
    )
    listed: dict[str, int] = {}
    first: datetime | None = None
    for seq, payload in s.execute(query.order_by(AuditEventRow.seq)):
        payload = payload if isinstance(payload, Mapping) else {}
        for seal in payload.get("seals") or ():
            listed.setdefault(str(seal), seq)
        try:
            at = _utc(datetime.fromisoformat(str(payload.get("first"))))
        except ValueError:
            continue
        first = at if first is None or at < first else first
    return listed, first


def _records(s: Session, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The records by id, locked until commit (nobody edits them between check and anchor)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        query = select(*_FIELDS).where(_R.id.in_(ids[start : start + 500])).order_by(_R.id)
        for m in s.execute(query.with_for_update()).mappings():
            found[str(m["id"])] = dict(m)
    return found


def _check(s: Session, index: RecordSealRow, alive: set[str]) -> tuple[LateSeal, SealEntry]:
    """What a late anchor would list of the seal ``index``, and why it cannot (if so)."""
    ids, tenants, times = list(index.ids or ()), list(index.tenants or ()), list(index.times or ())
    leaves = split_leaves(index.leaves)
    records = _records(s, [str(i) for i in ids])
    servers = tuple(sorted({str(m["server_id"]) for m in records.values() if m["server_id"]}))
    problem = None
    if not (len(ids) == len(tenants) == len(times) == len(leaves)) or not ids:
        problem = (
            f"its index row is not whole ({len(ids)} ids, {len(tenants)} tenants, "
            f"{len(times)} times, {len(leaves)} leaves)"
        )
    else:
        problem = _records_problem(ids, tenants, times, leaves, records)
    if problem is None and (live := sorted(alive.intersection(servers))):
        problem = (
            f"its server {live[0]} is alive: a running server anchors its own seals (when "
            "the audit chain refuses them, its log says why, and it tries again)"
        )
    entry = seal_entry(index.id, merkle_root(leaves), ids, tenants, times) if ids else None
    late = LateSeal(
        index.id, _utc(index.created_at), len(ids), min(times, default=None),
        max(times, default=None), servers, problem,
    )  # fmt: skip
    return late, entry if entry is not None else SealEntry(index.id, 0, "", "", "", "")


def _records_problem(
    ids: list[Any],
    tenants: list[Any],
    times: list[Any],
    leaves: list[bytes],
    records: Mapping[str, Mapping[str, Any]],
) -> str | None:
    for pos, record_id in enumerate(ids):
        m = records.get(str(record_id))
        if m is None:
            return (
                f"record {record_id} (position {pos}) is gone: a late anchor vouches for "
                "whole seals only"
            )
        if m["status"] not in FINAL_STATUSES:
            return f"record {record_id} (position {pos}) is {m['status']!r}, not final"
        if record_leaf(m) != leaves[pos]:
            return f"record {record_id} (position {pos}) is not what was sealed: it was edited"
        if m["tenant_id"] != tenants[pos] or format_time(m["created_at"]) != times[pos]:
            return (
                f"record {record_id} (position {pos}): its tenant or time is not what the "
                "seal's index lists"
            )
    return None


def _closed_unsealed(s: Session, error: str, since: datetime | None) -> list[dict[str, Any]]:
    """The records closed with ``error`` that no seal holds, written since sealing began
    (what verification reports ``inserted``), oldest first, locked until commit."""
    sealed = seal_map(s)
    try:
        query = (
            select(*_FIELDS)
            .outerjoin(sealed, sealed.c.id == _R.id)
            .where(sealed.c.id.is_(None), _R.status == "error", _R.error == error)
            .order_by(_R.created_at, _R.id)
        )
        rows = [dict(m) for m in s.execute(query).mappings()]
    finally:
        sealed.drop(s.connection())
    rows = [m for m in rows if since is None or _utc(m["created_at"]) >= since]
    if rows:  # locked now, and read again as locked
        found = _records(s, [m["id"] for m in rows])
        rows = [found[m["id"]] for m in rows if m["id"] in found]
    return rows


class LateAnchorStore(StoreCore):
    """An admin's late anchor of seals their writer never anchored."""

    def anchor_late(
        self,
        reason: str | None,
        *,
        seals: Sequence[str] = (),
        closed_error: str | None = None,
        dry_run: bool = False,
        grace: timedelta = UNANCHORED_GRACE,
        stale_after_s: float = 15.0,
    ) -> LateAnchor:
        """Vouch for the unanchored seals older than ``grace`` (or the ones named), and with
        ``closed_error`` seal the records closed so without a seal: one ``records.anchored``
        event marked ``late`` with the admin's ``reason`` (role admin; see the module's
        docstring for what is checked). On a dry run nothing is written and the
        findings are returned. ``AuditError`` when a seal fails a check (nothing is
        anchored), ``Conflict`` when there is nothing to anchor."""
        why = (reason or "").strip()
        if not why and not dry_run:
            raise ConfigError(
                "anchoring seals late needs a reason: it vouches for records that nothing "
                "else vouches for",
                hint='Say what was checked, e.g. --reason "server s-3 killed at 10:09 '
                '(INC-12); the 41 records match the 10:30 backup"',
                field="reason",
            )
        doing = "anchor seals of inference records late"
        with self._write(doing) as s:
            self._require(s, ANCHOR_ACTION, "seals", doing, needed="admin")
            listed, first = _anchors(s)
            now = utcnow()
            chosen = _chosen(s, seals, listed, now - grace)
            heartbeat = now - timedelta(seconds=stale_after_s)
            alive = {
                str(i)
                for i in s.scalars(select(ServerRow.id).where(ServerRow.heartbeat_at >= heartbeat))
            }
            found = [_check(s, s.get_one(RecordSealRow, seal), alive) for seal in chosen]
            closed = _closed_unsealed(s, closed_error, first) if closed_error else []
            if closed:
                found.append(_closed_seal(closed, alive, now))
            late = [x for x, _ in found]
            if not late and not dry_run:
                more = " and no request was closed without a seal" if closed_error else ""
                raise Conflict(
                    f"nothing to anchor: no seal is left unanchored past the grace period "
                    f"({int(grace.total_seconds())} s){more}",
                    hint="`modelyard audit verify --records` says so too.",
                )
            if dry_run:
                return LateAnchor(late, None)
            refused = [x for x in late if x.problem]
            if refused:
                first_bad = refused[0]
                name = (
                    "the records closed without a seal"
                    if first_bad.closed
                    else f"seal {first_bad.seal}"
                )
                raise AuditError(
                    f"refusing to anchor late: {len(refused)} of {len(late)} seals cannot be "
                    f"vouched for; {name}: {first_bad.problem}. Nothing was anchored",
                    hint="`modelyard audit anchor --dry-run` lists each seal and what was found; "
                    "name the ones to anchor with --seal ID. A record that changed after its "
                    "seal is what `audit verify --records` reports: compare with a backup.",
                )
            entries = [entry for x, entry in found if not x.closed]
            if closed:
                entries.append(_write_seal(s, _sealed(closed)))
            servers = sorted({server for x in late for server in x.servers})
            event = append_anchor(
                s, self.audit_key_source, self.actor, entries,
                late={"reason": why, "servers": servers},
            )  # fmt: skip
            if closed:
                late[-1] = _named(late[-1], entries[-1].seal)
            return LateAnchor(late, event)


def _chosen(
    s: Session, seals: Sequence[str], listed: Mapping[str, int], cutoff: datetime
) -> list[str]:
    """The seals to anchor: the ones named, each checked to be one, unanchored and past
    the grace period; else every such seal, oldest first (their index rows read by id
    and time only, streamed: a busy server writes one a second)."""
    if not seals:
        query = (
            select(RecordSealRow.id, RecordSealRow.created_at)
            .where(RecordSealRow.created_at <= cutoff)
            .order_by(RecordSealRow.created_at, RecordSealRow.id)
            .execution_options(yield_per=5000)
        )
        return [str(i) for i, _ in s.execute(query) if str(i) not in listed]
    for seal in seals:
        at = s.scalar(select(RecordSealRow.created_at).where(RecordSealRow.id == seal))
        if at is None:
            raise NotFound(
                f"no seal {seal!r}",
                hint="`modelyard audit anchor --dry-run` lists the unanchored seals; "
                "`modelyard audit verify --records --json` names each record's seal.",
                param="seal",
            )
        if seal in listed:
            raise Conflict(f"seal {seal} is anchored already, by audit event {listed[seal]}")
        if _utc(at) > cutoff:
            raise Conflict(
                f"seal {seal} was written at {format_time(_utc(at))}, within the grace "
                "period: its writer anchors it within seconds",
                hint="Wait for the grace period (2 minutes) to pass; `modelyard audit "
                "verify --records` then says whether it is still unanchored.",
            )
    return list(dict.fromkeys(seals))


def _closed_seal(
    rows: list[dict[str, Any]], alive: set[str], now: datetime
) -> tuple[LateSeal, SealEntry]:
    servers = tuple(sorted({str(m["server_id"]) for m in rows if m["server_id"]}))
    problem = None
    if live := sorted(alive.intersection(servers)):
        problem = (
            f"records of server {live[0]}, which is alive, were closed as stopped: its own "
            "writer may still end them"
        )
    times = [format_time(m["created_at"]) for m in rows]
    late = LateSeal(NEW_SEAL, now, len(rows), min(times), max(times), servers, problem, closed=True)
    return late, SealEntry(NEW_SEAL, len(rows), "", "", "", "")


def _sealed(rows: list[dict[str, Any]]) -> Any:
    pending = prepare_seal(rows)
    assert pending is not None  # every row is final (status "error")
    return pending


def _named(late: LateSeal, seal: str) -> LateSeal:
    return LateSeal(
        seal, late.written, late.records, late.first, late.last, late.servers, late.problem,
        closed=True,
    )  # fmt: skip


__all__ = ["NEW_SEAL", "LateAnchor", "LateAnchorStore", "LateSeal"]
