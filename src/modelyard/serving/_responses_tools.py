"""Function tools on the Responses API: ``tools`` and ``tool_choice`` in its shapes, and the
``function_call`` items of an answer, whole and streamed.

The Responses API's function tool is flat (``{"type": "function", "name",
"description", "parameters", "strict"}``) and its named choice is
``{"type": "function", "name": ...}``; past the wire, everything is the chat
route's (``_tools``): the functions offered in the prompt, a required or named
call constrained by the same ``tool_call`` guide, the calls read back out of the
answer by ``parse_calls``. Built-in tools (web search, file search, computer
use, MCP, code interpreter, ...) run on OpenAI's servers: a 400 naming the type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.serving._tools import FunctionDef, check_choice_kind, parse_calls

MAX_TOOLS = 128  # functions offered in one request, as OpenAI allows (and the chat route)


class FunctionTool(FunctionDef):
    """A function the model may call (``tools[]``), in the Responses API's flat shape."""

    type: str

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, value: Any) -> Any:
        if isinstance(value, dict) and "function" in value and "name" not in value:
            raise ValueError(
                'a Responses tool is flat: {"type": "function", "name": ..., "parameters": '
                "{...}}, not the chat completions shape with a nested function"
            )
        return value

    @field_validator("type")
    @classmethod
    def _function_only(cls, value: str) -> str:
        if value != "function":
            raise ValueError(
                f"tools of type {value!r} are not supported by this server: it offers function "
                'tools ({"type": "function", "name": ..., "parameters": {...}}); built-in tools '
                "(web_search, file_search, computer_use, mcp, code_interpreter, ...) run on "
                "OpenAI's servers"
            )
        return value

    def echoed(self) -> dict[str, Any]:
        """The tool as the answer's ``tools`` echoes it."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


class FunctionChoice(BaseModel):
    """``tool_choice: {"type": "function", "name": ...}``: a call of that function."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(min_length=1)


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice


def checked_choice(value: Any) -> Any:
    """``tool_choice`` as sent, or a 400 saying what this server takes instead."""
    if value is None or isinstance(value, str):
        if value not in (None, "none", "auto", "required"):
            raise ValueError(f"{value!r} is not a tool_choice: send none, auto or required")
        return value
    if not isinstance(value, dict):
        raise ValueError('tool_choice is none, auto, required or {"type": "function", "name": ...}')
    kind = value.get("type")
    if kind == "function" and "function" in value and "name" not in value:
        raise ValueError(
            'a named function is {"type": "function", "name": ...} in the Responses API, not '
            "the chat completions shape with a nested function"
        )
    check_choice_kind(kind, '{"type": "function", "name": ...}')
    if not isinstance(value.get("name"), str):
        raise ValueError('a named function is {"type": "function", "name": ...}: send its name')
    return value


def checked_tools(tools: Sequence[FunctionTool] | None, choice: ToolChoice | None) -> None:
    """Distinct names, and a ``tool_choice`` that asks for a call among the tools offered."""
    names = [t.name for t in tools or []]
    if len(set(names)) != len(names):
        raise ValueError("two functions have the same name")
    if choice not in (None, "none", "auto") and not names:
        raise ValueError("it asks for a tool call, and no tools are offered")
    if isinstance(choice, FunctionChoice) and choice.name not in names:
        raise ValueError(
            f"it names the function {choice.name!r}, which is not among the tools offered "
            f"({', '.join(names)})"
        )


def echoed_choice(choice: ToolChoice | None) -> Any:
    if isinstance(choice, FunctionChoice):
        return choice.model_dump()
    return choice or "auto"


def answer_items(
    text: str, tools: Sequence[Mapping[str, Any]], single: bool
) -> tuple[str | None, list[dict[str, Any]]]:
    """The answer's text (None when only calls remain) and its ``function_call`` output
    items: the calls ``parse_calls`` reads (``single``: only the first)."""
    if not tools:
        return text, []
    content, calls = parse_calls(text, tools, single=single)
    items = [
        {
            "type": "function_call",
            "id": "fc_" + call["id"].removeprefix("call_"),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }
        for call in calls
    ]
    return content, items


__all__ = [
    "MAX_TOOLS",
    "FunctionChoice",
    "FunctionTool",
    "ToolChoice",
    "answer_items",
    "checked_choice",
    "checked_tools",
    "echoed_choice",
]
