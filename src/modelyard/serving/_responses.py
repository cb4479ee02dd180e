"""OpenAI's Responses API (``POST /v1/responses``), for the subset that is a chat completion.

A request's ``instructions`` and ``input`` (a text, or message items whose content
is text) become chat messages, rendered with the version's template as the chat
route renders them, and go through the same data plane (``DataPlane.enter``: key,
limits, routing, records under the route ``responses``). The answer is a Responses
object, whole or as the Responses API's typed server-sent events
(``ResponseEvents``, written by ``_sse.event_stream``). Whatever does not map to
a chat completion (tools, ``previous_response_id``, reasoning, structured
``text.format``, image and file inputs, ...) is refused with a 400 naming it.
This server keeps no conversation state: ``store`` is accepted, nothing can be
retrieved later, and the answer says ``store: false``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.errors import ConfigError, ModelyardError
from modelyard.serving._auth import KeyDep
from modelyard.serving._http_errors import param_of
from modelyard.serving._plane import DataPlane, Submitted
from modelyard.serving._request_id import name_request
from modelyard.serving._sse import event_stream, wait_all
from modelyard.serving._types import (
    MIN_TEMPERATURE,
    ContextLengthExceeded,
    Generation,
    Guide,
    SamplingParams,
    TokenLogprob,
    naming_prompt,
)
from modelyard.serving._wire_fields import Metadata, ServiceTier, Text
from modelyard.store import ModelVersion

ROUTE = "responses"  # the inference records' route
_ROLES = ("user", "system", "developer", "assistant")
_PART_FIELDS = {"type", "text", "annotations", "logprobs"}
_ITEM_FIELDS = {"type", "role", "content", "id", "status", "phase"}
_MEDIA = {
    "input_image": "image inputs",
    "input_file": "file inputs",
    "input_audio": "audio inputs",
}


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


class InputMessage(BaseModel):
    """A message item of ``input`` (with or without ``"type": "message"``); the ``id`` and
    ``status`` of an earlier answer's output item, sent back, are accepted."""

    model_config = ConfigDict(extra="ignore")  # checked below, with a message naming it
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Text | list[InputPart]
    id: Text | None = None
    status: Text | None = None
    phase: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _message_only(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(
                'an input item is a message: {"role": "user", "content": "..."}; send a text '
                "or a list of messages"
            )
        kind = value.get("type", "message")
        if kind != "message":
            raise ValueError(
                f"input items of type {kind!r} are not supported by this server (it answers "
                "messages whose content is text: no tool calls, tool outputs, reasoning or "
                "item references)"
            )
        if value.get("role") not in _ROLES:
            raise ValueError(
                f"role {value.get('role')!r} is not supported: use one of {', '.join(_ROLES)}"
            )
        unknown = sorted(set(value) - _ITEM_FIELDS)
        if unknown:
            raise _field_error("a message item", unknown[0])
        content = value.get("content")
        if not isinstance(content, str | list):
            raise ValueError("content is a text, or a list of input_text parts")
        if isinstance(content, list) and not content:
            raise ValueError("content is an empty list; send at least one input_text part")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class TextFormat(BaseModel):
    """``text.format``: ``text``, ``json_object``, or ``json_schema`` (flat: ``name``,
    ``schema``, ``strict``, ``description``), as structured outputs on the chat route."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: Text | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: Text | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> TextFormat:
        if (self.type == "json_schema") != (self.schema_ is not None and self.name is not None):
            raise ValueError(
                "send name and schema with type json_schema (and only then): "
                '{"type": "json_schema", "name": ..., "schema": {...}}'
            )
        return self

    def guide(self) -> Guide | None:
        if self.type == "json_object":
            return Guide("json_object", param="text.format")
        if self.schema_ is not None:
            return Guide("json_schema", json.dumps(self.schema_), param="text.format.schema")
        return None

    def echoed(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextOptions(BaseModel):
    """``text``: the answer's format (``format``)."""

    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: Any = None

    @field_validator("verbosity")
    @classmethod
    def _verbosity(cls, value: Any) -> Any:
        if value not in (None, "medium"):
            raise ValueError("text.verbosity is not supported by this server yet; remove it")
        return value


class ResponseStreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is a 400, as on chat
    include_obfuscation: bool | None = None  # obfuscation padding: none is sent, harmless


# Responses parameters that change the answer and that this server does not implement:
# refused unless sent at their no-op value
_NOT_SUPPORTED = (
    "tools",
    "tool_choice",
    "previous_response_id",
    "conversation",
    "reasoning",
    "include",
    "prompt",
    "background",
    "max_tool_calls",
    "top_logprobs",
    "truncation",
    "context_management",
)
_NO_OP: dict[str, tuple[Any, ...]] = {
    "tool_choice": (None, "none", "auto"),
    "truncation": (None, "disabled"),
    "background": (None, False),
    "top_logprobs": (None, 0),
}


class ResponsesRequest(BaseModel):
    """The body of ``POST /v1/responses``: what maps to a chat completion, what is accepted
    as harmless (``user``, ``metadata``, ``store``, ...), and what is refused."""

    model_config = ConfigDict(extra="forbid")
    model: Text = Field(min_length=1, max_length=256)
    input: Text | list[InputMessage]
    instructions: Text | None = None
    # strict: "5" or true for a number (or "yes" for a bool) is a 400, as OpenAI answers
    max_output_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, allow_inf_nan=False, strict=True
    )
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False, strict=True)
    stream: bool | None = Field(default=False, strict=True)
    stream_options: ResponseStreamOptions | None = None
    user: Text | None = None
    text: TextOptions | None = None
    # harmless: they do not change the answer (``store``: nothing is kept; see the module)
    metadata: Metadata | None = None
    store: bool | None = None
    service_tier: ServiceTier | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: Text | None = None
    prompt_cache_retention: Text | None = None
    safety_identifier: Text | None = None
    # not supported (see _NOT_SUPPORTED)
    tools: Any = None
    tool_choice: Any = None
    previous_response_id: Any = None
    conversation: Any = None
    reasoning: Any = None
    include: Any = None
    prompt: Any = None
    background: Any = None
    max_tool_calls: Any = None
    top_logprobs: Any = None
    truncation: Any = None
    context_management: Any = None

    @field_validator(*_NOT_SUPPORTED)
    @classmethod
    def _not_supported(cls, value: Any, info: Any) -> Any:
        name = info.field_name
        neutral = value in _NO_OP.get(name, (None,)) or value in ([], {})
        if neutral:
            return value
        if name in ("previous_response_id", "conversation"):
            raise ValueError(
                f"{name} is not supported: this server keeps no conversation state; send the "
                "whole conversation in input"
            )
        raise ValueError(f"{name} is not supported by this server yet; remove it from the request")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature {value:g} is too small to sample with: send 0 (greedy) or a "
                f"value from {MIN_TEMPERATURE:g} to 2"
            )
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if not isinstance(value, str | list):
            raise ValueError("input is a text, or a list of message items")
        if isinstance(value, list) and not value:
            raise ValueError("input is an empty list; send at least one message")
        return value

    @field_validator("input")
    @classmethod
    def _a_user_message(cls, value: str | list[InputMessage]) -> str | list[InputMessage]:
        if isinstance(value, list) and not any(m.role == "user" for m in value):
            raise ValueError("input must contain at least one message with role 'user'")
        return value

    def messages(self) -> list[dict[str, str]]:
        """The chat messages: ``instructions`` as a system message first, then ``input``."""
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*system, {"role": "user", "content": self.input}]
        return [*system, *({"role": m.role, "content": m.text} for m in self.input)]

    def sampling(self, cap: int) -> SamplingParams:
        wanted = self.max_output_tokens or min(64, cap)
        if wanted > cap:
            raise ConfigError(
                f"max_output_tokens is {wanted}, above this server's limit of {cap} "
                "(max_tokens cap, --max-tokens-cap)",
                hint=f"Ask for at most {cap} tokens.",
                param="max_output_tokens",
            )
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        guide = self.guide()
        if guide is not None:
            from modelyard.serving._grammar import grammar_of  # xgrammar: only when asked

            grammar_of(guide)  # a schema the library cannot compile: 400 naming it
        return SamplingParams(
            max_tokens=wanted,
            temperature=temperature,
            top_p=top_p,
            guide=guide,
            max_tokens_defaulted=not self.max_output_tokens,
        )

    def guide(self) -> Guide | None:
        """What the answer is constrained to (``text.format``)."""
        if self.text is None or self.text.format is None:
            return None
        return self.text.format.guide()


