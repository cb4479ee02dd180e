"""``find_pii`` on digit-heavy rows: the fast phone matching finds exactly what the old one did.

The old code ran libphonenumber's ``PhoneNumberMatcher`` over the whole text, parsing
every run of digits four times (US, GB, DE, FR). The new one screens candidates that
cannot be a number before parsing them, and matches only the stretches of text that may
hold one. The reference below is the old code as it was (commit 6c5259d); every text
here, generated or hand-written, must give the same findings (kind, span, mask, order)."""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Sequence

import phonenumbers
import phonenumbers.phonenumbermatcher as matcher_module
import pytest

from modelyard.data import PiiMatch, _pii, find_pii, redact_pii

# --- the reference: find_pii before the change ------------------------------------------


def _old_phones(text: str, regions: Sequence[str]) -> list[tuple[int, int]]:
    """``_pii._phones`` before the change (the one part of ``find_pii`` it changed)."""
    spans: list[tuple[int, int]] = []
    possible = phonenumbers.Leniency.POSSIBLE
    for match in phonenumbers.PhoneNumberMatcher(text, "US", leniency=possible):
        raw = match.raw_string
        international = raw.lstrip("(").startswith("+")
        nanp = _pii._NANP_SHAPE.match(raw) is not None or phonenumbers.is_valid_number(match.number)
        if international or (nanp and not _pii._glued(text, match.start, match.end)):
            spans.append((match.start, match.end))
    for region in regions:
        if region == "US":
            continue
        for match in phonenumbers.PhoneNumberMatcher(text, region):
            if not _pii._glued(text, match.start, match.end):
                spans.append((match.start, match.end))
    return spans


def old_find_pii(
    text: str, *, phone_regions: Sequence[str] = ("US", "GB", "DE", "FR")
) -> list[PiiMatch]:
    """``find_pii`` before the change: its other checks are unchanged, so it is today's
    with the old phone matching swapped in (one thread: the swap is not thread-safe)."""
    new = _pii._phones
    _pii._phones = _old_phones
    try:
        return _pii.find_pii(text, phone_regions=phone_regions)
    finally:
        _pii._phones = new


# --- texts ------------------------------------------------------------------------------

SHAPES = [
    "(415) 555-0132", "415-555-0132", "415.555.0132", "415 555 0132", "+1 415 555 0132",
    "1-415-555-0132", "4155550132", "+14155550132", "011 44 20 7946 0958", "+44 20 7946 0958",
    "0044 20 7946 0958", "+44 (0)20 7946 0958", "020 7946 0958", "07700 900123",
    "030 12345678", "+49 30 12345678", "0049 30 1234567", "0171 1234567", "089 123456",
    "01 42 68 53 00", "+33 1 42 68 53 00", "06 12 34 56 78", "0033 6 12 34 56 78",
    "555-123-4567 ext. 12", "555-123-4567 x12", "+1 415 555 0132 #12", "555 1234",
    "2024-01-05", "05/01/2024", "1/5/24", "2024-01-05 12:30:45", "12:30", "+0000", "-0500",
    "1,299.99", "$4,500", "12%", "v2.3.1", "INV-2024-000123", "ref 1234 5678 9012 3456",
    "4111 1111 1111 1111", "078-05-1120", "192.168.1.10", "fe80::1:2:3",
    "GB82 WEST 1234 5698 7654 32",
    "ana@example.com", "+0", "+", "00", "011", "1", "0", "49", "44", "33", "(+49) 30 123456",
    "[030] 1234567", "030/1234567", "030 / 123 45 67", "(030) 1234 567", "0800 123 4567",
    "+800 1234 5678", "+378 0549 123456", "+672 3 12345", "0 30 1234567", "1 800 FLOWERS",
    "1-800-356-9377", "+1-800-FLOWERS", "tel 030-1234567-89", "\u0661\u0662\u0663\u0664\u0665",
    "\uff10\uff13\uff10 \uff11\uff12\uff13\uff14\uff15\uff16\uff17",
    "\uff0b\uff14\uff19 30 1234567",
    "030\u00a01234567", "030\u20131234567", "(0)30 12345678",
    "12345678901234567890", "1 2 3 4 5 6 7 8 9 0 1 2 3", "3.14159", "10.5 kg", "x", "#",
    "anexo 12", "int 5", "доб 7", "ext=5", ";ext=5",
]  # fmt: skip
GLUE = ["", "", "", " ", "  ", "\t", "\n", "-", "/", ".", ",", ";", ":", "|", "a", "b", "x",
        "(", ")", "$", "€", "%", "#", "_", "'", '"', "é", "ext", " ext. ", "[", "]"]  # fmt: skip
WORDS = ["call", "me", "at", "or", "order", "shipped", "on", "the", "fax", "tel", "phone",
         "Nr", "ref", "kg", "EUR", "in", "to", "is", "not", "an", "extension", "since"]  # fmt: skip


