"""The one detector of personal data: e-mail addresses, card, IBAN, US SSN, IP and phone numbers.

``data validate`` reports what ``find_pii`` finds and the ``redacted`` storage
policy masks the same spans (``redact_pii``), so a dataset that validates clean
and a stored prompt agree on what personal data is.

Patterns alone flag too much (order numbers look like card numbers), so numbers
are checked the way their issuers define them: card numbers by the Luhn
checksum, IBANs by ISO 13616's mod-97 check, IP addresses by the standard
library's ``ipaddress``. Phone numbers are found by Google's libphonenumber
(the ``phonenumbers`` package, offline metadata for every country): any number
written internationally (``+44 20 7946 0958``, ``0044 20 7946 0958``) that
could be a number of its country, a North American number in the usual
``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567`` shapes, and a national
number that is valid in one of ``PHONE_REGIONS`` (``020 7946 0958``,
``01 42 68 53 00``). Findings carry a masked value only (``****`` and the last
four characters), never the value itself, so a report about personal data does
not become a copy of it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers

PII_KINDS: tuple[str, ...] = ("email", "credit_card", "iban", "us_ssn", "ip_address", "phone")
"""The kinds of personal data ``find_pii`` looks for, in the order it looks."""

PII_LABELS: dict[str, str] = {
    "email": "[EMAIL]",
    "credit_card": "[CARD]",
    "iban": "[IBAN]",
    "us_ssn": "[SSN]",
    "ip_address": "[IP]",
    "phone": "[PHONE]",
}
"""What ``redact_pii`` writes in place of each kind."""


def has_redactions(*texts: str) -> bool:
    """Whether any of ``texts`` holds a label ``redact_pii`` writes: what it replaced is gone."""
    return any(label in text for label in PII_LABELS.values() for text in texts)


PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR")
"""Countries whose national phone numbers (no ``+``) are recognized when valid there.

Each region widens what counts as a phone number (a 10-digit serial starting
with 0 is a valid number somewhere), so the default is short; numbers written
with ``+`` or ``00`` are recognized for every country whatever this holds.
"""

_SEVEN_DIGITS = re.compile(r"\d(?:\D*\d){6}")
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# North American numbers as people write them: the groups separated, or the area in ().
_NANP_SHAPE = re.compile(r"^(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}$")
# A national number glued to letters or joined by - or / to other text is a reference
# (INV-2024-000123), not a phone number.
_GLUE = re.compile(r"[\w/-]")


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


def _ip_ok(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if address.version == 6:  # "a::b" or "12::" are more often code than addresses
        return sum(1 for group in candidate.split(":") if group) >= 3
    return True


def _phones(text: str, regions: Sequence[str]) -> list[tuple[int, int]]:
    """Spans of phone numbers (see the module's docstring for what counts)."""
    spans: list[tuple[int, int]] = []
    possible = phonenumbers.Leniency.POSSIBLE
    for match in phonenumbers.PhoneNumberMatcher(text, "US", leniency=possible):
        raw = match.raw_string
        international = raw.lstrip("(").startswith("+")
        nanp = _NANP_SHAPE.match(raw) is not None or phonenumbers.is_valid_number(match.number)
        if international or (nanp and not _glued(text, match.start, match.end)):
            spans.append((match.start, match.end))
    for region in regions:
        if region == "US":
            continue  # judged above
        for match in phonenumbers.PhoneNumberMatcher(text, region):  # VALID numbers only
            if not _glued(text, match.start, match.end):
                spans.append((match.start, match.end))
    return spans


def _glued(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    return bool(before and _GLUE.match(before)) or bool(after and _GLUE.match(after))


def find_pii(text: str, *, phone_regions: Sequence[str] = PHONE_REGIONS) -> list[PiiMatch]:
    """Every piece of personal data in ``text``, in order of position.

    Kinds are those in ``PII_KINDS``. A span is reported once, as the first
    kind (in that order) that matches it and passes its check: a valid card
    number is not also reported as a phone number.
    """
    found: list[PiiMatch] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, start: int, end: int, shown: str) -> None:
        if any(start < t_end and t_start < end for t_start, t_end in taken):
            return
        taken.append((start, end))
        found.append(PiiMatch(kind, mask(shown), start, end))

    if "@" in text:
        for m in _EMAIL.finditer(text):
            add("email", m.start(), m.end(), m.group())
    if _SEVEN_DIGITS.search(text):  # cards, IBANs, SSNs and phones have 7 digits or more
        for m in _CARD.finditer(text):
            digits = _digits(m.group())
            if 13 <= len(digits) <= 19 and luhn_ok(digits):
                add("credit_card", m.start(), m.end(), digits)
        for m in _IBAN.finditer(text):
            if iban_ok(m.group()):
                add("iban", m.start(), m.end(), m.group().replace(" ", ""))
        for m in _SSN.finditer(text):
            add("us_ssn", m.start(), m.end(), m.group())
    if "." in text or ":" in text:
        for pattern in (_IPV4, _IPV6):
            for m in pattern.finditer(text):
                if _ip_ok(m.group()):
                    add("ip_address", m.start(), m.end(), m.group())
    if _SEVEN_DIGITS.search(text):
        for start, end in sorted(_phones(text, phone_regions)):
            add("phone", start, end, text[start:end])
    found.sort(key=lambda p: p.start)
    return found


def redact_pii(text: str, *, phone_regions: Sequence[str] = PHONE_REGIONS) -> str:
    """``text`` with every span ``find_pii`` reports replaced by its kind's label
    (``[EMAIL]``, ``[CARD]``, ``[IBAN]``, ``[SSN]``, ``[IP]``, ``[PHONE]``)."""
    parts: list[str] = []
    at = 0
    for match in find_pii(text, phone_regions=phone_regions):
        parts += [text[at : match.start], PII_LABELS[match.kind]]
        at = match.end
    parts.append(text[at:])
    return "".join(parts)
