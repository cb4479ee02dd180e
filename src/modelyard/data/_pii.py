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

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber, PhoneNumberMatch, phonenumberutil

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
    passes = [("US", _POSSIBLE)] + [(region, _VALID) for region in regions if region != "US"]
    found = _matches(text, passes)
    spans: list[tuple[int, int]] = []
    for start, end, raw, number in found[0]:
        international = raw.lstrip("(").startswith("+")
        if international or (
            not _glued(text, start, end) and (_NANP_SHAPE.match(raw) is not None or _valid(number))
        ):
            spans.append((start, end))
    for matches in found[1:]:  # VALID numbers only
        spans += [(start, end) for start, end, _, _ in matches if not _glued(text, start, end)]
    return spans


def _valid(number: PhoneNumber) -> bool:
    """``phonenumbers.is_valid_number``, which first tries each region of the country code
    (25 share +1): a number of no length of theirs is not valid."""
    lengths = _valid_lengths(number.country_code)
    national = phonenumbers.national_significant_number(number)
    return (lengths is None or len(national) in lengths) and phonenumbers.is_valid_number(number)


@functools.cache
def _valid_lengths(country_code: int | None) -> frozenset[int] | None:
    """The lengths of the valid numbers of the regions of ``country_code`` (None: any)."""
    lengths: set[int] = set()
    if country_code is None:
        return None
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        plan = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if plan is None or plan.general_desc is None or not plan.general_desc.possible_length:
            return None
        lengths.update(plan.general_desc.possible_length)
    return frozenset(lengths) or None


# Characters no candidate of libphonenumber's matcher holds (its pattern: digits,
# punctuation, a plus sign, brackets and extensions such as "ext. 12", "x12", "anexo 12"):
# the text between them is matched on its own, and only where it may hold a number.
_NOT_IN_NUMBERS = "bcdfghjklmpqruvwyzBCDFGHJKLMPQRUVWYZ\n\r|\"'!?@$%&*<>{}_^`\\"
_IN_NUMBERS = f"[^{re.escape(_NOT_IN_NUMBERS)}]"
_DIGIT_RUN = re.compile(f"(?<!{_IN_NUMBERS}){_IN_NUMBERS}*[\\d+\uff0b]{_IN_NUMBERS}*")
_MAX_TRIES = 65535  # PhoneNumberMatcher's default max_tries: failed tries before it gives up
# At most, in a stretch where no try succeeds: a failed candidate of m characters costs 1 try
# and its 6 ways of splitting at most m + 1 each (<= 13 m); such candidates do not overlap.
_TRIES_PER_CHARACTER = 13

_Found = tuple[int, int, str, PhoneNumber]
_POSSIBLE, _VALID = phonenumbers.Leniency.POSSIBLE, phonenumbers.Leniency.VALID


def _matches(text: str, passes: list[tuple[str, int]]) -> list[list[_Found]]:
    """What ``PhoneNumberMatcher(text, region, leniency)`` finds for each of ``passes``.

    The matcher runs on the stretches between characters no candidate holds that may hold
    a number (a plus sign, or a screen's ``fewest`` digits), with the character either side
    that it looks at: no candidate crosses them, so it finds what it finds in the whole
    text. Where the first pass finds nothing in a stretch, every try it made failed (else
    a matcher that parses nothing records them); a pass whose screen rules them all out
    would find nothing, and is not run there. A pass that could spend the matcher's
    65,535 failed tries runs on the whole text."""
    screens = [_screen(region, leniency) for region, leniency in passes]
    fewest = min(screen.fewest for screen in screens)
    segments: list[list[int]] = []
    skipped = 0
    for start, end in (m.span() for m in _DIGIT_RUN.finditer(text)):
        run = text[start:end]
        if "+" in run or "\uff0b" in run or sum(map(str.isalnum, run)) >= fewest:
            low, high = max(start - 1, 0), min(end + 1, len(text))
            if segments and low <= segments[-1][1]:
                segments[-1][1] = high
            else:
                segments.append([low, high])
        else:  # each try here fails: the matcher spends at most this many on it
            skipped += _TRIES_PER_CHARACTER * (end - start)
    found: list[list[_Found]] = [[] for _ in passes]
    tries = [skipped] * len(passes)
    shared = _tries_are_seen()
    for low, high in segments:
        stretch = text[low:high]
        first: _Matcher | None = None
        failed: _Matcher | None = None  # the tries of a pass in which every try fails
        shapes: list[_Shape] = []  # those of its tries that a screen may pass
        for number, ((region, leniency), screen) in enumerate(zip(passes, screens, strict=True)):
            if first is not None and shared:
                if failed is None:
                    failed = first if not first.found else _Matcher(stretch, region, parse=False)
                    shapes = [_shape(c) for c in dict.fromkeys(failed.tried)]
                    shapes = [shape for shape in shapes if shape[1] or shape[2] >= fewest]
                if not any(screen.passes(*shape) for shape in shapes):
                    tries[number] += failed.spent
                    continue
            matcher = _Matcher(stretch, region, leniency)
            hits = [(low + m.start, low + m.end, m.raw_string, m.number) for m in matcher]
            found[number] += hits
            matcher.found = bool(hits)
            tries[number] += matcher.spent
            first = first or matcher
    for number, (region, leniency) in enumerate(passes):
        if tries[number] >= _MAX_TRIES:
            matcher = _Matcher(text, region, leniency)
            found[number] = [(m.start, m.end, m.raw_string, m.number) for m in matcher]
    return found


