"""Tools (function calling): offered tools in the prompt, a required call as a guide, and
calls read back out of the answer.

The call format is Hermes' (used by Qwen 2.5/3 and Hermes chat templates, and by
vLLM's ``hermes`` parser)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call>

A version whose template is ``chat`` renders tools with its tokenizer's chat
template, which must take ``tools`` (else: a 400 saying so). ``chat-fallback``
(modelyard's format for tokenizers without a chat template) renders them in a
``# Tools`` section of the system turn, in the same Hermes format; assistant turns
that called tools show their calls, and tool results are ``<|tool|>`` turns. Other
templates (``alpaca``, ``classification``, ``text``) have no place for tools.

``tool_choice`` ``required`` (or a named function) constrains the answer to one
call of an offered function with arguments valid under its ``parameters`` (a
``tool_call`` guide, ``_grammar``); ``auto`` lets the model choose, and the calls it
writes are parsed; ``none`` offers no tools.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.serving._types import Guide, SamplingParams
from modelyard.serving._wire_fields import JsonObject, Text, utf8_json

CALL_START = "<tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
ANY_OBJECT: dict[str, Any] = {"type": "object"}
_SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


# -- the wire format -----------------------------------------------------------------------

_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDef(BaseModel):
    """``tools[].function``: a function the model may call."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME)
    description: Text | None = None
    parameters: JsonObject | None = None  # a JSON schema of its arguments
    strict: bool | None = None  # a required call always follows the schema; passed on

    @field_validator("parameters")
    @classmethod
    def _an_object_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The arguments are a JSON object: its schema's ``type`` is ``object`` (when given),
        ``properties`` maps names to schemas and ``required`` lists names."""
        if value is None or value == {}:
            return value
        kind = value.get("type")
        if kind not in (None, "object"):
            raise ValueError(
                f"the arguments are a JSON object: a schema of type 'object', not {kind!r}"
                if kind in _SCHEMA_TYPES
                else f"{kind!r} is not a JSON schema type; the arguments are a JSON object: "
                'send {"type": "object", "properties": {...}}'
            )
        properties = value.get("properties", {})
        if not isinstance(properties, dict) or not all(
            isinstance(p, dict | bool) for p in properties.values()
        ):
            raise ValueError("properties is an object mapping each argument to its JSON schema")
        required = value.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError("required is a list of argument names")
        return value

    def offered(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["parameters"] = self.parameters or ANY_OBJECT
        if self.strict:  # as vLLM passes a tool on: to the chat template, and to an upstream
            out["strict"] = True
        return out


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class ChosenFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ChosenFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
_NAMED = '{"type": "function", "function": {"name": ...}}'


def check_choice_kind(kind: object, named: str) -> None:
    """ValueError unless a named ``tool_choice``'s ``type`` is function (``named``: how the
    route spells a named function, for the message)."""
    if kind == "allowed_tools":
        raise ValueError(
            "tool_choice allowed_tools is not supported by this server yet: offer only the "
            "allowed functions in tools, with tool_choice auto or required"
        )
    if kind != "function":
        raise ValueError(
            f"tool_choice of type {kind!r} is not supported by this server: it calls function "
            f"tools only (none, auto, required or {named})"
        )


def checked_choice(value: Any) -> Any:
    """Chat's ``tool_choice`` as sent, or a 400 saying what this server takes instead (not
    the union's branch names, ``tool_choice.NamedToolChoice``, for a mistake)."""
    if value is None or isinstance(value, str):
        if value not in (None, "none", "auto", "required"):
            raise ValueError(
                f"{value!r} is not a tool_choice: send none, auto, required or {_NAMED}"
            )
        return value
    if not isinstance(value, dict):
        raise ValueError(f"tool_choice is none, auto, required or {_NAMED}")
    check_choice_kind(value.get("type"), _NAMED)
    function = value.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        flat = "name" in value and function is None  # the Responses API's shape
        raise ValueError(
            f"a named function is {_NAMED} in chat completions"
            + (", not the Responses API's flat shape" if flat else "")
        )
    return value


Tools = Sequence[Mapping[str, Any]] | None  # functions offered (``FunctionDef.offered``)


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Text
    arguments: Text  # JSON text, as the API returns it


