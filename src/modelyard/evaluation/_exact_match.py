"""Exact-match evaluation of a model on alpaca rows."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.data import render_prompt, response_of
from modelyard.errors import DataError
from modelyard.evaluation._generate import generate
from modelyard.evaluation._metrics import exact_match, normalize

_SLACK_TOKENS = 4
"""Extra new tokens beyond the longest reference, so a near-miss is visible as such."""


@dataclass(frozen=True)
class EvalResult:
    """Exact match of one model on some rows, with every prediction kept for inspection."""

    exact_match: float
    n: int
    correct: int
    predictions: list[str]
    references: list[str]
    seconds: float


def _answer_budget(tokenizer: Any, references: Sequence[str]) -> int:
    """Enough new tokens for the longest reference plus a little slack."""
    longest = max(len(tokenizer(ref, add_special_tokens=False)["input_ids"]) for ref in references)
    return int(longest) + _SLACK_TOKENS


def evaluate_exact_match(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, str]],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> EvalResult:
    """Greedy-generate an answer for each row's ``render_prompt`` and score exact match.

    ``max_new_tokens`` defaults to the longest reference's length plus a few
    tokens: enough for a right answer, short enough to keep evaluation cheap.
    """
    if not rows:
        raise DataError("no rows to evaluate", hint="Give at least one held-out example.")
    started = time.perf_counter()
    references = [response_of(row) for row in rows]
    prompts = [render_prompt(row) for row in rows]
    budget = max_new_tokens or _answer_budget(tokenizer, references)
    predictions = generate(model, tokenizer, prompts, max_new_tokens=budget, batch_size=batch_size)
    correct = sum(
        normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)
    )
    return EvalResult(
        exact_match=exact_match(predictions, references),
        n=len(rows),
        correct=correct,
        predictions=predictions,
        references=references,
        seconds=time.perf_counter() - started,
    )
