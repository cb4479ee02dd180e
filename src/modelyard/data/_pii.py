"""Finding personal data in text: e-mail addresses, phone, card, IBAN and US SSN numbers.

Patterns alone flag too much (order numbers look like card numbers), so
numbers are checked the way their issuers define them: card numbers by the
Luhn checksum, IBANs by ISO 13616's mod-97 check. Findings carry a masked
value only (``****`` and the last four characters), never the value itself, so
a report about personal data does not become a copy of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PII_KINDS: tuple[str, ...] = ("email", "credit_card", "iban", "us_ssn", "phone")
"""The kinds of personal data ``find_pii`` looks for, in the order it looks."""

_SEVEN_DIGITS = re.compile(r"\d(?:\D*\d){6}")
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r")(?![\w-])"
)


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data in a text: its kind, masked value and position."""

    kind: str
    masked: str
    start: int
    end: int


def mask(value: str) -> str:
    """``****`` and the last four characters of ``value`` (all masked when it is that short)."""
    return "****" + (value[-4:] if len(value) > 4 else "")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) checksum of card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """The ISO 13616 check: country and check digits moved to the end, as a number mod 97 is 1."""
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def find_pii(text: str) -> list[PiiMatch]:
    """Every piece of personal data in ``text``, in order of position.

    Kinds are those in ``PII_KINDS``. A span is reported once, as the first
    kind (in that order) that matches it and passes its check: a valid card
    number is not also reported as a phone number.
    """
    found: list[PiiMatch] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match[str], shown: str) -> None:
        if any(m.start() < end and start < m.end() for start, end in taken):
            return
        taken.append((m.start(), m.end()))
        found.append(PiiMatch(kind, mask(shown), m.start(), m.end()))

    if "@" in text:
        for m in _EMAIL.finditer(text):
            add("email", m, m.group())
    if not _SEVEN_DIGITS.search(text):  # every number kind below has at least 7 digits
        return found
    for m in _CARD.finditer(text):
        digits = _digits(m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            add("credit_card", m, digits)
    for m in _IBAN.finditer(text):
        if iban_ok(m.group()):
            add("iban", m, m.group().replace(" ", ""))
    for m in _SSN.finditer(text):
        add("us_ssn", m, m.group())
    for m in _PHONE.finditer(text):
        if 7 <= len(_digits(m.group())) <= 15:
            add("phone", m, m.group())
    found.sort(key=lambda p: p.start)
    return found
