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
sends its prompt as given, whatever the template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelyard import registry
from modelyard.data import render_prompt, template_named
from modelyard.errors import ConfigError
from modelyard.serving._types import EngineError
from modelyard.store import ModelVersion

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def template_name(version: ModelVersion) -> str:
    """The registry's decision of how ``version`` renders prompts."""
    return registry.template_name(version.lineage)


def _checked(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    out = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message["role"])
        if role is None:
            raise ConfigError(
                f"messages[{i}] has role {message['role']!r}, which this server does not render",
                hint="Use the roles system (or developer), user and assistant.",
                param=f"messages.{i}.role",
            )
        out.append({"role": role, "content": message["content"]})
    if not any(m["role"] == "user" for m in out):
        raise ConfigError(
            "messages must contain at least one message with role 'user'",
            hint="Add the user's question as a message with role 'user'.",
            param="messages",
        )
    return out


def render_chat(
    version: ModelVersion, messages: Sequence[Mapping[str, str]], tokenizer: Any = None
) -> str:
    """The prompt for ``messages`` in ``version``'s template (``chat`` needs ``tokenizer``)."""
    checked = _checked(messages)
    name = template_name(version)
    last_user = next(m["content"] for m in reversed(checked) if m["role"] == "user")
    if name == "alpaca":
        system = "\n".join(m["content"] for m in checked if m["role"] == "system").strip()
        if system:
            return render_prompt({"instruction": system, "input": last_user})
        return render_prompt({"instruction": last_user})
    if name == "text":
        return last_user
    try:
        template = template_named(name, tokenizer)
        if name == "classification":
            # render() wants a whole row; only the prompt is used, so any label will do
            return template.render({"text": last_user, "label": "-"})[0]
        return template.prompt_of_messages(checked)
    except ConfigError as exc:  # a version this server cannot render: not the caller's fault
        raise EngineError(
            f"cannot render prompts for {version.ref}: {exc.message}",
            hint="Check the version's lineage.prompt_template and its base tokenizer.",
        ) from exc