def random_number(rng: random.Random) -> str:
    groups = [
        "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5)))
        for _ in range(rng.randint(1, 5))
    ]
    prefix = rng.choice(
        ["", "", "", "+", "00", "011", "0", "1", "(", "+(", "\uff0b", "+44 ", "+1 "]
    )
    separators = [" ", "-", ".", "/", "", " - ", ") ", "  "]
    return prefix + "".join(g + rng.choice(separators) for g in groups).rstrip()


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 10)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(rng.choice(SHAPES))
        elif kind < 0.7:
            parts.append(random_number(rng))
        else:
            parts.append(rng.choice(WORDS))
        parts.append(rng.choice(GLUE))
    return "".join(parts)


# --- equality ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_texts_give_the_old_findings(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        text = random_text(rng)
        assert find_pii(text) == old_find_pii(text), text


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_alone_and_in_context_gives_the_old_findings(shape: str) -> None:
    for text in (
        shape,
        f"call {shape} now",
        f"a{shape}b",
        f"|{shape}|",
        f"x{shape}",
        f"{shape}, 555 1234 567",
    ):
        assert find_pii(text) == old_find_pii(text), text


def test_other_regions_give_the_old_findings() -> None:
    rng = random.Random(99)
    for regions in (("US",), ("GB", "IT"), ("JP", "SM", "AR"), ("GG", "BR", "ZZ")):
        for _ in range(40):
            text = random_text(rng)
            assert find_pii(text, phone_regions=regions) == old_find_pii(
                text, phone_regions=regions
            ), (regions, text)


def test_a_text_that_spends_the_matchers_tries_gives_the_old_findings() -> None:
    """libphonenumber stops after 65,535 failed tries in a text: a number after that is not
    found. Matching stretch by stretch must not find it either."""
    text = "call 555-123-4567 " + "1-1|" * 66_000 + "call 555-765-4321"
    old = old_find_pii(text)
    assert [m.start for m in old] == [5]  # the second number is past the matcher's tries
    assert find_pii(text) == old


def test_tries_are_the_matchers_own() -> None:
    default = inspect.signature(phonenumbers.PhoneNumberMatcher).parameters["max_tries"].default
    assert default == _pii._MAX_TRIES
    matcher = phonenumbers.PhoneNumberMatcher("1-1 | 2-2", "US")
    list(matcher)
    assert matcher._max_tries == default - 2  # one failed try a candidate: what _matches reads


# --- the screen -------------------------------------------------------------------------

REGIONS = [(r, phonenumbers.Leniency.VALID) for r in ("GB", "DE", "FR")] + [
    ("US", phonenumbers.Leniency.POSSIBLE)
]


def _library_verdict(candidate: str, region: str, leniency: int) -> bool:
    matcher = phonenumbers.PhoneNumberMatcher(candidate, region, leniency=leniency)
    return matcher._parse_and_verify(candidate, 0) is not None


def test_a_candidate_ruled_out_is_one_libphonenumber_rejects() -> None:
    rng = random.Random(7)
    prefixes = ["", "0", "00", "011", "1", "11", "44", "49", "33", "0044", "0049", "01", "+",
                "+0", "+00", "+011", "(+", "+(0)", "(0)", "180020", "+1", "+44", "+49", "+33",
                "0033"]  # fmt: skip
    ruled_out = 0
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14)))
        cut = rng.randint(0, len(digits))
        separator = rng.choice(["", " ", "-", ".", "/", ") ", " (", "x", " ext ", "#"])
        candidate = rng.choice(prefixes) + digits[:cut] + separator + digits[cut:]
        for region, leniency in REGIONS:
            if _pii._screen(region, leniency).rules_out(candidate):
                ruled_out += 1
                assert not _library_verdict(candidate, region, leniency), (candidate, region)
    assert ruled_out > 3000  # the screen does rule out: a good share of 12,000


@pytest.mark.parametrize(
    ("candidate", "region", "ruled_out"),
    [
        ("1992-08-28", "DE", True),  # a date is no German number
        ("43429", "DE", True),
        ("030 1234567", "DE", False),  # Berlin: parsed
        ("+0000", "GB", True),  # a time zone
        ("+00 44 20 7946 0958", "GB", False),  # "+" then the international prefix: parsed
        ("+44 20 7946 0958", "GB", False),
        ("20240105", "US", True),
        ("4155550132", "US", False),
        ("19920828", "US", False),  # 1 and a 7-digit number: parsed
    ],
)
def test_the_screen_on_known_candidates(candidate: str, region: str, ruled_out: bool) -> None:
    leniency = phonenumbers.Leniency.POSSIBLE if region == "US" else phonenumbers.Leniency.VALID
    assert _pii._screen(region, leniency).rules_out(candidate) is ruled_out
    if ruled_out:
        assert not _library_verdict(candidate, region, leniency)


