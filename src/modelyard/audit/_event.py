"""One audit event and a chain head, as plain frozen values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelyard.audit._canonical import format_time
from modelyard.errors import ConfigError

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event."""

_HEAD_RE = re.compile(r"^(?P<seq>\d+):(?P<hash>[0-9a-f]{64})$")


@dataclass(frozen=True)
class AuditEvent:
    """One link of the chain: ``hash = HMAC(key, prev_hash + canonical(fields))``."""

    seq: int
    time: datetime
    actor: str
    action: str
    subject: str
    payload: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (what `audit export` writes, one per line)."""
        return {
            "seq": self.seq,
            "time": format_time(self.time),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "payload": dict(self.payload),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class AuditHead:
    """The newest event's ``seq`` and ``hash``; keep a copy outside the store."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """``SEQ:HASH`` as printed by ``modelyard audit head``."""
        match = _HEAD_RE.match(text.strip().lower())
        if not match:
            raise ConfigError(
                f"invalid audit head {text!r}",
                hint="Use SEQ:HASH as printed by `modelyard audit head` (64 hex digits).",
            )
        return cls(int(match.group("seq")), match.group("hash"))


EMPTY_HEAD = AuditHead(0, GENESIS)
