"""The HMAC chain: computing an event's hash, and the chain's end against the recorded head.

``hash = hex(HMAC-SHA256(key, prev_hash + canonical_json({"seq", "time", "actor",
"action", "subject", "payload"})))``, where ``prev_hash`` is the previous
event's hash (64 zeros for the first event) and the text is UTF-8.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from modelyard.audit._canonical import canonical_json, format_time
from modelyard.audit._event import AuditEvent, AuditHead


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
