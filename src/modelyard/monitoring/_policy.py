"""What of a prompt or response is kept, per the tenant's storage policy.

``redacted`` masks what ``modelyard.data.find_pii`` finds, the same detector
``data validate`` reports with, so the two never disagree on what is personal data.
"""

from __future__ import annotations

import hashlib

from modelyard.data import redact_pii
from modelyard.store import StoragePolicy


def redact(text: str) -> str:
    """Mask e-mail addresses, card, IBAN, SSN, IP and phone numbers (``[EMAIL]``, ...)."""
    return redact_pii(text)


def apply_storage_policy(text: str | None, policy: StoragePolicy) -> str | None:
    if text is None or policy == "none":
        return None
    if policy == "hash":
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    if policy == "redacted":
        return redact(text)
    return text
