"""Answer normalisation and exact match."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from modelyard.errors import DataError


def _is_edge_noise(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def normalize(text: str) -> str:
    """Lowercase, collapse whitespace, and drop punctuation/whitespace at both ends.

    So ``"Auto."``, ``" auto\\n"`` and ``"AUTO"`` all count as the answer
    ``"auto"``, while inner punctuation (``"wi-fi"``) still matters.
    """
    collapsed = " ".join(text.lower().split())
    start, end = 0, len(collapsed)
    while start < end and _is_edge_noise(collapsed[start]):
        start += 1
    while end > start and _is_edge_noise(collapsed[end - 1]):
        end -= 1
    return collapsed[start:end]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after ``normalize`` (0.0 to 1.0)."""
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions for {len(references)} references",
            hint="Pass one prediction per reference.",
        )
    if not references:
        raise DataError("exact match of zero examples is undefined", hint="Give at least one row.")
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)
