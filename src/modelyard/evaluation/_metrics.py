"""Text metrics over paired predictions and references: pure functions on lists of strings.

Every metric returns a mean over rows (or, for ``macro_f1``, over labels) between
0.0 and 1.0, and raises ``DataError`` on empty or mismatched input rather than
returning a number that means nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

from modelyard.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def _is_edge_noise(char: str) -> bool:
    return char.isspace() or _is_punctuation(char)


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


def _check_pairs(predictions: Sequence[str], references: Sequence[str], metric: str) -> None:
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions for {len(references)} references",
            hint="Pass one prediction per reference.",
        )
    if not references:
        raise DataError(f"{metric} of zero examples is undefined", hint="Give at least one row.")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after ``normalize`` (0.0 to 1.0)."""
    _check_pairs(predictions, references, "exact match")
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def _squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lowercase, no punctuation, no English articles, split."""
    text = "".join(" " if _is_punctuation(char) else char for char in text.lower())
    return _ARTICLES.sub(" ", text).split()


def _row_f1(prediction: str, reference: str) -> float:
    predicted, expected = _squad_tokens(prediction), _squad_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: a correct empty answer
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean SQuAD-style token F1: bag-of-words overlap of each prediction with its reference.

    Both sides are lowercased, stripped of punctuation (any Unicode punctuation)
    and of the articles a/an/the, and split on whitespace. A row where both sides
    are empty scores 1.0; a row where only one is empty scores 0.0.
    """
    _check_pairs(predictions, references, "token F1")
    scores = [_row_f1(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


@cache
def _rouge_scorer() -> Any:
    import sys

    from absl import logging as absl_logging  # rouge-score logs through absl
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]  # no annotations

    # absl's log handler keeps the sys.stderr of its import (a redirect, a test's capture)
    # and closes it when logging is configured again (uvicorn does, at every server start)
    # unless it is sys.stderr then: point it at the process's own stderr, which it never
    # closes.
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of tokens), via ``rouge-score``.

    ``rouge-score``'s default tokenizer lowercases and keeps only ASCII letters
    and digits: non-ASCII characters are dropped, so ``"über"`` is the token
    ``"ber"`` and an answer written entirely in a non-Latin script scores 0.0
    even when it is exactly right. No stemming. A row whose two sides are both
    empty (after that tokenization) scores 0.0.
    """
    _check_pairs(predictions, references, "ROUGE-L")
    scorer = _rouge_scorer()
    scores = [
        float(scorer.score(r, p)["rougeL"].fmeasure)
        for p, r in zip(predictions, references, strict=True)
    ]
    return sum(scores) / len(scores)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predicted labels equal to the reference label after ``normalize``.

    The classification name for exact match: ``"Network."`` counts as the label
    ``"network"``.
    """
    _check_pairs(predictions, references, "accuracy")
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over every label seen in references or predictions.

    Labels are compared after ``normalize``. A predicted string that is no
    reference label counts as a label of its own (with F1 0.0), so a model that
    answers off the label set is penalised, as in scikit-learn's
    ``f1_score(average="macro")``.
    """
    _check_pairs(predictions, references, "macro F1")
    predicted = [normalize(p) for p in predictions]
    expected = [normalize(r) for r in references]
    true_pos: Counter[str] = Counter(p for p, r in zip(predicted, expected, strict=True) if p == r)
    predicted_counts, expected_counts = Counter(predicted), Counter(expected)
    labels = set(predicted_counts) | set(expected_counts)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + expected); never 0/0 for a seen label.
    per_label = [
        2 * true_pos[label] / (predicted_counts[label] + expected_counts[label]) for label in labels
    ]
    return sum(per_label) / len(per_label)
