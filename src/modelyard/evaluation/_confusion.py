"""A confusion matrix of a classifier's answers: which label it said for each true label."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.evaluation._metrics import normalize

OTHER = "(other)"
"""The column of answers that are none of the reference labels (free text, a typo)."""


@dataclass(frozen=True)
class ConfusionMatrix:
    """``counts[i][j]``: rows whose reference is ``labels[i]`` answered ``labels[j]``.

    Labels are the references' (normalized as exact match compares them), sorted;
    answers that are none of them share the last column, ``OTHER``, when there are any.
    """

    labels: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The predicted labels: ``labels``, then ``OTHER`` when some answer was neither."""
        width = len(self.counts[0]) if self.counts else len(self.labels)
        return self.labels if width == len(self.labels) else (*self.labels, OTHER)

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "columns": list(self.columns),
                "counts": [list(row) for row in self.counts]}  # fmt: skip


def confusion_matrix(references: Sequence[str], predicted: Sequence[str]) -> ConfusionMatrix:
    """The matrix of ``predicted`` answers against ``references``, row by row."""
    if len(references) != len(predicted):
        raise ValueError(f"{len(references)} references but {len(predicted)} answers")
    truth = [normalize(r) for r in references]
    said = [normalize(p) for p in predicted]
    labels = tuple(sorted(set(truth)))
    known = set(labels)
    pairs = Counter((t, s if s in known else OTHER) for t, s in zip(truth, said, strict=True))
    columns = (*labels, OTHER) if any(s not in known for s in said) else labels
    counts = tuple(tuple(pairs[(t, c)] for c in columns) for t in labels)
    return ConfusionMatrix(labels, counts)


__all__ = ["OTHER", "ConfusionMatrix", "confusion_matrix"]