def response_usage(gen: Generation) -> dict[str, Any]:
    """A Responses ``usage``: real token counts (no prompt cache, no reasoning tokens)."""
    return {
        "input_tokens": gen.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": gen.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


class ResponseObject:
    """The Responses object of one request, at each stage of its life."""

    def __init__(self, sub: Submitted, body: ResponsesRequest, params: SamplingParams) -> None:
        self.id = sub.record_id
        self.item_id = "msg_" + sub.record_id.removeprefix("cmpl-")
        self.created_at = int(time.time())
        self.body, self.params = body, params

    def format(self) -> dict[str, Any]:
        """The request's ``text.format``, echoed as the API does."""
        chosen = self.body.text.format if self.body.text is not None else None
        return chosen.echoed() if chosen is not None else {"type": "text"}

    def message(self, text: str | None, status: str) -> dict[str, Any]:
        """The output message item (``text`` None: no content part yet)."""
        content = [] if text is None else [self.part(text)]
        return {
            "type": "message",
            "id": self.item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def dump(
        self,
        status: str,
        gen: Generation | None = None,
        error: dict[str, Any] | None = None,
        output: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The object with ``status``; with ``gen``, its answer and usage."""
        incomplete = gen is not None and gen.finish_reason == "length"
        if gen is not None:
            status = "incomplete" if incomplete else "completed"
            output = [self.message(gen.text, status)]
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,  # as sent (OpenAI's echo)
            "model": body.model,
            "output": output or [],
            "parallel_tool_calls": False,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,  # nothing is kept: it cannot be retrieved or continued
            "temperature": self.params.temperature,
            "text": {"format": self.format()},
            "tool_choice": "none",
            "tools": [],
            "top_p": self.params.top_p,
            "truncation": "disabled",
            "usage": response_usage(gen) if gen is not None else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }


class ResponseEvents:
    """The Responses API's server-sent events for one request (an ``_sse.Formatter``):
    ``response.created``, ``response.in_progress``, the output item and its text part
    opening, ``response.output_text.delta`` per piece, their closing events, then
    ``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it).
    A failure mid-stream is an ``error`` event, then ``response.failed``."""

    def __init__(self, sub: Submitted, body: ResponsesRequest, params: SamplingParams) -> None:
        self.response = ResponseObject(sub, body, params)
        self.sequence = 0
        self.sent: list[str] = []

    def rebound(self, sub: Submitted) -> ResponseEvents:
        return self  # the same record id: nothing in the events names the version

    def _event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.response.item_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[str]:
        r = self.response
        return [
            self._event("response.created", response=r.dump("in_progress")),
            self._event("response.in_progress", response=r.dump("in_progress")),
            self._event(
                "response.output_item.added", output_index=0, item=r.message(None, "in_progress")
            ),
            self._event("response.content_part.added", **self._at(), part=r.part("")),
        ]

    def text(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> str:
        self.sent.append(text)
        return self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])

    def closing(self, gen: Generation) -> list[str]:
        r = self.response
        done = r.dump("completed", gen)
        item = done["output"][0]
        ending = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        return [
            self._event("response.output_text.done", **self._at(), text=gen.text, logprobs=[]),
            self._event("response.content_part.done", **self._at(), part=r.part(gen.text)),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event(ending, response=done),
        ]

    def error(self, exc: ModelyardError) -> str:
        """An ``error`` event with this server's error code (``timeout``, ``engine_error``,
        ...), then ``response.failed`` holding what was generated until then."""
        message = exc.one_line()
        failed = {"code": "server_error", "message": message}  # ResponseError's codes
        partial = "".join(self.sent)
        output = [self.response.message(partial, "incomplete")]
        return self._event(
            "error", code=exc.code, message=message, param=param_of(exc)
        ) + self._event(
            "response.failed", response=self.response.dump("failed", error=failed, output=output)
        )


def _on_input(exc: ConfigError) -> ConfigError:
    """A prompt refusal of the data plane, naming this route's parameters (``input``,
    ``max_output_tokens``)."""
    if isinstance(exc, ContextLengthExceeded) and param_of(exc) == "max_tokens":
        message = exc.message.replace("max_tokens", "max_output_tokens")
        hint = exc.hint.replace("max_tokens", "max_output_tokens")
        return ContextLengthExceeded(message, hint=hint, param="max_output_tokens")
    return naming_prompt(exc, "input")


def add_response_routes(app: FastAPI, plane: DataPlane) -> None:
    """``POST /v1/responses``, served by ``plane``."""

    @app.post("/v1/responses", response_model=None)
    async def responses(
        body: ResponsesRequest, key: KeyDep, response: Response, request: Request
    ) -> dict[str, Any] | StreamingResponse:
        """A model response (OpenAI's Responses API) for text input: a chat completion,
        whole or streamed as typed events. Tools, ``previous_response_id``, reasoning,
        structured ``text.format`` and image or file inputs are refused (400)."""
        messages = body.messages()
        params = body.sampling(plane.limits.max_tokens)

        def render(v: ModelVersion) -> str:
            return plane.engine.render_chat(v, messages)

        try:
            sub = await plane.enter(key, ROUTE, body.model, body.user, params, render,
                                    whole=not body.stream)  # fmt: skip
            if body.stream:
                return await event_stream(plane, sub, ResponseEvents(sub, body, params))
            name_request(request, sub.record_id)  # a failure from here names its record
            [(sub, gen)] = await wait_all(plane, [sub], request.receive)
        except ConfigError as exc:
            renamed = _on_input(exc)
            if renamed is exc:
                raise
            raise renamed from exc
        response.headers["x-modelyard-version"] = sub.version.ref
        response.headers["x-request-id"] = sub.record_id  # the SDKs' _request_id
        return ResponseObject(sub, body, params).dump("completed", gen)


__all__ = ["ResponseEvents", "ResponseObject", "ResponsesRequest", "add_response_routes"]