class _Matcher(phonenumbers.PhoneNumberMatcher):
    """libphonenumber's matcher, which does not parse a candidate that cannot be a match.

    The matcher tries every run of digits and its parts (split at spaces, dots, dashes,
    slashes), parsing each with the full metadata: about 0.1 ms a try. A failed try costs
    one of its tries, parsed or not, so not parsing one that cannot succeed
    (``_Screen.rules_out``) changes no match and no count. It keeps what it tried."""

    def __init__(self, text: str, region: str, leniency: int = _VALID, *, parse: bool = True):
        super().__init__(text, region, leniency=leniency)
        self._screen = _screen(region, leniency)
        self.tried: list[str] = []
        self.found = False
        self._parse = parse
        if not parse:  # every try fails: what is tried, and how many tries are spent
            for _ in self:
                pass

    def _parse_and_verify(self, candidate: str, offset: int) -> PhoneNumberMatch | None:
        self.tried.append(candidate)
        if not self._parse or self._screen.rules_out(candidate):
            return None
        return super()._parse_and_verify(candidate, offset)

    @property
    def spent(self) -> int:
        """The failed tries spent (all of them where the matcher does not say)."""
        left = getattr(self, "_max_tries", None)
        return _MAX_TRIES - left if isinstance(left, int) else _MAX_TRIES


_Shape = tuple[str, bool, int, str | None]


def _shape(candidate: str) -> _Shape:
    """``candidate``; whether it holds a plus sign (phonenumbers' _PLUS_CHARS); how many of
    its characters may be digits of a number (digits, letters); its digits where it is
    _SIMPLE, else None."""
    plus = "+" in candidate or "\uff0b" in candidate
    if plus or _SIMPLE.fullmatch(candidate) is None:
        return candidate, plus, sum(map(str.isalnum, candidate)), None
    digits = _NOT_DIGITS.sub("", candidate)
    return candidate, False, len(digits), digits


@functools.cache
def _tries_are_seen() -> bool:
    """Whether the matcher asks ``_parse_and_verify`` about each try, as ``_Matcher``
    expects (phonenumbers 9 does): if not, no pass is left out on what another tried."""
    return _Matcher("call 555-123-4567", "US", parse=False).tried == ["555-123-4567"]


# A candidate of ASCII digits and these separators has no extension, no letters, no plus:
# libphonenumber parses its digits alone (and those after the plus sign of _PLUS_SIMPLE).
_SIMPLE = re.compile(r"[0-9 ()./-]+")
_PLUS_SIMPLE = re.compile(r"\(?\+[0-9 ()./-]*")
_NOT_DIGITS = re.compile(r"[^0-9]+")


_NUMBER_TYPES = (
    "premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
    "voicemail", "fixed_line", "mobile",
)  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """What a national number of one region must look like to pass: one of its lengths and,
    for VALID, the region's pattern and that of one of its types of number (fixed line,
    mobile, ...), each with its lengths. ``None``: any."""

    lengths: frozenset[int] | None
    pattern: re.Pattern[str] | None = None
    types: tuple[tuple[frozenset[int] | None, re.Pattern[str]], ...] | None = None

    def fits(self, number: str) -> bool:
        if self.lengths is not None and len(number) not in self.lengths:
            return False
        if self.pattern is not None and self.pattern.fullmatch(number) is None:
            return False
        return self.types is None or any(
            (lengths is None or len(number) in lengths) and pattern.fullmatch(number)
            for lengths, pattern in self.types
        )


