"""Rendered prompts back into rows: the inverse of the prompt templates (``_templates``).

An inference record keeps the prompt exactly as the server rendered it with the
version's template; ``row_from_prompt`` turns it and an answer back into a row
of a dataset format, so production traffic can become training data:

``alpaca``
    ``### Instruction:`` (and ``### Input:``) back into ``instruction`` (and ``input``);
    the answer is the ``output``.
``classification``
    ``### Text:`` back into ``text``; the answer is the ``label``.
``chat-fallback``
    each ``<|role|>`` turn back into a message (roles system, user, assistant); the
    answer is the last, assistant, message.
``text``
    the prompt as is: the row's ``text`` is the prompt followed by the answer.
``chat``
    the tokenizer's own chat template has no general inverse: such a prompt cannot be
    turned back into messages (``reason="chat_template"``), only into ``text`` rows.

Every parse is checked by rendering the row again: a row is returned only when its
template renders it to exactly the recorded prompt. A prompt that more than one row
renders to (a field that holds the template's own separator) parses to one of them,
and all of them train on the same sequence. Any template's prompt also becomes a
``text`` row (the prompt, then the answer): what the model read and should write.
A prompt that cannot be parsed is a ``DataError`` whose ``context["reason"]`` is
``unparsable``, ``chat_template`` or ``format`` (the template gives no rows of the
format asked for).
"""

from __future__ import annotations

import re
from typing import Any

from modelyard.data._prompt import render_prompt
from modelyard.data._templates import PromptTemplate, render_fallback_chat
from modelyard.errors import DataError

TEMPLATE_FORMATS: dict[str, str] = {
    "alpaca": "alpaca",
    "chat": "chat",
    "chat-fallback": "chat",
    "classification": "classification",
    "text": "text",
}
"""The dataset format each prompt template renders rows of."""

_INSTRUCTION, _INPUT, _RESPONSE = "### Instruction:\n", "\n\n### Input:\n", "\n\n### Response:\n"
_TEXT, _LABEL = "### Text:\n", "\n\n### Label:\n"
_TURN = re.compile(r"(?:^|(?<=\n))<\|(system|user|assistant)\|>\n")
_NEXT_TURN = "<|assistant|>\n"


def _unparsable(template: str, why: str) -> DataError:
    return DataError(
        f"the prompt does not parse as the {template!r} template: {why}",
        hint="Only prompts the version's template rendered can be turned back into rows.",
        reason="unparsable",
    )


def _between(prompt: str, head: str, tail: str, template: str) -> str:
    if not prompt.startswith(head) or not prompt.endswith(tail):
        raise _unparsable(template, f"it does not start with {head!r} and end with {tail!r}")
    return prompt[len(head) : len(prompt) - len(tail)]


def _alpaca(prompt: str) -> dict[str, Any]:
    body = _between(prompt, _INSTRUCTION, _RESPONSE, "alpaca")
    instruction, sep, text = body.partition(_INPUT)
    return {"instruction": instruction, "input": text} if sep else {"instruction": body}


def _classification(prompt: str) -> dict[str, Any]:
    return {"text": _between(prompt, _TEXT, _LABEL, "classification")}


def _chat_fallback(prompt: str) -> dict[str, Any]:
    if not prompt.endswith(_NEXT_TURN):
        raise _unparsable("chat-fallback", f"it does not end with {_NEXT_TURN!r}")
    body = prompt[: -len(_NEXT_TURN)]
    turns = list(_TURN.finditer(body))
    if not turns or turns[0].start() != 0 or not body.endswith("\n"):
        raise _unparsable("chat-fallback", "it does not start with a <|role|> turn")
    ends = [t.start() - 1 for t in turns[1:]] + [len(body) - 1]  # each turn ends with "\n"
    messages = [
        {"role": turn.group(1), "content": body[turn.end() : end]}
        for turn, end in zip(turns, ends, strict=True)
    ]
    return {"messages": messages}


def parse_prompt(template: str, prompt: str) -> dict[str, Any]:
    """The row fields (all but the answer) that ``template`` renders as ``prompt``.

    Checked: rendering the fields again gives ``prompt`` exactly, else a ``DataError``.
    """
    if template == "chat":
        raise DataError(
            "the prompt was rendered by the base tokenizer's own chat template, which cannot "
            "be parsed back into messages",
            hint="Ask for --format text: the rendered prompt followed by the answer.",
            reason="chat_template",
        )
    if template == "text":
        return {"text": prompt}
    parsers = {
        "alpaca": _alpaca,
        "classification": _classification,
        "chat-fallback": _chat_fallback,
    }
    if template not in parsers:
        raise _unparsable(template, "no such template")
    fields = parsers[template](prompt)
    try:
        if template == "alpaca":
            again = render_prompt(fields)
        elif template == "classification":
            again = PromptTemplate("classification").render({**fields, "label": "-"})[0]
        else:
            again = render_fallback_chat(fields["messages"])
    except DataError as exc:  # an empty field, which no row renders
        raise _unparsable(template, exc.message) from exc
    if again != prompt:
        raise _unparsable(template, "no row renders to exactly this prompt")
    return fields


def row_from_prompt(template: str, prompt: str, answer: str, data_format: str) -> dict[str, Any]:
    """A row of ``data_format`` whose prompt is ``prompt`` (as ``template`` rendered it) and
    whose expected answer is ``answer``; a ``DataError`` (with ``context["reason"]``) when
    there is none."""
    answer = answer.strip()
    if not answer:
        raise DataError("the answer is empty", reason="no_answer")
    if data_format == "text":
        return {"text": prompt + answer}
    if TEMPLATE_FORMATS.get(template) != data_format:
        raise DataError(
            f"a prompt rendered by the {template!r} template gives no {data_format} rows",
            hint=f"Ask for --format {TEMPLATE_FORMATS.get(template, 'text')} or text.",
            reason="format",
        )
    fields = parse_prompt(template, prompt)
    if data_format == "alpaca":
        return {**fields, "output": answer}
    if data_format == "classification":
        return {**fields, "label": answer}
    return {"messages": [*fields["messages"], {"role": "assistant", "content": answer}]}


__all__ = ["TEMPLATE_FORMATS", "parse_prompt", "row_from_prompt"]
