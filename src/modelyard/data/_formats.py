"""The dataset formats modelyard reads, and the texts each check looks at in a row.

A format names the fields a row must have (``required``), may have
(``optional``), and says which part of a row is the *prompt* (what the model
reads; compared against the eval set for leakage) and which is the whole
*example* (what duplicates, lengths and near-duplicates are computed over).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataFormat:
    """One dataset format: its name, fields and a one-line description."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    description: str

    @property
    def fields(self) -> tuple[str, ...]:
        """Required then optional fields, in the order examples are built from them."""
        return self.required + self.optional


FORMATS: Mapping[str, DataFormat] = {
    "alpaca": DataFormat(
        "alpaca",
        ("instruction", "output"),
        ("input",),
        "instruction-following rows: instruction, optional input, and the expected output",
    ),
    "chat": DataFormat(
        "chat",
        ("messages",),
        (),
        "conversations: messages, a list of {role, content} with roles system/user/assistant, "
        "the last one from the assistant",
    ),
    "text": DataFormat("text", ("text",), (), "plain text for language modelling"),
    "classification": DataFormat("classification", ("text", "label"), (), "a text and its label"),
}
"""Every supported format, by name."""

REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = {
    name: spec.required for name, spec in FORMATS.items()
}
"""The fields every row of a format must have, by format name."""

CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""The roles a chat message may have."""


def get_format(name: str) -> DataFormat:
    """The format called ``name``; unknown names are a ConfigError naming the valid ones."""
    try:
        return FORMATS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(FORMATS), n=1)
        maybe = f"Did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown dataset format {name!r}",
            hint=f"{maybe}Use one of: {', '.join(FORMATS)}.",
            format=name,
        ) from None


def is_blank(value: Any) -> bool:
    """True for a missing value: None, NaN (how pandas writes a missing cell), or a string
    of only whitespace."""
    if isinstance(value, float) and math.isnan(value):
        return True
    return value is None or (isinstance(value, str) and not value.strip())


def text_problem(value: Any) -> str | None:
    """Why a field's value cannot stand where text belongs, or None when it can.

    Text, numbers and booleans are text (``1`` reads as ``"1"``); a list, an object or
    bytes (a binary Parquet column) are not: rendered as text they would be Python's
    ``['a']`` or ``b'...'``, which no model should learn.
    """
    if isinstance(value, list | tuple):
        return "must be text, not a list"
    if isinstance(value, dict):
        return "must be text, not an object"
    if isinstance(value, bytes | bytearray):
        return "must be text, not bytes (write the column as a string column)"
    return None


def field_text(value: Any) -> str:
    """A text field's value as the prompt shows it: stripped, "" for a blank one (None, NaN,
    whitespace). A value that is not text (``text_problem``) is a DataError."""
    problem = text_problem(value)
    if problem is not None:
        raise DataError(problem, hint="Give each text field a string value.")
    return "" if is_blank(value) else str(value).strip()


def as_text(value: Any) -> str:
    """A field value as text (strings as they are, other values as compact JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def chat_problem(messages: Any) -> str | None:
    """Why a ``messages`` value is not a valid conversation, or None when it is."""
    if not isinstance(messages, list):
        return f"must be a list of {{role, content}} objects, got {type(messages).__name__}"
    if not messages:
        return "is an empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {i} is not an object"
        role = message.get("role")
        if role not in CHAT_ROLES:
            return f"message {i} has role {role!r}; roles are {', '.join(CHAT_ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"message {i} has no text 'content'"
    if messages[-1].get("role") != "assistant":
        return "the last message must be from the assistant"
    if not messages[-1]["content"].strip():
        return "the last (assistant) message is empty"
    return None


def _messages(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = row.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, Mapping)]


def _chat_text(messages: list[Mapping[str, Any]], sep: str = "\n") -> str:
    return sep.join(f"{m.get('role')}: {as_text(m.get('content'))}" for m in messages)


def prompt_text(row: Mapping[str, Any], fmt: DataFormat) -> str:
    """What the model reads before it answers: compared with the eval set for leakage.

    alpaca: instruction and input; chat: every message before the last assistant
    one; text and classification: the text.
    """
    if fmt.name == "alpaca":
        return "\n".join(as_text(row.get(f)) for f in ("instruction", "input"))
    if fmt.name == "chat":
        messages = _messages(row)
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        return _chat_text(messages)
    return as_text(row.get("text"))


def example_text(row: Mapping[str, Any], fmt: DataFormat) -> str:
    """The whole example as one text: what duplicates and near-duplicates compare.

    Fields are joined by NUL, which no whitespace handling merges, so ``("a b", "c")``
    and ``("a", "b c")`` stay different examples.
    """
    if fmt.name == "chat":
        return _chat_text(_messages(row), sep="\0")
    return "\0".join(as_text(row.get(f)) for f in fmt.fields)
