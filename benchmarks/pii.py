"""The personal-data detector (``find_pii``) on rows of many shapes: old phone matching vs new.

``data validate`` runs ``find_pii`` on every row of a dataset, and the ``redacted``
storage policy on every stored prompt and answer. Almost all of its time on rows with
digits was libphonenumber's ``PhoneNumberMatcher`` parsing every run of digits, four
times over (once for "US" with leniency POSSIBLE, once for each of "GB", "DE", "FR"
with VALID). The old code is kept below as the reference (``old_find_pii``, as it
was at commit 6c5259d); the new one is ``modelyard.data.find_pii``.

Rows are built deterministically (``--seed``), in families: plain prose; prose with
order numbers, dates, prices and versions; real-looking phone numbers in several
shapes and countries; e-mail addresses, card numbers, IBANs and SSNs; and digit-heavy
rows: tables of numbers (with and without ``|``), log lines, CSV lines. Both sides
run on the same rows, taking turns, each ``--repeats`` times (the best time is kept), and
their findings (kind, span, masked value, order) must be identical on every row: the
script stops with an error naming the row otherwise.

    .venv/bin/python benchmarks/pii.py                 # 1,000 rows per family, best of 3
    .venv/bin/python benchmarks/pii.py --rows 200      # a smoke test, seconds
    .venv/bin/python benchmarks/pii.py --json out.json

Exits 0 whatever the numbers (non-zero only when the two sides disagree). The target:
5x on digit-heavy rows, no slowdown on plain prose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import phonenumbers

from modelyard.data import PiiMatch, _pii, find_pii

TARGET_DIGIT_HEAVY = 5.0

# --- the reference: find_pii as it was before the change (commit 6c5259d) ---------------


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


# --- the rows ----------------------------------------------------------------------------

PROSE = (
    "the customer asked about a refund for the order and the agent explained that the "
    "policy allows returns within thirty days when the item is unused please confirm "
    "your address so we can send the label our team will follow up tomorrow morning"
)
WORDS = re.findall(r"\w+", PROSE)


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if _pii.luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def _iban(rng: random.Random) -> str:
    country, bban = rng.choice(
        [
            ("GB", "WEST" + "".join(rng.choice("0123456789") for _ in range(14))),
            ("DE", "".join(rng.choice("0123456789") for _ in range(18))),
            ("FR", "".join(rng.choice("0123456789") for _ in range(23))),
        ]
    )
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    compact = f"{country}{98 - number % 97:02d}{bban}"
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _grouped(digits: str) -> str:
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _ipv4(rng: random.Random) -> str:
    parts = (rng.randint(1, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))
    return ".".join(str(n) for n in parts)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [
            f"({a}) {b}-{c:04d}",
            f"{a}-{b}-{c:04d}",
            f"{a}.{b}.{c:04d}",
            f"+1 {a} {b} {c:04d}",
            f"1-{a}-{b}-{c:04d}",
            f"+44 20 7946 {c:04d}",
            f"0044 20 7946 {c:04d}",
            f"020 7946 {c:04d}",
            f"07700 900{c % 1000:03d}",
            f"+49 30 {b}{c:04d}",
            f"030 {b}{c:04d}",
            f"0171 {b}{c:04d}",
            f"01 42 68 {c // 100:02d} {c % 100:02d}",
            f"+33 6 12 34 {c // 100:02d} {c % 100:02d}",
            f"06 12 34 {c // 100:02d} {c % 100:02d}",
            f"{a}{b}{c:04d}",
            f"+1 {a} {b} {c:04d} ext. {rng.randint(1, 999)}",
        ]
    )


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1990, 2026), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m}/{d}/{y % 100:02d}"])


def _numbers_prose(rng: random.Random) -> str:
    parts = [
        f"Order {rng.choice(['#', 'no. ', 'INV-2024-', ''])}{_digits(rng, rng.randint(5, 9))}",
        f"shipped on {_date(rng)}",
        f"for ${rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}",
        f"with version {rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
        f"tracking {rng.choice(['1Z', 'TBA', ''])}{_digits(rng, rng.randint(8, 14))}",
        f"quantity {rng.randint(1, 500)}, weight {rng.randint(1, 90)}.{rng.randint(0, 9)} kg",
    ]
    rng.shuffle(parts)
    return _prose(rng, rng.randint(4, 10)) + " " + ", ".join(parts[: rng.randint(3, 6)]) + "."


def _contact(rng: random.Random) -> str:
    name = rng.choice(["ana", "li.wei", "j.smith", "m-o'neil", "support+tag"])
    pieces = [
        f"call me at {_phone(rng)}",
        f"or {_phone(rng)}",
        f"mail {name}@example.{rng.choice(['com', 'co.uk', 'de'])}",
        f"card {_grouped(_luhn_complete('4' + _digits(rng, 14)))}",
        f"IBAN {_iban(rng)}",
        f"SSN {rng.randint(100, 665):03d}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        f"from {_ipv4(rng)}",
    ]
    rng.shuffle(pieces)
    return _prose(rng, rng.randint(3, 8)) + " " + "; ".join(pieces[: rng.randint(1, 4)]) + "."


def _table(rng: random.Random) -> str:
    cells = []
    for _ in range(rng.randint(6, 14)):
        cells.append(
            rng.choice(
                [
                    str(rng.randint(0, 99)),
                    str(rng.randint(100, 99999)),
                    f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}",
                    _date(rng),
                    f"{rng.randint(0, 100)}%",
                    _digits(rng, rng.randint(6, 10)),
                ]
            )
        )
    sep = rng.choice([" | ", "\t", " ", ", ", ";"])
    return sep.join(cells)


def _log_line(rng: random.Random) -> str:
    y, m, d = 2026, rng.randint(1, 12), rng.randint(1, 28)
    hh, mm, ss = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    stamp = rng.choice(
        [
            f"{y}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{rng.randint(0, 999999):06d}Z",
            f"{y}-{m:02d}-{d:02d} {hh:02d}:{mm:02d}:{ss:02d},{rng.randint(0, 999):03d}",
            f"[{d:02d}/Dec/{y}:{hh:02d}:{mm:02d}:{ss:02d} +0000]",
        ]
    )
    fields = [
        f"pid={rng.randint(100, 99999)}",
        f"req={_digits(rng, 12)}",
        f"took {rng.randint(1, 9999)} ms",
        f"bytes={rng.randint(0, 99999999)}",
        f"status={rng.choice([200, 201, 404, 500])}",
        f"client={_ipv4(rng)}",
        f"user_id={rng.randint(1, 10**9)}",
        f"trace={rng.getrandbits(64):016x}",
        f"latency_p99={rng.randint(0, 999)}.{rng.randint(0, 999):03d}",
    ]
    rng.shuffle(fields)
    level = rng.choice(["INFO", "WARN", "ERROR", "DEBUG"])
    return f"{stamp} {level} worker-{rng.randint(0, 31)} " + " ".join(fields[: rng.randint(3, 8)])


FAMILIES: dict[str, Callable[[random.Random], str]] = {
    "plain prose": lambda rng: _prose(rng, rng.randint(8, 60)),
    "prose + numbers": _numbers_prose,
    "personal data": _contact,
    "number tables": _table,
    "log lines": _log_line,
}
DIGIT_HEAVY = ("number tables", "log lines")


def rows_of(family: str, rows: int, seed: int) -> list[str]:
    rng = random.Random(f"{seed}:{family}")
    return [FAMILIES[family](rng) for _ in range(rows)]


# --- the measurement ---------------------------------------------------------------------


def best_times(
    sides: Sequence[Callable[[str], Any]], texts: list[str], repeats: int
) -> list[tuple[float, list[Any]]]:
    """For each side, the fewest CPU seconds of ``repeats`` runs over ``texts`` and the last
    run's results. CPU, not wall: on a machine shared with other work the wall time grows
    with the load; the sides take turns, so that a change of load falls on both."""
    best = [float("inf")] * len(sides)
    results: list[list[Any]] = [[] for _ in sides]
    for _ in range(repeats):
        for number, run in enumerate(sides):
            started = time.process_time()
            results[number] = [run(text) for text in texts]
            best[number] = min(best[number], time.process_time() - started)
    return list(zip(best, results, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000, help="Rows per family.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per side (best kept).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")

    load = os.getloadavg()
    print(
        f"find_pii, old vs new: {args.rows} rows per family, best of {args.repeats}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, phonenumbers {phonenumbers.__version__}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    find_pii("warm up: +44 20 7946 0958, 555-123-4567")  # imports outside the timing
    old_find_pii("warm up: +44 20 7946 0958, 555-123-4567")
    header = f"{'rows':<16} | {'old rows/s':>10} | {'new rows/s':>10} | {'speedup':>7} | findings"
    print("rows/s: rows per CPU second")
    print(header)
    print("-" * len(header))
    results: dict[str, Any] = {}
    totals = {"old": 0.0, "new": 0.0}
    for family in FAMILIES:
        texts = rows_of(family, args.rows, args.seed)
        (old_s, old), (new_s, new) = best_times((old_find_pii, find_pii), texts, args.repeats)
        for number, (text, a, b) in enumerate(zip(texts, old, new, strict=True)):
            if a != b:
                sys.exit(f"{family} row {number} differs: {text!r}\n  old {a}\n  new {b}")
        totals["old"] += old_s
        totals["new"] += new_s
        found = sum(len(r) for r in new)
        speedup = old_s / new_s
        print(
            f"{family:<16} | {len(texts) / old_s:>10,.0f} | {len(texts) / new_s:>10,.0f} | "
            f"{speedup:>6.1f}x | {found} identical"
        )
        results[family] = {"rows": len(texts), "old_s": old_s, "new_s": new_s, "findings": found}
    n = args.rows * len(FAMILIES)
    print(
        f"{'all':<16} | {n / totals['old']:>10,.0f} | {n / totals['new']:>10,.0f} | "
        f"{totals['old'] / totals['new']:>6.1f}x |"
    )
    heavy = [results[f] for f in DIGIT_HEAVY]
    ratio = sum(r["old_s"] for r in heavy) / sum(r["new_s"] for r in heavy)
    verdict = "PASS" if ratio >= TARGET_DIGIT_HEAVY else "MISS"
    print(f"target: digit-heavy rows {TARGET_DIGIT_HEAVY:.0f}x faster: {ratio:.1f}x {verdict}")
    prose = results["plain prose"]
    print(f"plain prose: new/old time {prose['new_s'] / prose['old_s']:.2f} (1.00 = no change)")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"families": results, "load_end": load[0]}, indent=2))


if __name__ == "__main__":
    main()
