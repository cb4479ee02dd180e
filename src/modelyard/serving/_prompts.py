"""Chat messages → the prompt format a version was trained with.

A version records its template in ``lineage["prompt_template"]``. For the
``alpaca`` template, the chat fallback is documented in docs/serving.md:
system messages become the instruction and the last user message the input;
with no system message, the last user message is the instruction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelyard.data import render_prompt
from modelyard.errors import ConfigError
from modelyard.store import ModelVersion


def render_chat(version: ModelVersion, messages: Sequence[Mapping[str, str]]) -> str:
    template = str(version.lineage.get("prompt_template", "alpaca"))
    if template != "alpaca":
        raise ConfigError(
            f"{version.ref} uses prompt template {template!r}, unknown to this server"
        )
    system = "\n".join(m["content"] for m in messages if m["role"] == "system").strip()
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise ConfigError("messages must contain at least one message with role 'user'")
    if system:
        return render_prompt({"instruction": system, "input": users[-1]})
    return render_prompt({"instruction": users[-1]})
