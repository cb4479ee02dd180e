"""The leaves of a batch of record rows and the root over them, as the writer seals them.

``_seals`` specifies both (``record_leaf``, ``_merkle.merkle_root``); this computes them
for a whole batch in C (``_fastseal``, built where a compiler and OpenSSL's headers were
at install) with the hashing done outside the GIL, and falls back to ``_seals`` row by
row for what the C code leaves to it (any value it cannot be certain to encode as the
specification does) or everywhere when it is not built. Either way the bytes are the
same: a test compares them value by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.audit._canonical import format_time
from modelyard.audit._merkle import merkle_root, split_leaves
from modelyard.audit._seals import _BOOLS, _FLOATS, _INTS, RECORD_FIELDS, RECORD_FORMAT, record_leaf

try:
    import modelyard.audit._fastseal as _fastseal
except ImportError:  # installed without a C compiler: the same leaves, in Python
    _fastseal = None  # type: ignore[assignment]

NATIVE = _fastseal is not None
"""Whether the C code seals (``benchmarks/monitoring.py`` prints which did)."""

# each field's kind for the C code: the time, float, int, bool, or anything (str, int, None)
KINDS = "".join(
    "t" if f == "created_at" else "f" if f in _FLOATS else "i" if f in _INTS
    else "b" if f in _BOOLS else "s"
    for f in RECORD_FIELDS
)  # fmt: skip


def seal_rows(rows: Sequence[dict[str, Any]]) -> tuple[bytes, list[str]]:
    """The leaves of ``rows`` (each a record's columns by name), 32 bytes each, in order,
    and their times as the seal's index lists them (``format_time``)."""
    batch = rows if isinstance(rows, list) else list(rows)
    if _fastseal is None:
        leaves = b"".join(record_leaf(row) for row in batch)
        return leaves, [format_time(row["created_at"]) for row in batch]
    blob, left, times = _fastseal.leaves(batch, RECORD_FIELDS, KINDS, RECORD_FORMAT)
    if not left:
        return blob, times  # type: ignore[return-value]  # no None: every row is C's
    out = bytearray(blob)
    for i in left:
        out[32 * i : 32 * i + 32] = record_leaf(batch[i])
        times[i] = format_time(batch[i]["created_at"])
    return bytes(out), times  # type: ignore[return-value]


def blob_root(leaves: bytes) -> bytes:
    """``merkle_root`` of concatenated 32-byte leaves."""
    if _fastseal is None or not leaves:
        return merkle_root(split_leaves(leaves))
    return _fastseal.root(leaves)


__all__ = ["KINDS", "NATIVE", "blob_root", "seal_rows"]