@dataclass(frozen=True)
class _Screen:
    """The cheap checks that rule a candidate out before libphonenumber parses it, for one
    region and leniency (see ``_screen``)."""

    fewest: int
    idd: re.Pattern[str] | None = None
    country_code: str = ""
    national_prefix: re.Pattern[str] | None = None
    plans: tuple[_Plan, ...] = ()
    lengths: frozenset[int] | None = None  # those of all plans: a quick no
    formats: tuple[tuple[re.Pattern[str] | None, re.Pattern[str], bool], ...] = ()

    def rules_out(self, candidate: str) -> bool:
        """Whether libphonenumber would reject ``candidate`` (see ``_screen``)."""
        if len(candidate) < self.fewest and "+" not in candidate and "\uff0b" not in candidate:
            return True
        return not self.passes(*_shape(candidate))

    def passes(self, candidate: str, plus: bool, count: int, digits: str | None) -> bool:
        """Whether a candidate of this ``_shape`` may pass."""
        if plus:
            return not self._no_country(candidate)
        if count < self.fewest:
            return False
        return digits is None or not self.plans or self._may_match(digits)

    def _no_country(self, candidate: str) -> bool:
        """Whether ``candidate``, ``+`` and digits, cannot be parsed: no country code starts
        with 0 (``+0000``, a time zone), and the digits are then read as dialled in the
        region, which needs its international prefix (``+00 44 ...``) to give a country."""
        if _PLUS_SIMPLE.fullmatch(candidate) is None:
            return False
        digits = _NOT_DIGITS.sub("", candidate)
        if not digits.startswith("0"):
            return False
        dialled = self.idd.match(digits) if self.idd is not None else None
        return dialled is None or digits[dialled.end() :].startswith("0")

    def _may_match(self, digits: str) -> bool:
        """Whether some national significant number that parsing ``digits`` can give passes,
        unless an international prefix starts them (then: parse). The number is ``digits``
        as they are or without a national prefix; or, where the country code starts them,
        the rest, with or without a national prefix. VALID wants the national prefix
        written where the number's format has it (``030 1234567``, not ``30 1234567``)."""
        if self.idd is not None and self.idd.match(digits):
            return True
        prefixed = self.national_prefix is not None and self.national_prefix.match(digits)
        for number in self._stripped(digits):
            if self._fits(number) and (prefixed or not self._needs_prefix(number)):
                return True
        if digits.startswith(self.country_code):
            rest = digits[len(self.country_code) :]
            return any(self._fits(number) for number in self._stripped(rest))
        return False

    def _stripped(self, number: str) -> list[str]:
        """``number``, and without its national prefix (once, twice)."""
        numbers = [number]
        for _ in range(2):
            prefix = self.national_prefix.match(number) if self.national_prefix else None
            if not (prefix and prefix.end()):
                break
            number = number[prefix.end() :]
            numbers.append(number)
        return numbers

    def _fits(self, number: str) -> bool:
        if self.lengths is not None and len(number) not in self.lengths:
            return False
        return any(plan.fits(number) for plan in self.plans)

    def _needs_prefix(self, number: str) -> bool:
        """Whether VALID rejects ``number`` written without its national prefix: the first of
        the region's formats that fits it writes one, and not optionally."""
        for leading, pattern, needs in self.formats:
            if (leading is None or leading.match(number)) and pattern.fullmatch(number):
                return needs
        return False