def _pattern_characters(tree: object) -> tuple[set[str], list[tuple[int, int]], set[str]]:
    """The literal characters, ranges and categories (``\\d``) of a parsed pattern."""
    literals: set[str] = set()
    ranges: list[tuple[int, int]] = []
    categories: set[str] = set()
    for op, av in tree:  # type: ignore[attr-defined]
        name = str(op)
        if name == "LITERAL":
            literals.add(chr(av))
        elif name == "IN":
            for item_op, item in av:
                item_name = str(item_op)
                if item_name == "LITERAL":
                    literals.add(chr(item))
                elif item_name == "RANGE":
                    ranges.append(item)
                elif item_name == "CATEGORY":
                    categories.add(str(item))
                else:
                    raise AssertionError(f"unexpected {item_name} in a class")
        elif name in ("SUBPATTERN", "MAX_REPEAT", "MIN_REPEAT", "BRANCH"):
            parts = av[-1] if name != "BRANCH" else av[1]
            for part in parts if name == "BRANCH" else [parts]:
                more = _pattern_characters(part)
                literals |= more[0]
                ranges += more[1]
                categories |= more[2]
        else:
            raise AssertionError(f"unexpected {name} in the pattern")
    return literals, ranges, categories


def test_characters_between_stretches_are_in_no_candidate() -> None:
    """The characters where ``_matches`` cuts the text are none of the matcher's pattern's
    characters (literals, classes, ranges, whatever the case) and no digit."""
    pattern = matcher_module._PATTERN
    literals, ranges, categories = _pattern_characters(
        re._parser.parse(pattern.pattern, pattern.flags)
    )  # type: ignore[attr-defined]
    assert categories == {"CATEGORY_DIGIT"}
    for ch in _pii._NOT_IN_NUMBERS:
        variants = {ch, ch.lower(), ch.upper()}
        assert not ch.isdigit(), repr(ch)
        assert not any(c in variants or c.lower() in variants for c in literals), repr(ch)
        assert not any(low <= ord(v) <= high for v in variants for low, high in ranges), repr(ch)
    rng = random.Random(3)
    alphabet = "0123456789 +()-./x#" + _pii._NOT_IN_NUMBERS
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(30))
        for m in pattern.finditer(text):
            assert not set(m.group()) & set(_pii._NOT_IN_NUMBERS), (text, m.group())


# --- what is faster ---------------------------------------------------------------------

TABLE = "43429 | 09/12/1993 | 26450 | 74.63 | 678392 | 365.11 | 89161 | 1993-07-07 | 2011-02-05"


def test_a_table_of_numbers_is_not_parsed_number_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old: libphonenumber parsed 30 candidates of this row; the screen leaves a few."""
    parsed: list[str] = []
    parse = matcher_module.parse

    def counting(number: str, *args: object, **kwargs: object) -> phonenumbers.PhoneNumber:
        parsed.append(number)
        return parse(number, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(matcher_module, "parse", counting)
    old = old_find_pii(TABLE)
    before = len(parsed)
    parsed.clear()
    assert find_pii(TABLE) == old
    assert before >= 25 and len(parsed) <= 5, (before, parsed)


def test_redaction_is_unchanged_on_digit_heavy_rows() -> None:
    row = "2026-12-06 14:19:52,123 INFO pid=48213 user 555-123-4567 bytes=5234212 +0000"
    assert (
        redact_pii(row) == "2026-12-06 14:19:52,123 INFO pid=48213 user [PHONE] bytes=5234212 +0000"
    )


@pytest.mark.parametrize(
    "text",
    [
        "555-123-4567, 030 12345678, 01 42 68 53 00",  # US, DE and FR in one stretch
        "+1 415 555 0132 ; 07700 900123",
    ],
)
def test_a_stretch_where_the_us_pass_finds_a_number_is_matched_for_every_region(
    text: str,
) -> None:
    """The other regions are left out of a stretch only on what a pass in which every try
    failed tried: where the US pass found a number, that is not what it tried."""
    found = find_pii(text)
    assert found == old_find_pii(text)
    assert len(found) == text.count(",") + text.count(";") + 1


def test_without_the_matchers_tries_to_share_every_region_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were libphonenumber to stop asking ``_parse_and_verify`` (what ``_Matcher``
    overrides), nothing is screened or shared, and the findings stay the same."""
    monkeypatch.setattr(
        _pii._Matcher, "_parse_and_verify", phonenumbers.PhoneNumberMatcher._parse_and_verify
    )
    _pii._tries_are_seen.cache_clear()
    try:
        assert not _pii._tries_are_seen()
        rng = random.Random(11)
        for _ in range(60):
            text = random_text(rng)
            assert find_pii(text) == old_find_pii(text), text
        text = "555-123-4567, 030 12345678, 01 42 68 53 00"
        assert find_pii(text) == old_find_pii(text)
    finally:
        _pii._tries_are_seen.cache_clear()


def test_the_quick_validity_check_is_libphonenumbers() -> None:
    rng = random.Random(5)
    checked = 0
    for _ in range(3000):
        candidate = random_number(rng)
        for region in ("US", "GB", "DE"):
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            checked += 1
            assert _pii._valid(number) == phonenumbers.is_valid_number(number), candidate
    assert checked > 3000
