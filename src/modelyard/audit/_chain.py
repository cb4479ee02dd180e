"""The HMAC chain: computing an event's hash and verifying a whole chain.

``hash = hex(HMAC-SHA256(key, prev_hash + canonical_json({"seq", "time", "actor",
"action", "subject", "payload"})))``, where ``prev_hash`` is the previous
event's hash (64 zeros for the first event) and the text is UTF-8.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelyard.audit._canonical import canonical_json, format_time
from modelyard.audit._event import EMPTY_HEAD, GENESIS, AuditEvent, AuditHead
from modelyard.errors import AuditChainBroken


def event_message(
    prev_hash: str,
    *,
    seq: int,
    time: datetime,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
) -> bytes:
    """The exact bytes the HMAC covers."""
    body = {
        "seq": seq,
        "time": format_time(time),
        "actor": actor,
        "action": action,
        "subject": subject,
        "payload": dict(payload),
    }
    return (prev_hash + canonical_json(body)).encode("utf-8")


def event_hash(
    key: bytes,
    prev_hash: str,
    *,
    seq: int,
    time: datetime,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
) -> str:
    message = event_message(
        prev_hash, seq=seq, time=time, actor=actor, action=action, subject=subject, payload=payload
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def hash_of(key: bytes, event: AuditEvent) -> str:
    """The hash ``event`` should carry, recomputed from its content and ``prev_hash``."""
    return event_hash(
        key,
        event.prev_hash,
        seq=event.seq,
        time=event.time,
        actor=event.actor,
        action=event.action,
        subject=event.subject,
        payload=event.payload,
    )


@dataclass(frozen=True)
class ChainReport:
    """What ``verify_chain`` found: ``ok``, or the first bad seq and why."""

    ok: bool
    events: int
    head: AuditHead
    first_bad_seq: int | None = None
    reason: str | None = None

    def raise_if_broken(self) -> None:
        if not self.ok:
            raise AuditChainBroken(
                f"audit chain broken at seq {self.first_bad_seq}: {self.reason}",
                first_bad_seq=self.first_bad_seq,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head": str(self.head),
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def head_problem(actual: AuditHead, recorded: AuditHead | None) -> tuple[int, str] | None:
    """(first bad seq, why) when the chain's newest event ``actual`` is not the head the
    store recorded with its last append (``recorded``; None: that record is gone)."""
    if recorded is None:
        return (
            actual.seq + 1,
            "the store's record of the chain head (table audit_head) was deleted; "
            "events after the last one stored may have been removed",
        )
    if recorded.seq > actual.seq:
        stored = f"ends at event {actual.seq}" if actual.seq else "is empty"
        return (
            actual.seq + 1,
            f"the chain {stored} but the store recorded head {recorded}: events "
            f"{actual.seq + 1}..{recorded.seq} were removed (audit table emptied or truncated)",
        )
    if recorded.seq < actual.seq:
        return (
            recorded.seq + 1,
            f"the chain goes on to event {actual.seq} past the recorded head {recorded}: "
            f"events {recorded.seq + 1}..{actual.seq} were added outside modelyard",
        )
    if actual.hash != recorded.hash:
        return (
            actual.seq,
            f"its hash differs from the recorded head {recorded}; the chain was rewritten",
        )
    return None


def verify_chain(
    events: Iterable[AuditEvent], key: bytes, *, expected_head: AuditHead | None = None
) -> ChainReport:
    """Recompute the chain from the first event; name the first event that does not fit.

    ``events`` must come in ascending ``seq`` order. Without ``expected_head`` a
    removed *tail* cannot be seen (the shorter chain is consistent); with it, the
    chain must reach that seq with that hash.
    """
    expected_seq = 1
    prev = GENESIS
    head = EMPTY_HEAD
    count = 0

    def broken(seq: int, reason: str) -> ChainReport:
        return ChainReport(False, count, head, seq, reason)

    for event in events:
        if event.seq != expected_seq:
            if event.seq > expected_seq:
                return broken(
                    expected_seq,
                    f"event {expected_seq} is missing (the next stored event is {event.seq}); "
                    "an event was deleted",
                )
            return broken(event.seq, f"event {event.seq} appears twice or out of order")
        if event.prev_hash != prev:
            return broken(
                event.seq,
                f"its prev_hash does not match the hash of event {event.seq - 1}; "
                "events were reordered, inserted or deleted",
            )
        if not hmac.compare_digest(hash_of(key, event), event.hash):
            return broken(
                event.seq,
                "its hash does not match its content; the event was edited or forged "
                "(or the audit key is not the one that wrote the chain)",
            )
        if (
            expected_head is not None
            and event.seq == expected_head.seq
            and event.hash != expected_head.hash
        ):
            return broken(
                event.seq,
                f"its hash differs from the recorded head {expected_head}; the chain "
                "was rewritten from this event on",
            )
        prev = event.hash
        head = AuditHead(event.seq, event.hash)
        count += 1
        expected_seq += 1
    if expected_head is not None and expected_head.seq > head.seq:
        return broken(
            head.seq + 1,
            f"the chain ends at event {head.seq} but the recorded head is {expected_head.seq}; "
            f"events {head.seq + 1}..{expected_head.seq} were removed (tail truncated)",
        )
    return ChainReport(True, count, head)