@functools.cache
def _screen(region: str, leniency: int) -> _Screen:
    """The checks for ``region`` at ``leniency`` from libphonenumber's metadata.

    A candidate with no plus sign needs ``_fewest_characters`` digits (or letters, read as
    digits). One of ASCII digits and separators is parsed from its digits alone: unless
    the international prefix (``00``, ``011``) starts them, its national number is those
    digits less country code and national prefix, and passing needs a possible length
    (POSSIBLE) or a region's pattern (VALID). A region whose national prefix rule rewrites
    numbers, or parsed with another region's rules, gets the count of digits alone."""
    fewest = _fewest_characters(region, leniency)
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None or not metadata.country_code:
        return _Screen(fewest)
    code = metadata.country_code
    if (
        phonenumbers.region_code_for_country_code(code) != region
        or metadata.national_prefix_transform_rule
    ):
        return _Screen(fewest)
    plans: list[_Plan] = []
    for other in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
        plan = PhoneMetadata.metadata_for_region_or_calling_code(code, other)
        if plan is None or plan.general_desc is None:
            return _Screen(fewest)
        desc = plan.general_desc
        lengths = set(desc.possible_length or ())
        if leniency == _POSSIBLE:
            lengths |= set(desc.possible_length_local_only or ())
            plans.append(_Plan(frozenset(lengths) if lengths else None))
            continue  # lengths alone: is_possible_number's test
        types = []
        for name in _NUMBER_TYPES:
            kind = getattr(plan, name, None)
            if kind is not None and kind.national_number_pattern:
                lengths_of_kind = frozenset(kind.possible_length or ()) or None
                types.append((lengths_of_kind, re.compile(kind.national_number_pattern)))
        pattern = _compiled(desc.national_number_pattern)
        plans.append(_Plan(frozenset(lengths) if lengths else None, pattern, tuple(types)))
    formats: list[tuple[re.Pattern[str] | None, re.Pattern[str], bool]] = []
    first_group_only = getattr(phonenumberutil, "_formatting_rule_has_first_group_only", None)
    if leniency == _VALID and first_group_only is not None:
        for form in metadata.number_format:
            rule = form.national_prefix_formatting_rule
            needs = bool(rule) and not form.national_prefix_optional_when_formatting
            leading = form.leading_digits_pattern
            if not form.pattern or (leading and not leading[-1]):
                return _Screen(fewest)
            formats.append(
                (
                    re.compile(leading[-1]) if leading and leading[-1] else None,
                    re.compile(form.pattern),
                    needs and not first_group_only(rule),
                )
            )
    every = [plan.lengths for plan in plans]
    return _Screen(
        fewest,
        idd=_compiled(metadata.international_prefix),
        country_code=str(code),
        national_prefix=_compiled(metadata.national_prefix_for_parsing),
        plans=tuple(plans),
        lengths=frozenset().union(*every) if all(every) else None,  # type: ignore[arg-type]
        formats=tuple(formats),
    )


def _compiled(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


@functools.cache
def _fewest_characters(region: str, leniency: int) -> int:
    """The fewest digits a candidate without a plus sign needs to be a match for ``region``
    at ``leniency`` (POSSIBLE: a possible length, local-only too; VALID: a plan's length);
    1: parse every candidate. It is a national number (the national prefix and country code
    stripped, or rewritten by a national prefix rule: San Marino's adds ``0549`` to 6
    digits), or an international prefix (``00``, ``011``), a country code and a number."""
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None or not metadata.country_code:
        return 1
    code = metadata.country_code
    main = phonenumbers.region_code_for_country_code(code)
    national = _fewest_national(code, leniency, (region, main))
    prefix = metadata.international_prefix or ""
    dialled = len(prefix) if prefix.isdigit() else 0
    international = min(
        len(str(other))
        + _fewest_national(other, leniency, (phonenumbers.region_code_for_country_code(other),))
        for other in phonenumbers.COUNTRY_CODE_TO_REGION_CODE
    )
    return max(1, min(national, dialled + international))


@functools.cache
def _fewest_national(country_code: int, leniency: int, parsed_in: tuple[str, ...]) -> int:
    """The fewest digits of a national number of ``country_code`` that can pass at
    ``leniency``, parsed with the national prefix rules of the regions ``parsed_in``."""
    plans = [
        PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    ]
    rules = [
        PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        for region in parsed_in
    ]
    lengths: list[int] = []
    for plan in plans:
        if plan is None or plan.general_desc is None or not plan.general_desc.possible_length:
            return 1
        lengths += plan.general_desc.possible_length
        if leniency == _POSSIBLE:
            lengths += plan.general_desc.possible_length_local_only or ()
    added = [_lengthening(rule) if rule is not None else None for rule in rules]
    if not lengths or None in added:
        return 1
    return max(1, min(lengths) - max(a for a in added if a is not None))


_GROUP_REFERENCE = re.compile(r"\\(\d)")


def _lengthening(plan: PhoneMetadata) -> int | None:
    """How many digits ``plan``'s national prefix rule can add to a number: the rule
    replaces what its pattern matched with its groups and digits of its own (``0549\\1``);
    None where that is not known (a group used twice, a character not a digit)."""
    rule = plan.national_prefix_transform_rule
    if not rule:
        return 0
    groups = _GROUP_REFERENCE.findall(rule)
    own = _GROUP_REFERENCE.sub("", rule)
    if len(set(groups)) != len(groups) or (own and not own.isdigit()):
        return None
    return len(own)


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
