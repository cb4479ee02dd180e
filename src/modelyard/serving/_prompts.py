"""Chat messages → the prompt format a version was trained with.

A version records its template in ``lineage["prompt_template"]`` (versions
without one are ``alpaca``); the server renders a conversation exactly as
training and evaluation rendered its rows, using ``modelyard.data``'s templates:

``chat``
    the base tokenizer's own chat template, ending with the generation prompt.
``chat-fallback``
    ``<|role|>\\n{content}\\n`` per message, then ``<|assistant|>\\n``.
``alpaca``
    system messages become the instruction and the last user message the
    input; with no system message, the last user message is the instruction.
``classification``
    the last user message is the text to label.
``text``
    the last user message, as is (a plain language model continues it).

OpenAI's ``developer`` role is read as ``system``. ``POST /v1/completions``
sends its prompt as given, whatever the template. Tools, the calls of assistant
turns and ``tool`` results render with ``chat`` and ``chat-fallback`` only
(``_tools``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelyard import registry
from modelyard.data import render_prompt, template_named
from modelyard.errors import ConfigError
from modelyard.serving._tools import render_call, template_takes_tools, tools_section
from modelyard.serving._types import EngineError
from modelyard.store import ModelVersion

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_TOOL_TEMPLATES = ("chat", "chat-fallback")


def template_name(version: ModelVersion) -> str:
    """The registry's decision of how ``version`` renders prompts."""
    return registry.template_name(version.lineage)


def _checked(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message["role"])
        if role is None:
            raise ConfigError(
                f"messages[{i}] has role {message['role']!r}, which this server does not render",
                hint="Use the roles system (or developer), user, assistant and tool.",
                param=f"messages.{i}.role",
            )
        out.append({**message, "role": role, "content": message.get("content") or ""})
    if not any(m["role"] == "user" for m in out):
        raise ConfigError(
            "messages must contain at least one message with role 'user'",
            hint="Add the user's question as a message with role 'user'.",
            param="messages",
        )
    return out


def render_chat(
    version: ModelVersion,
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The prompt for ``messages`` in ``version``'s template (``chat`` needs ``tokenizer``),
    offering ``tools`` (function definitions: name, description, parameters)."""
    checked = _checked(messages)
    name = template_name(version)
    with_tools = bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in checked)
    if with_tools:
        return _render_with_tools(version, name, checked, tokenizer, list(tools or []))
    at = max(i for i, m in enumerate(checked) if m["role"] == "user")
    last_user = str(checked[at]["content"])
    if name == "alpaca":
        system = "\n".join(m["content"] for m in checked if m["role"] == "system").strip()
        if system:
            return render_prompt({"instruction": system, "input": last_user})
        _needs_text(version, name, last_user, at, "the instruction")
        return render_prompt({"instruction": last_user})
    if name == "text":
        return last_user
    try:
        template = template_named(name, tokenizer)
        if name == "classification":
            _needs_text(version, name, last_user, at, "the text to label")
            # render() wants a whole row; only the prompt is used, so any label will do
            return template.render({"text": last_user, "label": "-"})[0]
        return template.prompt_of_messages(checked)
    except ConfigError as exc:  # a version this server cannot render: not the caller's fault
        raise EngineError(
            f"cannot render prompts for {version.ref}: {exc.message}",
            hint="Check the version's lineage.prompt_template and its base tokenizer.",
        ) from exc


def _needs_text(version: ModelVersion, template: str, text: str, at: int, role: str) -> None:
    """Refuse a blank last user message where ``template`` has nothing else to prompt with
    (the training rows' own check would speak of dataset rows, not of the request)."""
    if not text.strip():
        raise ConfigError(
            f"the last user message is empty: {version.ref} is served with the {template!r} "
            f"prompt template, where it is {role}",  # param names it, the route's way
            hint="Send the user's text in it"
            + (", or a system message with the instruction." if template == "alpaca" else "."),
            param=f"messages.{at}.content",
        )


def _render_with_tools(
    version: ModelVersion,
    name: str,
    messages: list[dict[str, Any]],
    tokenizer: Any,
    tools: list[Mapping[str, Any]],
) -> str:
    """A conversation with tools offered, tool calls or tool results, in ``chat`` (the
    tokenizer's template, which must take tools) or ``chat-fallback``."""
    if name not in _TOOL_TEMPLATES or (name == "chat" and not template_takes_tools(tokenizer)):
        why = (
            "its tokenizer's chat template does not render tools"
            if name == "chat"
            else f"its prompt template {name!r} has no place for tools"
        )
        raise ConfigError(
            f"{version.ref} cannot be offered tools: {why}",
            hint="Ask without tools and tool messages, or use a version fine-tuned with a chat "
            "template (format chat).",
            param="tools",
        )
    if name == "chat":
        hf = [
            {
                **m,
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in m["tool_calls"]
                ],
            }
            if m.get("tool_calls")
            else m
            for m in messages
        ]
        offered = [{"type": "function", "function": dict(t)} for t in tools] or None
        return str(
            tokenizer.apply_chat_template(
                hf, tools=offered, tokenize=False, add_generation_prompt=True
            )
        )
    turns: list[str] = []
    system = "\n".join(m["content"] for m in messages if m["role"] == "system").strip()
    if tools:
        system = (system + "\n\n" if system else "") + tools_section(tools)
    if system:
        turns.append(f"<|system|>\n{system}\n")
    for m in messages:
        if m["role"] == "system":
            continue
        content = m["content"]
        if m.get("tool_calls"):
            calls = "\n".join(render_call(c) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        turns.append(f"<|{m['role']}|>\n{content}\n")
    return "".join(turns) + "<|assistant|>\n"
