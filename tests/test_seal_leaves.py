"""The leaves and roots the record writer seals with (``audit._leaves``: C where built)
are the specification's (``record_bytes``, ``record_leaf``, ``merkle_root``), value by
value, for what the C code writes and for what it leaves to Python."""

from __future__ import annotations

import math
import os
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from modelyard.audit import (
    NATIVE_SEALS,
    RECORD_FIELDS,
    RECORD_FORMAT,
    _leaves,
    blob_root,
    format_time,
    leaf_hash,
    merkle_root,
    record_bytes,
    record_leaf,
    seal_rows,
)
from modelyard.audit._seals import _BOOLS, _FLOATS, _INTS

TEXTS = ["x", "é漢字", 'a"b\\c\n\t\x01\x08\x0c\x0d\x1f\x7f', "\u2028\u2029", "😀", "", "</script>",
         "lone \ud800 surrogate", "cmpl-" + "0" * 20]  # fmt: skip
INTS = [0, 1, -1, 2**63 - 1, -(2**63), 2**63, 2**64, True, False]
PLUS2 = timezone(timedelta(hours=2))
TIMES = [
    datetime(2026, 1, 1, tzinfo=UTC),  # no microseconds
    datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=PLUS2),  # not UTC
    datetime(2026, 12, 5, 16, 3, 19, 123456, tzinfo=UTC),
    datetime(999, 1, 1, 0, 0, 0, 1, tzinfo=UTC),  # a year of three digits
    datetime(2026, 1, 1, 0, 0, 0, 7),  # naive
]


def _float(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return rng.choice([0.0, -0.0, 1e-4, 1e16, 1e-5, 9999999999999998.0, math.inf, 3, True])
    return rng.choice([-1, 1]) * 10 ** rng.uniform(-5, 17)  # both sides of 1e-4 and 1e16


def _row(rng: random.Random) -> dict[str, Any]:
    """A record's columns: mostly values a server writes, some of every kind it may not
    (each odd value is likely to send its row to Python)."""
    odd = rng.random() < 0.3
    row: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        if name == "created_at":
            row[name] = rng.choice(TIMES) if odd else TIMES[3] + timedelta(seconds=rng.random())
        elif rng.random() < 0.15:
            row[name] = None
        elif name in _FLOATS:
            row[name] = _float(rng)
        elif name in _INTS:
            row[name] = rng.choice(INTS) if odd else rng.randint(-(2**40), 2**40)
        elif name in _BOOLS:
            row[name] = rng.choice([True, False, 0, 1] if odd else [True, False])
        else:
            row[name] = rng.choice([*TEXTS, 7, 2**70, 1.5, True] if odd else TEXTS[:7])
    return row


def _spec_leaf(row: dict[str, Any]) -> bytes | None:
    """The specification's leaf, or None where it refuses the row (a lone surrogate, a
    float that is not finite, a naive time: a seal's index needs its time in UTC)."""
    try:
        format_time(row["created_at"])
        return record_leaf(row)
    except (UnicodeEncodeError, ValueError):
        return None


@pytest.mark.skipif(not NATIVE_SEALS, reason="the C seals are not built here")
def test_the_c_code_writes_the_specified_bytes_or_leaves_the_row_to_python() -> None:
    from modelyard.audit import _fastseal

    rng = random.Random(20)
    rows = [_row(rng) for _ in range(20_000)]
    encoded = _fastseal.encode(rows, RECORD_FIELDS, _leaves.KINDS, RECORD_FORMAT)
    written = [(row, data) for row, data in zip(rows, encoded, strict=True) if data is not None]
    for row, data in written:
        assert data == record_bytes(row), row
    # plain rows, as a server writes them, are the C code's, not left to Python
    plain = dict.fromkeys(RECORD_FIELDS) | {
        "id": "cmpl-1", "created_at": TIMES[3], "tenant_id": 1, "latency_ms": 12.5,
        "ttft_ms": 0.25, "status": "ok", "http_status": 200, "prompt": TEXTS[2],
        "response": TEXTS[1], "shadow": False, "prompt_tokens": 12,
    }  # fmt: skip
    assert _fastseal.encode([plain], RECORD_FIELDS, _leaves.KINDS, RECORD_FORMAT) == [
        record_bytes(plain)
    ]
    assert len(written) > len(rows) // 4, "most plain rows should be the C code's"
    assert len(written) < len(rows), "some rows should be left to Python"


def test_a_batchs_leaves_and_root_are_the_specifications_with_or_without_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(21)
    rows = [_row(rng) for _ in range(3000)]
    rows = [row for row in rows if _spec_leaf(row) is not None]
    expected = b"".join(record_leaf(row) for row in rows)
    assert seal_rows(rows) == (expected, [format_time(row["created_at"]) for row in rows])
    for n in (0, 1, 2, 3, 5, 7, 8, 255, 256, 257):
        leaves = [leaf_hash(bytes([i % 256, i // 256])) for i in range(n)]
        assert blob_root(b"".join(leaves)) == merkle_root(leaves), n
    monkeypatch.setattr(_leaves, "_fastseal", None)  # installed without a compiler
    assert seal_rows(rows[:500])[0] == expected[: 32 * 500]
    assert blob_root(expected[:96]) == merkle_root([expected[i : i + 32] for i in (0, 32, 64)])


def test_a_row_the_specification_refuses_is_refused_alike() -> None:
    """A missing field or an unencodable string fails as the specification fails: the
    C code never writes a leaf for what Python would not."""
    row = _row(random.Random(22))
    del row["prompt"]
    with pytest.raises(KeyError):
        seal_rows([row])
    row = dict.fromkeys(RECORD_FIELDS) | {"created_at": TIMES[3], "id": "\ud800"}
    with pytest.raises(UnicodeEncodeError):
        seal_rows([row])


def test_ci_builds_the_c_seals() -> None:
    """CI installs with a compiler and OpenSSL's headers: the C code must be there, or the
    test above would pass on the Python fallback alone."""
    if os.environ.get("CI") != "true":
        pytest.skip("outside CI a build without the C code is allowed")
    assert NATIVE_SEALS
