"""The wire format of ``modelyard stream run``: a request message in, an answer or a dead
letter out.

A request is one field, ``body``, holding a JSON object: ``{"prompt": "..."}`` (the
user's message, after the consumer's ``--system`` message if any) or
``{"messages": [{"role", "content"}, ...]}``, with optional ``max_tokens`` and
``temperature`` (else the consumer's) and an optional ``id`` of the producer's,
copied to the answer. Anything else in it is refused, so a misspelt key is not
silently ignored. A message that is not such a request is a ``BadMessage``: it
is dead-lettered with its reason and never asked.

Redis keeps field values as strings: every field of an answer is present, empty
when it has no value (``error`` is empty for an answer).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.batch import ROLES, Row, RowResult
from modelyard.errors import ConfigError, DataError
from modelyard.serving import SamplingParams
from modelyard.stream._source import Delivery

BODY = "body"
KEYS: tuple[str, ...] = ("id", "prompt", "messages", "max_tokens", "temperature")
# The fields of an answer, in their order.
ANSWER_FIELDS: tuple[str, ...] = (
    "message_id",
    "id",
    "answer",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "version",
    "record_id",
    "error",
)
# The fields a dead letter adds to the message's own (which follow them, as sent).
DEAD_LETTER_FIELDS: tuple[str, ...] = ("message_id", "reason", "attempts")


class BadMessage(DataError):
    """A message that is not a request: dead-lettered with this reason, never asked."""

    code = "bad_message"


@dataclass(frozen=True)
class Request:
    """A message made a ``Row`` for the runner (key: the message id), with the producer's
    ``id`` to copy to its answer."""

    row: Row
    client_id: str | None = None


def parse_request(
    delivery: Delivery, defaults: SamplingParams, system: str | None, max_tokens_cap: int
) -> Request:
    """The request in ``delivery`` (``defaults`` for the settings it does not give; at most
    ``max_tokens_cap`` tokens asked); BadMessage saying what is wrong with it otherwise."""
    body = _body(delivery.fields)
    unknown = [k for k in body if k not in KEYS]
    if unknown:
        near = difflib.get_close_matches(unknown[0], KEYS, n=1)
        guess = f" (did you mean {near[0]!r}?)" if near else ""
        raise BadMessage(f"the body has an unknown key {unknown[0]!r}{guess}; it takes "
                         f"{', '.join(KEYS)}")  # fmt: skip
    client_id = body.get("id")
    if client_id is not None and (isinstance(client_id, bool | dict | list)):
        raise BadMessage("the body's 'id' is not a string or a number")
    params = _params(body, defaults)
    if params.max_tokens > max_tokens_cap:
        raise BadMessage(f"the body's max_tokens is {params.max_tokens}, above this consumer's "
                         f"limit of {max_tokens_cap}")  # fmt: skip
    row = Row(delivery.id, _messages(body, system), params=params)
    return Request(row, None if client_id is None else str(client_id))


def _body(fields: Mapping[str, bytes]) -> dict[str, Any]:
    raw = fields.get(BODY)
    if raw is None:
        have = ", ".join(sorted(fields)) or "none"
        raise BadMessage(f"the message has no {BODY!r} field (its fields: {have})")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadMessage("the body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise BadMessage(
            f"the body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    if not isinstance(body, dict):
        raise BadMessage("the body is JSON but not an object")
    return body


def _messages(body: Mapping[str, Any], system: str | None) -> tuple[dict[str, str], ...]:
    if ("prompt" in body) == ("messages" in body):
        raise BadMessage("the body needs either 'prompt' or 'messages' (one of them)")
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadMessage("the body's 'prompt' is not a non-empty string")
        first = [{"role": "system", "content": system}] if system else []
        return (*first, {"role": "user", "content": prompt})
    value = body["messages"]
    if not isinstance(value, list) or not value:
        raise BadMessage("the body's 'messages' is not a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise BadMessage(
                f"message {i} of the body's 'messages' needs a role ({', '.join(ROLES)}) "
                "and a text content"
            )
        messages.append({"role": str(role), "content": content})
    return tuple(messages)


def _params(body: Mapping[str, Any], defaults: SamplingParams) -> SamplingParams:
    changes: dict[str, Any] = {}
    for name, kinds, what in (
        ("max_tokens", (int,), "a whole number"),
        ("temperature", (int, float), "a number"),
    ):
        if name in body:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise BadMessage(f"the body's {name!r} is {json.dumps(value)}, not {what}")
            changes[name] = value
    try:
        return dataclasses.replace(defaults, **changes) if changes else defaults
    except ConfigError as exc:
        raise BadMessage(f"the body's {exc.message}") from exc


def answer_fields(delivery: Delivery, client_id: str | None, result: RowResult) -> dict[str, str]:
    """The answer message of ``delivery``: every field of ``ANSWER_FIELDS`` (empty when it
    has no value)."""
    values: dict[str, object] = {
        "message_id": delivery.id,
        "id": client_id,
        "answer": result.answer,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "version": result.version,
        "record_id": result.record_id,
        "error": result.error,
    }
    return {k: "" if values[k] is None else str(values[k]) for k in ANSWER_FIELDS}


def dead_letter_fields(delivery: Delivery, reason: str) -> dict[str, str | bytes]:
    """The dead letter of ``delivery``: why (``DEAD_LETTER_FIELDS``), then the message's own
    fields as sent (one named like ours is kept as ``original_<name>``)."""
    fields: dict[str, str | bytes] = {
        "message_id": delivery.id,
        "reason": reason,
        "attempts": str(delivery.attempt),
    }
    for name, value in delivery.fields.items():
        fields[f"original_{name}" if name in DEAD_LETTER_FIELDS else name] = value
    return fields


__all__ = [
    "ANSWER_FIELDS",
    "BODY",
    "DEAD_LETTER_FIELDS",
    "KEYS",
    "BadMessage",
    "Request",
    "answer_fields",
    "dead_letter_fields",
    "parse_request",
]
