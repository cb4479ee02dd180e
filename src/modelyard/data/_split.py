"""Splitting a dataset into training and eval rows, reproducibly and optionally stratified.

The split depends only on the rows, the fraction, the seed and the stratify
field: ``random.Random(seed)`` shuffles row positions (its algorithm is stable
across Python versions and processes), and both parts keep the rows in their
original order, so the same inputs always give byte-identical files.
"""

from __future__ import annotations

import difflib
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from modelyard.data._formats import as_text
from modelyard.data._io import columns_of
from modelyard.errors import ConfigError, DataError

Row = TypeVar("Row", bound=Mapping[str, Any])


def _eval_count(n: int, eval_fraction: float) -> int:
    """How many of ``n`` rows go to eval: the rounded fraction, at least 1, at most n - 1."""
    if n < 2:
        return 0
    return min(max(round(n * eval_fraction), 1), n - 1)


def split_rows(
    rows: Sequence[Row],
    eval_fraction: float,
    seed: int,
    stratify: str | None = None,
) -> tuple[list[Row], list[Row]]:
    """Split ``rows`` into ``(train, eval)`` with about ``eval_fraction`` of them in eval.

    Without ``stratify`` the eval part is ``round(n * eval_fraction)`` rows (at
    least one, and never all). With ``stratify`` the rule applies to each value
    of that field separately, so every class keeps its share and each class with
    two or more rows has at least one eval row (a class of one row stays in
    train). Both parts keep the original row order.

    Raises ConfigError when ``eval_fraction`` is not strictly between 0 and 1 or
    no row has the ``stratify`` field, DataError for fewer than two rows.
    """
    if not 0 < eval_fraction < 1:
        raise ConfigError(
            f"the eval fraction must be between 0 and 1 (exclusive), got {eval_fraction}",
            hint="Pass e.g. --eval-fraction 0.1 for 10% of the rows.",
        )
    if len(rows) < 2:
        raise DataError(
            f"cannot split {len(rows)} row{'s' if len(rows) != 1 else ''} into train and eval",
            hint="A split needs at least two rows.",
        )
    if stratify is not None:
        columns = columns_of(rows)
        if stratify not in columns:
            close = difflib.get_close_matches(stratify, columns, n=1)
            maybe = f"Did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"cannot stratify by {stratify!r}: no row has that field",
                hint=f"{maybe}Use one of the dataset's fields: {', '.join(columns)}.",
                field=stratify,
            )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        key = "" if stratify is None else as_text(row.get(stratify))
        groups[key].append(i)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        held_out.update(members[: _eval_count(len(members), eval_fraction)])
    train = [row for i, row in enumerate(rows) if i not in held_out]
    eval_ = [row for i, row in enumerate(rows) if i in held_out]
    return train, eval_
