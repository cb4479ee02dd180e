"""The one prompt template modelyard trains and evaluates with.

Training and evaluation must render prompts byte-for-byte the same way, or an
adapter is scored on a format it never saw; keeping the template here (and its
name in ``PROMPT_TEMPLATE_NAME`` for lineage) makes that a single decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelyard.data._formats import field_text
from modelyard.errors import DataError

PROMPT_TEMPLATE_NAME = "alpaca"
"""Recorded in lineage so a model version says which template it was trained with."""

_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
_WITHOUT_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def render_prompt(example: Mapping[str, str]) -> str:
    """Render the alpaca prompt of one example (everything the model sees before its answer).

    The template is::

        ### Instruction:
        {instruction}

        ### Input:
        {input}

        ### Response:

    The ``### Input`` block is left out when ``input`` is missing or blank. The
    ``output`` field is never part of the prompt: it is what the model must write.
    """
    instruction = _field(example, "instruction")
    if not instruction:
        raise DataError(
            "an example has no 'instruction'",
            hint="Every row needs a non-empty 'instruction' field (alpaca format).",
        )
    text = _field(example, "input")
    if text:
        return _WITH_INPUT.format(instruction=instruction, input=text)
    return _WITHOUT_INPUT.format(instruction=instruction)


def response_of(example: Mapping[str, str]) -> str:
    """The expected answer of an example, checked to be present and non-blank."""
    output = _field(example, "output")
    if not output:
        raise DataError(
            "an example has no 'output'",
            hint="Every training or evaluation row needs a non-empty 'output' field.",
        )
    return output


def _field(example: Mapping[str, str], name: str) -> str:
    try:
        return field_text(example.get(name))
    except DataError as exc:
        raise DataError(f"an example's {name!r} {exc.message}", hint=exc.hint, field=name) from None
