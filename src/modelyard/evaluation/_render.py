"""How an evaluation row becomes a (prompt, reference) pair, per dataset format.

Evaluation must show the model the prompt exactly as training did, so the
built-in renderings are the training templates of ``modelyard.data``
(``template_for(format, tokenizer)``); a caller that trained with another
template passes its ``render``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelyard.data import FORMATS, template_for
from modelyard.errors import ConfigError, DataError

Render = Callable[[Mapping[str, Any]], tuple[str, str]]
"""Maps one row to ``(prompt, reference)``: what the model sees and what it should answer."""

REFERENCELESS_FORMATS = ("text",)
"""Formats whose rows have no separate answer: only perplexity, latency and memory apply."""


def renderer_for(format: str, render: Render | None = None, tokenizer: Any = None) -> Render:
    """The rendering of ``format`` rows: ``render`` if given, else the training template.

    ``tokenizer`` lets chat rows use the tokenizer's own chat template (the
    documented fallback rendering otherwise), exactly as training chose.
    """
    if format not in FORMATS:
        nearest = difflib.get_close_matches(format, FORMATS, n=1)
        suggestion = f"Did you mean {nearest[0]!r}? " if nearest else ""
        raise ConfigError(
            f"cannot evaluate rows of format {format!r}",
            hint=f"{suggestion}Evaluation takes rows in one of: {', '.join(FORMATS)}.",
            field="format",
        )
    if render is not None:
        return render
    template = template_for(format, tokenizer)
    return template.render


def render_rows(rows: Sequence[Mapping[str, Any]], render: Render) -> list[tuple[str, str]]:
    """Every row rendered; a bad row is a ``DataError`` naming its (1-based) number."""
    if not rows:
        raise DataError("no rows to evaluate", hint="Give at least one held-out example.")
    pairs = []
    for number, row in enumerate(rows, start=1):
        try:
            pairs.append(render(row))
        except DataError as exc:
            raise DataError(f"row {number}: {exc.message}", hint=exc.hint, row=number) from exc
    return pairs
