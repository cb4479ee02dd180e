"""The ``input`` of ``POST /v1/responses``: its items, and the chat messages they become.

An item is a message (``{"role", "content"}``, with or without ``"type": "message"``,
content a text or ``input_text``/``output_text`` parts), a ``function_call`` an
earlier answer made (``call_id``, ``name``, ``arguments``), or the
``function_call_output`` the client sends back for it (``call_id``, ``output``).
They become the chat route's messages (``ChatMessage.rendered``'s shape): calls
join the assistant turn before them as its ``tool_calls``, and each output is a
``tool`` message with its ``tool_call_id``, so every engine and template renders
them as it renders the same conversation sent to ``/v1/chat/completions``.
Other items (reasoning, item references, built-in tools' calls) are a 400 naming
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from modelyard.errors import ConfigError
from modelyard.serving._tools import CalledFunction, ToolCall
from modelyard.serving._wire_fields import Text

ROLES = ("user", "system", "developer", "assistant")
_PART_FIELDS = {"type", "text", "annotations", "logprobs"}
_MEDIA = {
    "input_image": "image inputs",
    "input_file": "file inputs",
    "input_audio": "audio inputs",
}
# the fields of each kind of item (``id`` and ``status``: an earlier answer's, sent back)
_FIELDS = {
    "message": {"type", "role", "content", "id", "status", "phase"},
    "function_call": {"type", "call_id", "name", "arguments", "id", "status"},
    "function_call_output": {"type", "call_id", "output", "id", "status"},
}
_NEEDED = {
    "message": ("role", "content"),
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
}
# what the openai SDK's model_dump of an answer's function_call holds besides: accepted at null
_NULL_ONLY = {"async", "async_", "caller", "namespace"}


def _field_error(where: str, name: str) -> ValueError:
    return ValueError(
        f"{name} is not a field of {where} this server accepts; remove it "
        "(docs/serving.md lists what is accepted)"
    )


class InputPart(BaseModel):
    """A piece of a message's content: text (``output_text``: an earlier answer, sent back)."""

    model_config = ConfigDict(extra="ignore")  # checked below, with a message naming it
    type: Literal["input_text", "output_text"]
    text: Text
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError('a content part is an object: {"type": "input_text", "text": ...}')
        kind = value.get("type")
        if kind in _MEDIA:
            raise ValueError(
                f"{_MEDIA[kind]} ({kind}) are not supported by this server: send text (input_text)"
            )
        if kind not in ("input_text", "output_text"):
            raise ValueError(
                f"content parts of type {kind!r} are not supported by this server: send "
                "input_text (or output_text for an earlier answer)"
            )
        unknown = sorted(set(value) - _PART_FIELDS)
        if unknown:
            raise _field_error(f"an {kind} part", unknown[0])
        return value


def _joined(content: str | list[InputPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text for part in content)


class InputItem(BaseModel):
    """An item of ``input``: a message, a ``function_call`` or a ``function_call_output``
    (one model, so that a problem deep in an item is named by its path, ``input.0.content.0``)."""

    model_config = ConfigDict(extra="ignore")  # checked below, with a message naming it
    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: Text | list[InputPart] | None = None
    call_id: Text | None = None
    name: Text | None = None
    arguments: Text | None = None
    output: Text | list[InputPart] | None = None
    id: Text | None = None
    status: Text | None = None
    phase: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_item(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(
                'an input item is a message: {"role": "user", "content": "..."} (or a '
                "function_call, or a function_call_output); send a text or a list of items"
            )
        kind = value.get("type", "message")
        if kind not in _FIELDS:
            raise ValueError(
                f"input items of type {kind!r} are not supported by this server (it reads "
                "messages whose content is text, function_call and function_call_output: no "
                "reasoning, item references or built-in tools' calls)"
            )
        if kind == "message" and value.get("role") not in ROLES:
            tool = value.get("role") == "tool"
            raise ValueError(
                f"role {value.get('role')!r} is not supported: use one of {', '.join(ROLES)}"
                + (" (a tool's result is a function_call_output item)" if tool else "")
            )
        where = "a message item" if kind == "message" else f"a {kind} item"
        unknown = sorted(
            k for k in set(value) - _FIELDS[kind] if not (k in _NULL_ONLY and value[k] is None)
        )
        if unknown:
            raise _field_error(where, unknown[0])
        missing = [k for k in _NEEDED[kind] if value.get(k) is None]
        if missing:
            raise ValueError(f"{where} needs {' and '.join(missing)}")
        content = value.get("content", value.get("output"))
        if kind != "function_call" and not isinstance(content, str | list):
            field = "content" if kind == "message" else "output"
            raise ValueError(f"{field} is a text, or a list of input_text parts")
        if kind != "function_call" and isinstance(content, list) and not content:
            raise ValueError("content is an empty list; send at least one input_text part")
        return value

    @property
    def text(self) -> str:
        """A message's text, or a function_call_output's (parts joined with a newline)."""
        return _joined(self.content if self.type == "message" else self.output)


def conversation(
    instructions: str | None, items: str | Sequence[InputItem]
) -> list[dict[str, Any]]:
    """The chat messages of ``instructions`` (a system message first) and ``input``, as the
    chat route renders them; a call's arguments that are not a JSON object, or an output
    answering no earlier ``function_call``, is a 400 naming the item."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": instructions}] if instructions else []
    )
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    called: set[str] = set()
    for i, item in enumerate(items):
        if item.type == "message":
            messages.append({"role": item.role, "content": item.text})
        elif item.type == "function_call":
            assert item.call_id is not None and item.name is not None  # _known_item
            call = ToolCall(
                id=item.call_id,
                function=CalledFunction(name=item.name, arguments=item.arguments or ""),
            )
            try:
                rendered = call.rendered(f"input.{i}.arguments")
            except ValueError as exc:
                raise ConfigError(str(exc), param=f"input.{i}.arguments") from None
            called.add(item.call_id)
            turn = messages[-1] if messages else None
            if turn is None or turn["role"] != "assistant":  # calls join the turn they end
                turn = {"role": "assistant", "content": ""}
                messages.append(turn)
            turn.setdefault("tool_calls", []).append(rendered)
        else:
            if item.call_id not in called:
                raise ConfigError(
                    f"input.{i}: the function_call_output's call_id {item.call_id!r} answers no "
                    "function_call earlier in input",
                    hint="Send the function_call item the model made (from the answer's output) "
                    "before its function_call_output: this server keeps no earlier responses.",
                    param=f"input.{i}.call_id",
                )
            messages.append({"role": "tool", "content": item.text, "tool_call_id": item.call_id})
    return messages


__all__ = ["ROLES", "InputItem", "InputPart", "conversation"]
