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

Every record is locked at once, in id order (as every record path locks them), and
the chain's lock is taken after them (as ``close_running_records`` takes it); the
anchors written meanwhile are read again under it, so that a seal its writer (or
another admin) anchored in between is not anchored twice. Seals go into events of at
most ``ANCHOR_SEALS``, as a writer's anchors.

When a seal fails a check, nothing is anchored: the admin names the seals to anchor.
A seal naming one record twice is refused (verification would call the other
position deleted). Verification counts late-anchored records apart and names their
anchors (seq, actor, reason); their inclusion proofs verify as any other and carry
the ``late`` marker.

With ``closed_error`` (the text a stopped server's requests are closed with), the
records closed so, held by no seal and written since sealing began (the first seal
an anchor lists or this one vouches for: verification does not cover older ones)
are sealed in the same transaction, as one new seal, once checked again under their
locks: closed by a sweep while the chain refused anchors, or by ``doctor --fix``
before it sealed them, verification reports them ``inserted``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
from modelyard.store import _audit
from modelyard.store._core import StoreCore
from modelyard.store._schema import AuditEventRow, InferenceRecordRow, ServerRow, utcnow
from modelyard.store._seal_check import seal_map
from modelyard.store._seals import (
    UNANCHORED_GRACE,
    PendingSeal,
    RecordSealRow,
    append_anchor,
    prepare_seal,
    write_seal,
)

_R = InferenceRecordRow
_FIELDS = [getattr(_R, name) for name in RECORD_FIELDS]
NEW_SEAL = "(new)"  # the seal of records closed without one, before it is written
ANCHOR_SEALS = 512  # seals an event lists at most (a record writer's ``anchor_seals``)


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
    ids: tuple[str, ...] = ()  # its records, in leaf order

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
            "ids": list(self.ids),
        }


@dataclass(frozen=True)
class LateAnchor:
    """What ``anchor_late`` found, and the events it appended (none on a dry run: one per
    ``ANCHOR_SEALS`` seals otherwise)."""

    seals: list[LateSeal]
    events: list[AuditEvent]

    @property
    def records(self) -> int:
        return sum(x.records for x in self.seals)

    @property
    def refused(self) -> list[LateSeal]:
        return [x for x in self.seals if x.problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "anchored": bool(self.events),
            "records": self.records,
            "seals": [x.to_json() for x in self.seals],
            "events": [e.to_json() for e in self.events],
        }


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _anchors(s: Session, *, after: int = 0) -> tuple[dict[str, int], datetime | None, int]:
    """Each seal an anchor after seq ``after`` lists, with the seq of the first that lists
    it; the first sealed record's time (sealing began there: older records are not
    covered); and the last anchor's seq."""
    query = select(AuditEventRow.seq, AuditEventRow.payload).where(
        AuditEventRow.action == ANCHOR_ACTION, AuditEventRow.seq > after
    )
    listed: dict[str, int] = {}
    first: datetime | None = None
    last = after
    for seq, payload in s.execute(query.order_by(AuditEventRow.seq)):
        last = seq
        payload = payload if isinstance(payload, Mapping) else {}
        for seal in payload.get("seals") or ():
            listed.setdefault(str(seal), seq)
        try:
            at = _utc(datetime.fromisoformat(str(payload.get("first"))))
        except ValueError:
            continue
        first = at if first is None or at < first else first
    return listed, first, last


