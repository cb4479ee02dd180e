"""Prompt templates: how a row of each data format becomes ``(prompt, response)``.

Training, evaluation and serving must render a row byte-for-byte the same way,
or an adapter is scored (and served) on a format it never saw. Each template
has a stable name that is recorded in a model version's lineage, so the server
can render API requests exactly as the version was trained:

``alpaca``
    the classic instruction template (see ``render_prompt``); response ``output``.
``chat``
    ``messages`` up to the last assistant turn, rendered with the tokenizer's
    own chat template when it has one; the response is the last assistant turn.
``chat-fallback``
    the same for tokenizers without a chat template: each turn is
    ``<|role|>\\n{content}\\n`` and the prompt ends with ``<|assistant|>\\n``.
``classification``
    ``### Text:\\n{text}\\n\\n### Label:\\n``; the response is ``label``.
``text``
    plain language-model text: the prompt is empty and the loss covers all of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.data._formats import CHAT_ROLES, FORMATS, DataFormat, example_text, field_text
from modelyard.data._prompt import render_prompt, response_of
from modelyard.errors import ConfigError, DataError

TEMPLATES: tuple[str, ...] = ("alpaca", "chat", "chat-fallback", "classification", "text")

_CLASSIFICATION = "### Text:\n{text}\n\n### Label:\n"
_ROLES = CHAT_ROLES


def _text_field(row: Mapping[str, Any], field: str, fmt: str) -> str:
    try:
        text = field_text(row.get(field))
    except DataError as exc:
        raise DataError(
            f"a {fmt} row's {field!r} {exc.message}", hint=exc.hint, field=field
        ) from None
    if not text:
        raise DataError(
            f"a {fmt} row has no {field!r}",
            hint=f"Every {fmt} row needs a non-empty {field!r} field.",
            field=field,
        )
    return text


def _messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The row's ``messages``, checked: known roles, string contents, last one the assistant."""
    raw = row.get("messages")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise DataError(
            "a chat row has no 'messages' list",
            hint="Give 'messages': [{'role': 'user', 'content': ...}, ...].",
            field="messages",
        )
    messages: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise DataError(
                f"chat message {i} has no valid 'role'",
                hint=f"Each message needs a role among {', '.join(_ROLES)} and a 'content'.",
                field="messages",
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(
                f"chat message {i} has no string 'content'",
                hint="Each message needs a text 'content'.",
                field="messages",
            )
        messages.append({"role": str(message["role"]), "content": content})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise DataError(
            "the last message of a chat row must be a non-empty assistant turn",
            hint="End each conversation with the answer the model should learn.",
            field="messages",
        )
    return messages


def render_fallback_chat(messages: Sequence[Mapping[str, str]]) -> str:
    """The documented chat rendering for tokenizers without a chat template."""
    turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return turns + "<|assistant|>\n"


@dataclass(frozen=True)
class PromptTemplate:
    """One named way to render rows; ``tokenizer`` is needed only by ``chat``."""

    name: str
    tokenizer: Any = None

    def prompt_of_messages(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for a conversation whose next turn is the assistant's (serving, chat)."""
        if self.name == "chat":
            return str(
                self.tokenizer.apply_chat_template(
                    [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
                )
            )
        if self.name == "chat-fallback":
            return render_fallback_chat(messages)
        raise ConfigError(f"template {self.name!r} does not render conversations")

    def render(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """``(prompt, response)`` of one row: what the model sees and what it must write."""
        if self.name == "alpaca":
            return render_prompt(row), response_of(row)
        if self.name in ("chat", "chat-fallback"):
            messages = _messages(row)
            return self.prompt_of_messages(messages[:-1]), messages[-1]["content"].strip()
        if self.name == "classification":
            text = _text_field(row, "text", "classification")
            return _CLASSIFICATION.format(text=text), _text_field(row, "label", "classification")
        if self.name == "text":
            return "", _text_field(row, "text", "text")
        raise ConfigError(
            f"unknown prompt template {self.name!r}",
            hint=f"Use one of {', '.join(TEMPLATES)}.",
        )

    def prompt(self, row: Mapping[str, Any]) -> str:
        return self.render(row)[0]

    def response(self, row: Mapping[str, Any]) -> str:
        return self.render(row)[1]


def template_for(data_format: str, tokenizer: Any = None) -> PromptTemplate:
    """The template a format trains with (``chat`` falls back without a tokenizer template)."""
    if data_format not in FORMATS:
        raise ConfigError(
            f"unknown data format {data_format!r}",
            hint=f"Use one of {', '.join(FORMATS)}.",
            field="format",
        )
    if data_format == "chat":
        has_template = tokenizer is not None and getattr(tokenizer, "chat_template", None)
        return PromptTemplate("chat" if has_template else "chat-fallback", tokenizer)
    return PromptTemplate(data_format, tokenizer)


def template_named(name: str, tokenizer: Any = None) -> PromptTemplate:
    """The template recorded in a version's lineage, for serving and re-evaluation."""
    if name not in TEMPLATES:
        raise ConfigError(
            f"unknown prompt template {name!r}", hint=f"Use one of {', '.join(TEMPLATES)}."
        )
    if name == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise ConfigError(
            "the 'chat' template needs the tokenizer's chat template, and this one has none"
        )
    return PromptTemplate(name, tokenizer)


def training_text(row: Mapping[str, Any], fmt: DataFormat, template: PromptTemplate) -> str:
    """The sequence the model trains on: the row rendered by ``template``, prompt then response.

    Rows the template cannot render (an empty field, a malformed chat, which the
    validation report lists anyway) are measured as their plain example text.
    """
    try:
        prompt, response = template.render(row)
    except Exception:  # DataError, or a tokenizer chat template rejecting the conversation
        return example_text(row, fmt)
    return prompt + response
