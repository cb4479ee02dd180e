"""How an input row becomes one chat request: the column mapping, checked row by row.

Three ways, one per job:

- ``prompt``: a text column, sent as one user message (after ``system``);
- ``messages``: a column holding the conversation, ``[{"role", "content"}, ...]``
  (JSON text in a CSV cell);
- ``fields``: the columns of a prompt template's fields, ``instruction`` (and
  ``input``) or ``text``, sent as the chat route would send them: the
  instruction as the system message and the input as the user's (an
  instruction alone is the user's message), a text as the user's message.
  The version's template renders them exactly as it rendered its training rows.

Without any, the input's columns decide: ``messages``, else ``prompt``, else
``instruction`` (with ``input``), else ``text``. Every row is checked before any
is sent; a problem names its row (1-based) and column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, DataError

FIELDS: tuple[str, ...] = ("instruction", "input", "text")
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns make a row's request (see the module's docstring)."""

    prompt: str | None = None
    messages: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)  # template field -> column
    system: str | None = None  # a system message before a prompt or a text

    def __post_init__(self) -> None:
        ways = [w for w in (self.prompt, self.messages, self.fields or None) if w]
        if len(ways) > 1:
            raise ConfigError(
                "give one of --prompt-column, --messages-column and --field, not several"
            )
        unknown = sorted(set(self.fields) - set(FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown template field {unknown[0]!r} in --field",
                hint=f"Map one of: {', '.join(FIELDS)} (e.g. --field instruction=question).",
            )
        if "input" in self.fields and "instruction" not in self.fields:
            raise ConfigError("--field input=... needs --field instruction=... too")
        if "text" in self.fields and "instruction" in self.fields:
            raise ConfigError("map either instruction (and input) or text, not both")
        if self.system is not None and (self.messages or "instruction" in self.fields):
            raise ConfigError(
                "--system goes with --prompt-column or --field text=...",
                hint="Put the system message in the conversation, or map it as the instruction.",
            )

    @property
    def chosen(self) -> bool:
        return bool(self.prompt or self.messages or self.fields)

    def resolved(self, columns: Sequence[str], where: Path) -> ColumnMapping:
        """This mapping, with the way chosen from ``columns`` when none was given; a column
        it names that the input lacks is a DataError naming the columns there are."""
        mapping = self if self.chosen else self._guess(columns, where)
        needed = [c for c in (mapping.prompt, mapping.messages, *mapping.fields.values()) if c]
        for column in needed:
            if column not in columns:
                raise DataError(
                    f"{where} has no {column!r} column; its columns are: {', '.join(columns)}",
                    hint="Map the request to columns it has (--prompt-column, "
                    "--messages-column, --field).",
                    column=column,
                )
        return mapping

    def _guess(self, columns: Sequence[str], where: Path) -> ColumnMapping:
        system = self.system
        if "messages" in columns:
            return ColumnMapping(messages="messages", system=system)
        if "prompt" in columns:
            return ColumnMapping(prompt="prompt", system=system)
        if "instruction" in columns:
            pairs = {"instruction": "instruction"} | (
                {"input": "input"} if "input" in columns else {}
            )
            return ColumnMapping(fields=pairs, system=system)
        if "text" in columns:
            return ColumnMapping(fields={"text": "text"}, system=system)
        raise DataError(
            f"{where} has no column to ask: its columns are {', '.join(columns)}",
            hint="Say which with --prompt-column COL, --messages-column COL or "
            "--field instruction=COL (a messages, prompt, instruction or text column is "
            "found by itself).",
        )

    def describe(self) -> dict[str, Any]:
        """The mapping as plain values (a job's settings)."""
        return {
            "prompt": self.prompt,
            "messages": self.messages,
            "fields": dict(sorted(self.fields.items())),
            "system": self.system,
        }

    def messages_of(self, row: Mapping[str, Any], where: str) -> tuple[dict[str, str], ...]:
        """The chat messages of ``row`` (``where`` names it in errors: ``file row 7``)."""
        if self.messages:
            return _conversation(row.get(self.messages), where, self.messages)
        system = [{"role": "system", "content": self.system}] if self.system else []
        if self.prompt:
            return (*system, {"role": "user", "content": _text(row, self.prompt, where)})
        if "text" in self.fields:
            return (*system, {"role": "user", "content": _text(row, self.fields["text"], where)})
        instruction = _text(row, self.fields["instruction"], where)
        column = self.fields.get("input")
        value = row.get(column) if column else None
        if value is None or (isinstance(value, str) and not value.strip()):
            return ({"role": "user", "content": instruction},)
        return (
            {"role": "system", "content": instruction},
            {"role": "user", "content": _text(row, str(column), where)},
        )


def _text(row: Mapping[str, Any], column: str, where: str) -> str:
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        what = "has no value" if value is None else f"holds a {type(value).__name__}, not a text"
        raise DataError(f"{where}: the {column!r} column {what}", column=column)
    text = str(value)
    if not text.strip():
        raise DataError(f"{where}: the {column!r} column is empty", column=column)
    return text


def _conversation(value: Any, where: str, column: str) -> tuple[dict[str, str], ...]:
    if isinstance(value, str):  # a CSV cell: the conversation as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}: the {column!r} column is not JSON ({exc.msg})",
                hint='Write the conversation as JSON: [{"role": "user", "content": "..."}].',
                column=column,
            ) from exc
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: the {column!r} column is not a list of messages",
            hint='Give [{"role": "user", "content": "..."}, ...].',
            column=column,
        )
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if role not in ROLES or not isinstance(content, str):
            raise DataError(
                f"{where}: message {i} of the {column!r} column needs a role "
                f"({', '.join(ROLES)}) and a text content",
                column=column,
            )
        messages.append({"role": str(role), "content": content})
    return tuple(messages)


__all__ = ["FIELDS", "ROLES", "ColumnMapping"]
