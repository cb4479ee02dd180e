"""Verifying the chain: every break found and named, and the breaks an admin acknowledged.

A *break* is a place where the chain is not what modelyard wrote: an event missing
(a gap in ``seq``), an event that does not link to the one before it (reordered,
inserted), an event whose hash does not match its content (edited, forged), or a
chain whose end is not the head the store recorded. ``scan_chain`` reads the whole
chain once and lists every break with a *fingerprint* of the chain's state there;
``judge_chain`` sets them against the acknowledgments in the chain.

An acknowledgment (action ``audit.break_acknowledged``, written only by the store's
``acknowledge_audit_breaks``, role admin) is an event like any other: hashed with
the key and linked to the event before it. Its payload lists the breaks it
acknowledges, with their fingerprints. A break counts as acknowledged only when a
valid acknowledgment *after* it lists it with the same fingerprint, so the
acknowledgment covers the chain exactly as the admin saw it: altering an
acknowledged event again, or breaking the chain anywhere else, is a new break.
Acknowledged breaks stay in every report.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelyard.audit._canonical import format_time
from modelyard.audit._chain import hash_of
from modelyard.audit._event import EMPTY_HEAD, GENESIS, AuditEvent, AuditHead
from modelyard.errors import AuditChainBroken

ACK_ACTION = "audit.break_acknowledged"
"""The action of an acknowledgment; ``Store.record_audit_event`` refuses it."""

SCAN_LIMIT = 1000
"""Breaks listed at most by one scan (a wrong key breaks every event)."""

HASH_REASON = "its hash does not match its content; the event was edited or forged"
WRONG_KEY = " (or the audit key is not the one that wrote the chain: it verifies no event)"

BreakFound = Literal["verify", "write"]

GIVEN_HEAD = "the head given with --head"
"""How a break that only a head kept outside the store shows names that head: it came from
whoever ran ``verify`` (``--head``, or the admin API's ``head``), not from the store."""

GIVEN_HEAD_HINT = (
    "Compare that head with the copy kept outside the store (`modelyard audit head` prints "
    "where the chain ends now). If events were removed or rewritten, restore the audit "
    "tables from a backup. If the head was mistyped and an admin gave it, the break is on "
    "record and audited changes are refused until an admin acknowledges it: `modelyard audit "
    'acknowledge --reason "the head given with --head was mistyped"` (audited; the break '
    "stays on record); given by anyone else, nothing was recorded: verify with the right head."
)


RECORDED_ONLY_HINT = (
    "The events themselves verify now: the chain no longer shows this break, which is on "
    "record from when it was found (the audit tables were restored from a backup since, or "
    "the event was put back). Audited changes stay refused until an admin acknowledges it: "
    '`modelyard audit acknowledge --reason "restored the audit tables from the backup of ..."` '
    "(audited; the break stays on record)."
)


def missing_reason(first: int, next_seq: int) -> str:
    """Events ``first`` .. ``next_seq - 1`` are not stored."""
    if next_seq == first + 1:
        return (
            f"event {first} is missing (the next stored event is {next_seq}); an event was deleted"
        )
    return (
        f"events {first}..{next_seq - 1} are missing (the next stored event is {next_seq}); "
        "events were deleted"
    )


def link_reason(seq: int) -> str:
    return (
        f"its prev_hash does not match the hash of event {seq - 1}; "
        "events were reordered, inserted or deleted"
    )


def given_head_reason(end: AuditHead, given: AuditHead) -> str:
    """The chain ends at ``end``, before the ``given`` head's seq."""
    stored = f"ends at event {end.seq}" if end.seq else "is empty"
    return (
        f"the chain {stored} but {GIVEN_HEAD} is {given.seq}: events {end.seq + 1}.."
        f"{given.seq} were removed, or the head was mistyped"
    )


def given_hash_reason(given: AuditHead) -> str:
    """The event at the ``given`` head's seq carries another hash."""
    return (
        f"its hash differs from {GIVEN_HEAD}, {given}: the chain was rewritten from this "
        "event on, or the head was mistyped"
    )


def fingerprint(*parts: object) -> str:
    """A digest of the chain's state at a break (what an acknowledgment covers): 64 bits
    of SHA-256 over the stored hash and the one the key computes, among others, so
    that nobody without the key can alter an acknowledged event to the same one."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ChainBreak:
    """Where the chain is broken (``seq``), why, and the chain's state there.

    ``fingerprint`` is None for a break the store recorded that the chain itself
    no longer shows (e.g. the events were restored from a backup since).
    """

    seq: int
    reason: str
    fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": self.reason, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: object) -> ChainBreak | None:
        """A break as an acknowledgment lists it; None for anything else."""
        if not isinstance(data, Mapping):
            return None
        seq, reason, digest = data.get("seq"), data.get("reason"), data.get("fingerprint")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(reason, str):
            return None
        return cls(seq, reason, digest if isinstance(digest, str) else None)


@dataclass(frozen=True)
class RecordedBreak:
    """A break the store recorded when ``audit verify`` or the check before an audited
    write found it. While one is not acknowledged, every audited change is refused."""

    seq: int
    reason: str
    found_at: datetime
    found_by: str
    found_in: BreakFound
    acknowledged_seq: int | None = None

    def describe(self) -> str:
        """``found by `audit verify`, actor alice, 2026-12-10 10:00 UTC``."""
        how = "`audit verify`" if self.found_in == "verify" else "the check before a write"
        return f"found by {how}, actor {self.found_by}, {self.found_at:%Y-%m-%d %H:%M} UTC"

    def as_break(self) -> ChainBreak:
        return ChainBreak(self.seq, f"{self.reason} ({self.describe()})")

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "reason": self.reason,
            "found_at": format_time(self.found_at),
            "found_by": self.found_by,
            "found_in": self.found_in,
            "acknowledged_seq": self.acknowledged_seq,
        }


@dataclass(frozen=True)
class AcknowledgedBreak:
    """A break an admin acknowledged: the break, and the acknowledgment that lists it."""

    seq: int
    reason: str
    ack_seq: int
    actor: str
    time: datetime
    why: str

    def sentence(self) -> str:
        return (
            f"seq {self.seq}: {self.reason}; acknowledged at seq {self.ack_seq} by "
            f"{self.actor}, {self.time:%Y-%m-%d %H:%M} UTC: {self.why}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "reason": self.reason,
            "acknowledged_seq": self.ack_seq,
            "acknowledged_by": self.actor,
            "acknowledged_time": format_time(self.time),
            "acknowledgment_reason": self.why,
        }


@dataclass
class ChainScan:
    """What one pass over the chain saw: every break, and the valid acknowledgments."""

    events: int = 0
    verified: int = 0  # events whose hash the key reproduces
    head: AuditHead = EMPTY_HEAD  # the newest stored event
    breaks: list[ChainBreak] = field(default_factory=list)
    acks: list[AuditEvent] = field(default_factory=list)
    truncated: bool = False  # more than SCAN_LIMIT breaks: the rest were not listed

    @property
    def wrong_key(self) -> bool:
        """The key reproduces no event's hash: it is not the key that wrote the chain."""
        return self.events > 0 and self.verified == 0


def scan_chain(
    events: Iterable[AuditEvent],
    key: bytes,
    *,
    expected_head: AuditHead | None = None,
    limit: int = SCAN_LIMIT,
) -> ChainScan:
    """Recompute the chain from the first event (``events`` in ascending ``seq``) and list
    every break, going on after each from the event as stored.

    With ``expected_head`` (kept outside the store) the chain must also reach that
    seq with that hash; without it a removed tail is invisible here (the store
    compares the end with the head it recorded: ``head_problem``).
    """
    scan = ChainScan()
    expected_seq, prev = 1, GENESIS

    def add(seq: int, reason: str, *state: object) -> None:
        if len(scan.breaks) >= limit:
            scan.truncated = True
        else:
            scan.breaks.append(ChainBreak(seq, reason, fingerprint(*state)))

    for event in events:
        scan.events += 1
        recomputed = hash_of(key, event)
        intact = hmac.compare_digest(recomputed, event.hash)
        scan.verified += intact
        state = (event.seq, event.hash, recomputed)
        broken = True
        if event.seq > expected_seq:  # the gap is the break; the event may still be intact
            add(expected_seq, missing_reason(expected_seq, event.seq), "gap", prev, *state)
            broken = False
        elif event.seq < expected_seq:
            add(event.seq, f"event {event.seq} appears twice or out of order", "order", *state)
        elif event.prev_hash != prev:
            add(event.seq, link_reason(event.seq), "link", prev, *state)
        else:
            broken = False
        if not broken and not intact:
            add(event.seq, HASH_REASON, "hash", *state)
            broken = True
        if (
            not broken
            and expected_head is not None
            and event.seq == expected_head.seq
            and event.hash != expected_head.hash
        ):
            add(
                event.seq,
                given_hash_reason(expected_head),
                "head",
                expected_head,
                *state,
            )
            broken = True
        if not broken and event.action == ACK_ACTION:
            scan.acks.append(event)
        prev, expected_seq = event.hash, event.seq + 1
        scan.head = AuditHead(event.seq, event.hash)
        if scan.truncated:
            break
    if scan.wrong_key:
        scan.breaks = [
            ChainBreak(b.seq, b.reason + WRONG_KEY, b.fingerprint) if b.reason == HASH_REASON else b
            for b in scan.breaks
        ]
    if expected_head is not None and expected_head.seq > scan.head.seq and not scan.truncated:
        add(
            scan.head.seq + 1,
            given_head_reason(scan.head, expected_head),
            "tail",
            expected_head,
            scan.head,
        )
    return scan


@dataclass(frozen=True)
class ChainReport:
    """What verification found: ``ok``, or the first break not acknowledged and why.

    ``breaks`` are all the breaks no acknowledgment covers (by seq);
    ``acknowledged`` the breaks that acknowledgments in the chain list, which a
    passing chain still reports.
    """

    ok: bool
    events: int
    head: AuditHead
    first_bad_seq: int | None = None
    reason: str | None = None
    breaks: tuple[ChainBreak, ...] = ()
    acknowledged: tuple[AcknowledgedBreak, ...] = ()

    def raise_if_broken(self) -> None:
        if not self.ok:
            more = len(self.breaks) - 1
            after = f" ({more} more break{'s' if more > 1 else ''} after it)" if more > 0 else ""
            given = GIVEN_HEAD in (self.reason or "")  # only a kept head shows it
            # Every break only on record (no fingerprint): the events verify now, e.g. the
            # audit tables were restored; "restore from a backup" again would change nothing.
            on_record = bool(self.breaks) and all(b.fingerprint is None for b in self.breaks)
            raise AuditChainBroken(
                f"audit chain broken at seq {self.first_bad_seq}: {self.reason}{after}",
                hint=GIVEN_HEAD_HINT if given else RECORDED_ONLY_HINT if on_record else None,
                first_bad_seq=self.first_bad_seq,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head": str(self.head),
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "breaks": [b.to_json() for b in self.breaks],
            "acknowledged_breaks": [a.to_json() for a in self.acknowledged],
        }


def acknowledged_breaks(acks: Iterable[AuditEvent]) -> list[tuple[AcknowledgedBreak, str | None]]:
    """Each break the acknowledgments list, with its fingerprint: only breaks before them, or
    at their own seq (the first event of a removed tail, whose place the acknowledgment took)."""
    found = []
    for ack in acks:
        why = str(ack.payload.get("reason", ""))
        listed = ack.payload.get("breaks")
        for item in listed if isinstance(listed, list) else ():
            brk = ChainBreak.from_json(item)
            if brk is not None and brk.seq <= ack.seq:
                done = AcknowledgedBreak(brk.seq, brk.reason, ack.seq, ack.actor, ack.time, why)
                found.append((done, brk.fingerprint))
    return found


def judge_chain(
    scan: ChainScan,
    *,
    extra: Iterable[ChainBreak] = (),
    recorded: Iterable[RecordedBreak] = (),
) -> ChainReport:
    """The report on ``scan``: its breaks and ``extra`` ones (the chain's end against the
    recorded head), less those an acknowledgment covers, plus the store's ``recorded``
    breaks not acknowledged yet (each named once, by the chain's reason when it shows one)."""
    listed = acknowledged_breaks(scan.acks)
    covered = {(done.seq, digest) for done, digest in listed if digest is not None}
    found = [b for b in [*scan.breaks, *extra] if (b.seq, b.fingerprint) not in covered]
    at = {b.seq for b in found}
    found += [r.as_break() for r in recorded if r.seq not in at]
    found.sort(key=lambda b: b.seq)
    acknowledged = tuple(done for done, _ in listed)
    if not found:
        return ChainReport(True, scan.events, scan.head, acknowledged=acknowledged)
    first = found[0]
    return ChainReport(
        False, scan.events, scan.head, first.seq, first.reason, tuple(found), acknowledged
    )


def verify_chain(
    events: Iterable[AuditEvent], key: bytes, *, expected_head: AuditHead | None = None
) -> ChainReport:
    """Recompute the chain from the first event; name the first break no acknowledgment
    covers. ``events`` must come in ascending ``seq`` order; see ``scan_chain``."""
    return judge_chain(scan_chain(events, key, expected_head=expected_head))