def _records(s: Session, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The records by id, locked until commit (nobody edits them between check and anchor)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        query = select(*_FIELDS).where(_R.id.in_(ids[start : start + 500])).order_by(_R.id)
        for m in s.execute(query.with_for_update()).mappings():
            found[str(m["id"])] = dict(m)
    return found


def _check(
    index: RecordSealRow, records: Mapping[str, Mapping[str, Any]], alive: set[str]
) -> tuple[LateSeal, SealEntry]:
    """What a late anchor would list of the seal ``index``, and why it cannot (if so);
    ``records``: its records (and others), locked."""
    ids, tenants, times = list(index.ids or ()), list(index.tenants or ()), list(index.times or ())
    leaves = split_leaves(index.leaves)
    records = {str(i): records[str(i)] for i in ids if str(i) in records}
    servers = tuple(sorted({str(m["server_id"]) for m in records.values() if m["server_id"]}))
    problem = None
    if not (len(ids) == len(tenants) == len(times) == len(leaves)) or not ids:
        problem = (
            f"its index row is not whole ({len(ids)} ids, {len(tenants)} tenants, "
            f"{len(times)} times, {len(leaves)} leaves)"
        )
    elif len(set(map(str, ids))) != len(ids):
        twice = next(i for n, i in enumerate(ids) if str(i) in map(str, ids[:n]))
        problem = f"its index row names record {twice} twice"
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
        max(times, default=None), servers, problem, ids=tuple(map(str, ids)),
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


def _closed_unsealed(s: Session, error: str, since: datetime | None) -> list[str]:
    """The ids of the records closed with ``error`` that no seal holds, written since
    sealing began (what verification reports ``inserted``), oldest first; none when
    sealing has not begun (verification counts them as written before it). Not locked:
    ``_still_closed`` checks them again once they are."""
    if since is None:
        return []
    sealed = seal_map(s)
    try:
        query = (
            select(_R.id)
            .outerjoin(sealed, sealed.c.id == _R.id)
            .where(sealed.c.id.is_(None), _R.status == "error", _R.error == error)
            .where(_R.created_at >= since)
            .order_by(_R.created_at, _R.id)
        )
        return [str(i) for i in s.scalars(query)]
    finally:
        sealed.drop(s.connection())


def _still_closed(
    s: Session, ids: Sequence[str], error: str, records: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The records of ``ids`` (locked now) still closed with ``error`` and still held by no
    seal: one its server ended meanwhile is final in a seal of its own."""
    rows = [records[i] for i in ids if i in records]
    rows = [m for m in rows if m["status"] == "error" and m["error"] == error]
    if not rows:
        return []
    sealed = seal_map(s)
    try:
        query = select(sealed.c.id).where(sealed.c.id.in_([m["id"] for m in rows]))
        held = {str(i) for i in s.scalars(query)}
    finally:
        sealed.drop(s.connection())
    return [m for m in rows if m["id"] not in held]


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
            listed, first, seen = _anchors(s)
            now = utcnow()
            chosen = [s.get_one(RecordSealRow, x) for x in _chosen(s, seals, listed, now - grace)]
            heartbeat = now - timedelta(seconds=stale_after_s)
            alive = {
                str(i)
                for i in s.scalars(select(ServerRow.id).where(ServerRow.heartbeat_at >= heartbeat))
            }
            candidates = []
            if closed_error:  # since sealing began: the first anchored or chosen seal
                since = min([first] + [_first_time(index) for index in chosen], key=_or_later)
                candidates = _closed_unsealed(s, closed_error, since)
            # every record at once, locked in id order (as every record path locks them)
            ids = {str(i) for index in chosen for i in index.ids or ()}
            records = _records(s, sorted(ids.union(candidates)))
            found = [_check(index, records, alive) for index in chosen]
            closed = _still_closed(s, candidates, closed_error or "", records)
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
                return LateAnchor(late, [])
            _refuse(late)
            _audit.lock_chain(s)  # the chain after the records, as close_running_records
            meanwhile, _, _ = _anchors(s, after=seen)  # a writer's, or another admin's
            if again := [x.seal for x in late if x.seal in meanwhile]:
                raise Conflict(
                    f"seal {again[0]} was anchored meanwhile, by audit event "
                    f"{meanwhile[again[0]]}: nothing was anchored",
                    hint="Run it again: `modelyard audit anchor --dry-run` lists what is left.",
                )
            entries = [entry for x, entry in found if not x.closed]
            if closed:
                entries.append(write_seal(s, _sealed(closed)))
                late[-1] = replace(late[-1], seal=entries[-1].seal)
            servers = sorted({server for x in late for server in x.servers})
            mark = {"reason": why, "servers": servers}
            events = [
                append_anchor(s, self.audit_key_source, self.actor, part, late=mark)
                for part in _parts(entries)
            ]
            return LateAnchor(late, events)


def _refuse(late: Sequence[LateSeal]) -> None:
    """``AuditError`` naming the first seal that cannot be vouched for, if one cannot."""
    refused = [x for x in late if x.problem]
    if refused:
        bad = refused[0]
        name = "the records closed without a seal" if bad.closed else f"seal {bad.seal}"
        raise AuditError(
            f"refusing to anchor late: {len(refused)} of {len(late)} seals cannot be "
            f"vouched for; {name}: {bad.problem}. Nothing was anchored",
            hint="`modelyard audit anchor --dry-run` lists each seal and what was found; "
            "name the ones to anchor with --seal ID. A record that changed after its "
            "seal is what `audit verify --records` reports: compare with a backup.",
        )


def _parts(entries: Sequence[SealEntry]) -> list[Sequence[SealEntry]]:
    """The entries in events of at most ``ANCHOR_SEALS`` seals, as a writer anchors."""
    return [entries[i : i + ANCHOR_SEALS] for i in range(0, len(entries), ANCHOR_SEALS)]


def _first_time(index: RecordSealRow) -> datetime | None:
    try:
        return min(_utc(datetime.fromisoformat(str(at))) for at in index.times or ())
    except ValueError:
        return None


def _or_later(at: datetime | None) -> datetime:
    """Sort key: a missing time after every other."""
    return at if at is not None else datetime.max.replace(tzinfo=UTC)


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
    ids = tuple(str(m["id"]) for m in rows)
    late = LateSeal(NEW_SEAL, now, len(rows), min(times), max(times), servers, problem, True, ids)
    return late, SealEntry(NEW_SEAL, len(rows), "", "", "", "")


def _sealed(rows: list[dict[str, Any]]) -> PendingSeal:
    pending = prepare_seal(rows)
    assert pending is not None  # every row is final (status "error")
    return pending


__all__ = ["NEW_SEAL", "LateAnchor", "LateAnchorStore", "LateSeal"]