class ToolCall(BaseModel):
    """A call in an earlier assistant turn (``messages[].tool_calls``)."""

    model_config = ConfigDict(extra="ignore")
    id: Text
    type: Literal["function"] = "function"
    function: CalledFunction

    def rendered(self, where: str) -> dict[str, Any]:
        """The call as templates take it: ``arguments`` as an object."""
        try:
            arguments = json.loads(self.function.arguments)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise ValueError(f"{where}: arguments must be a JSON object as text")
        utf8_json(arguments, f"{where}: arguments")  # "\\ud800" in the text decodes to one
        return {"id": self.id, "name": self.function.name, "arguments": arguments}


# -- prompts, guides, answers ----------------------------------------------------------------


def call_guide(tools: Sequence[Mapping[str, Any]], only: str | None = None) -> Guide:
    """The guide of a required call: one of ``tools`` (or the one named ``only``) with
    arguments valid under its ``parameters``."""
    choices = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["name"]},
                "arguments": t.get("parameters") or ANY_OBJECT,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
        if only is None or t["name"] == only
    ]
    schema = choices[0] if len(choices) == 1 else {"anyOf": choices}
    return Guide("tool_call", json.dumps(schema), param="tool_choice")


def tools_section(tools: Sequence[Mapping[str, Any]]) -> str:
    """The ``# Tools`` section ``chat-fallback`` adds to the system turn."""
    offered = "\n".join(
        json.dumps({"type": "function", "function": dict(t)}, sort_keys=True) for t in tools
    )
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query. "
        f"The functions, one JSON object per line:\n{offered}\n\n"
        "For each call, write a JSON object with the function's name and its arguments "
        'inside <tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, '
        '"arguments": <args-json-object>}\n</tool_call>'
    )


def render_call(call: Mapping[str, Any]) -> str:
    """One call of an assistant turn, as the model writes it."""
    body = {"name": call["name"], "arguments": call["arguments"]}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"


def parse_calls(
    text: str, tools: Sequence[Mapping[str, Any]], *, single: bool = False
) -> tuple[str | None, list[dict[str, Any]]]:
    """The answer's content (None when only calls remain) and the calls it makes of
    ``tools``, in OpenAI's shape. A block that is not a call of an offered function with
    an object of arguments stays in the content, as written. ``single``
    (``parallel_tool_calls: false``): only the first call is made, later ones dropped."""
    names = {t["name"] for t in tools}
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return match.group(0)
        if not (
            isinstance(call, dict)
            and call.get("name") in names
            and isinstance(call.get("arguments", {}), dict)
        ):
            return match.group(0)
        if single and calls:
            return ""
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call.get("arguments", {})),
                },
            }
        )
        return ""

    content = _CALL.sub(take, text).strip()
    return (content or None) if calls else text, calls


def answer_checks(params: SamplingParams, text: str) -> tuple[int | None, bool | None]:
    """What a record says of an answer: the calls it made when tools were offered (None:
    none were), and whether an answer that had to be JSON or a call came out as one (None:
    nothing was asked; False: cut short by ``max_tokens``, say)."""
    offered = [{"name": name} for name in params.tool_names]
    calls = len(parse_calls(text, offered)[1]) if offered else None
    guide = params.guide
    if guide is None:
        return calls, None
    if guide.kind == "tool_call":
        return calls, bool(calls)
    try:
        parsed = json.loads(text)
    except ValueError:
        return calls, False
    return calls, isinstance(parsed, dict) or guide.kind == "json_schema"


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders ``tools`` (it reads the variable)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the one tools use, or the default
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and re.search(r"\btools\b", template) is not None


def streamable(text: str) -> int:
    """How much of an answer's ``text`` so far can be streamed as text while tools are
    offered: up to where a call begins (or may begin: a tail that starts ``<tool_call>``),
    without the whitespace before it (``parse_calls`` strips the text around calls)."""
    end = text.find(CALL_START)
    if end < 0:
        end = len(text) - max(
            (k for k in range(1, len(CALL_START)) if text.endswith(CALL_START[:k])), default=0
        )
    return len(text[:end].rstrip())


__all__ = [
    "CALL_START",
    "CalledFunction",
    "FunctionDef",
    "NamedToolChoice",
    "ToolCall",
    "ToolChoice",
    "ToolDef",
    "Tools",
    "answer_checks",
    "call_guide",
    "parse_calls",
    "render_call",
    "streamable",
    "template_takes_tools",
    "tools_section",
]
