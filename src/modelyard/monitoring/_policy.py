"""What of a prompt or response is kept, per the tenant's storage policy."""

from __future__ import annotations

import hashlib
import re

from modelyard.store import StoragePolicy

# Ordered: the specific patterns first, so a card number is not eaten as a phone number.
_PII_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,3})?\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("PHONE", re.compile(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{3,4}[ .-]?\d{3,4}\b")),
)


def redact(text: str) -> str:
    """Mask e-mail addresses, IBANs, card and phone numbers."""
    for label, pattern in _PII_PATTERNS:
        text = pattern.sub(f"[{label}]", text)
    return text


def apply_storage_policy(text: str | None, policy: StoragePolicy) -> str | None:
    if text is None or policy == "none":
        return None
    if policy == "hash":
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    if policy == "redacted":
        return redact(text)
    return text
