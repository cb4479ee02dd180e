"""OpenAI's Responses API (``POST /v1/responses``), for the subset that is a chat completion.

A request's ``instructions`` and ``input`` (a text, or items: messages whose content
is text, function calls and their outputs, ``_responses_input``) become chat
messages, rendered with the version's template as the chat route renders them, and
go through the same data plane (``DataPlane.enter``: key, limits, routing, records
under the route ``responses``). Function ``tools`` and ``tool_choice`` are the chat
route's (``_responses_tools``): the answer's calls are ``function_call`` output
items. The answer is a Responses object, whole or as the Responses API's typed
server-sent events (``ResponseEvents``, written by ``_sse.event_stream``).
Whatever does not map to a chat completion (built-in tools,
``previous_response_id``, reasoning, image and file inputs, ...) is refused with
a 400 naming it.
This server keeps no conversation state: ``store`` is accepted, nothing can be
retrieved later, and the answer says ``store: false``.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelyard.errors import ConfigError, ModelyardError
from modelyard.serving._auth import KeyDep
from modelyard.serving._http_errors import param_of, public_message
from modelyard.serving._plane import DataPlane, Submitted
from modelyard.serving._request_id import name_request
from modelyard.serving._responses_input import InputItem, conversation
from modelyard.serving._responses_tools import (
    MAX_TOOLS,
    FunctionChoice,
    FunctionTool,
    ToolChoice,
    answer_items,
    checked_choice,
    checked_tools,
    echoed_choice,
)
from modelyard.serving._sse import event_stream, wait_all
from modelyard.serving._tools import call_guide, streamable
from modelyard.serving._types import (
    MIN_TEMPERATURE,
    Generation,
    Guide,
    SamplingParams,
    TokenLogprob,
    naming_cap,
    naming_prompt,
)
from modelyard.serving._wire_fields import (
    JsonObject,
    Metadata,
    PromptCacheRetention,
    ServiceTier,
    Text,
)
from modelyard.store import ModelVersion

ROUTE = "responses"  # the inference records' route


class TextFormat(BaseModel):
    """``text.format``: ``text``, ``json_object``, or ``json_schema`` (flat: ``name``,
    ``schema``, ``strict``, ``description``), as structured outputs on the chat route."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: Text | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: JsonObject | None = Field(default=None, alias="schema")
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
    "truncation": (None, "disabled"),
    "background": (None, False),
    "top_logprobs": (None, 0),
}


class ResponsesRequest(BaseModel):
    """The body of ``POST /v1/responses``: what maps to a chat completion, what is accepted
    as harmless (``user``, ``metadata``, ``store``, ...), and what is refused."""

    model_config = ConfigDict(extra="forbid")
    model: Text = Field(min_length=1, max_length=256)
    input: Text | list[InputItem]
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
    prompt_cache_key: Text | None = None
    prompt_cache_retention: PromptCacheRetention | None = None
    safety_identifier: Text | None = None
    # function tools (``_responses_tools``); parallel_tool_calls false: at most one call
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # not supported (see _NOT_SUPPORTED)
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

    @field_validator("tools")
    @classmethod
    def _distinct_names(cls, value: list[FunctionTool] | None) -> list[FunctionTool] | None:
        checked_tools(value, None)
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _known_choice(cls, value: Any) -> Any:
        return checked_choice(value)

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: ToolChoice | None, info: ValidationInfo) -> Any:
        if "tools" in info.data:  # else the tools' own error says why
            checked_tools(info.data["tools"], value)
        return value

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
    def _a_user_message(cls, value: str | list[InputItem]) -> str | list[InputItem]:
        if isinstance(value, list) and not any(m.role == "user" for m in value):
            raise ValueError("input must contain at least one message with role 'user'")
        return value

    def messages(self) -> list[dict[str, Any]]:
        """The chat messages: ``instructions`` as a system message first, then ``input``."""
        return conversation(self.instructions, self.input)

    def offered_tools(self) -> list[dict[str, Any]]:
        """The functions offered to the model (none with ``tool_choice: none``)."""
        if self.tool_choice == "none":
            return []
        return [t.offered() for t in self.tools or []]

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
            tool_names=tuple(t["name"] for t in self.offered_tools()),
            max_tokens_defaulted=not self.max_output_tokens,
        )

    def guide(self) -> Guide | None:
        """What the answer is constrained to: a required call (``tool_choice`` ``required``
        or a named function), else ``text.format``."""
        choice = self.tool_choice
        if choice == "required":
            return call_guide(self.offered_tools())
        if isinstance(choice, FunctionChoice):
            return call_guide(self.offered_tools(), only=choice.name)
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
        self.tools = body.offered_tools()
        self.answered: tuple[str | None, list[dict[str, Any]]] | None = None

    def answer(self, gen: Generation) -> tuple[str | None, list[dict[str, Any]]]:
        """The answer's text (None: only calls) and its ``function_call`` items, read once
        (the calls' ids are made then)."""
        if self.answered is None:
            single = self.body.parallel_tool_calls is False  # at most one call, as OpenAI's
            self.answered = answer_items(gen.text, self.tools, single)
        return self.answered

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
        """The object with ``status``; with ``gen``, its answer (a message item with the
        text, when there is text or no call, then a ``function_call`` item per call) and
        its usage."""
        incomplete = gen is not None and gen.finish_reason == "length"
        if gen is not None:
            status = "incomplete" if incomplete else "completed"
            text, calls = self.answer(gen)
            output = [self.message(text or "", status)] if text is not None or not calls else []
            output += calls
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
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,  # nothing is kept: it cannot be retrieved or continued
            "temperature": self.params.temperature,
            "text": {"format": self.format()},
            "tool_choice": echoed_choice(body.tool_choice),
            "tools": [t.echoed() for t in body.tools or []],
            "top_p": self.params.top_p,
            "truncation": "disabled",
            "usage": response_usage(gen) if gen is not None else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }


class ResponseEvents:
    """The Responses API's server-sent events for one request (an ``_sse.Formatter``):
    ``response.created``, ``response.in_progress``, the message item and its text part
    opening, ``response.output_text.delta`` per piece, their closing events, then
    ``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it).
    With tools offered, the message opens with its first text, text streams until a call
    may begin (as on the chat route), and each call the answer makes is a
    ``function_call`` item at the end: ``response.output_item.added``, its arguments
    (``response.function_call_arguments.delta``, whole, and ``.done``) and
    ``response.output_item.done``. A failure mid-stream is an ``error`` event, then
    ``response.failed``."""

    def __init__(self, sub: Submitted, body: ResponsesRequest, params: SamplingParams) -> None:
        self.response = ResponseObject(sub, body, params)
        self.sequence = 0
        self.sent: list[str] = []  # the text sent, piece by piece
        self.written = ""  # the answer so far (with tools, some of it held back)
        self.opened = False  # the message item is open (output_index 0)

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
            *([] if r.tools else self._open()),
        ]

    def _open(self) -> list[str]:
        """The message item and its text part, opening."""
        self.opened = True
        r = self.response
        return [
            self._event(
                "response.output_item.added", output_index=0, item=r.message(None, "in_progress")
            ),
            self._event("response.content_part.added", **self._at(), part=r.part("")),
        ]

    def text(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> str:
        if self.response.tools:  # held back from where a call may begin
            self.written += text
            sent = sum(map(len, self.sent))
            text = self.written[sent : streamable(self.written)]
            if not text:
                return ""
        opening = "" if self.opened else "".join(self._open())
        self.sent.append(text)
        return opening + self._event(
            "response.output_text.delta", **self._at(), delta=text, logprobs=[]
        )

    def closing(self, gen: Generation) -> list[str]:
        r = self.response
        content, calls = r.answer(gen)
        events = []
        if r.tools:  # the text after what was sent (the deltas make the message's text)
            sent = "".join(self.sent)
            rest = (content or "")[len(sent) :] if (content or "").startswith(sent) else ""
            if not self.opened and (rest or not calls):  # a message: text, or no call
                events += self._open()
            if rest:
                self.sent.append(rest)
                events.append(
                    self._event("response.output_text.delta", **self._at(), delta=rest, logprobs=[])
                )
            content = sent + rest if self.opened else None
            r.answered = (content, calls)
        done = r.dump("completed", gen)
        if self.opened:
            text = content or ""
            events += [
                self._event("response.output_text.done", **self._at(), text=text, logprobs=[]),
                self._event("response.content_part.done", **self._at(), part=r.part(text)),
                self._event("response.output_item.done", output_index=0, item=done["output"][0]),
            ]
        first = 1 if self.opened else 0  # the calls' output_index: after the message
        for i, item in enumerate(done["output"][first:], first):
            events += self._call(i, item)
        ending = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        return [*events, self._event(ending, response=done)]

    def _call(self, i: int, item: dict[str, Any]) -> list[str]:
        """The events of one ``function_call`` item, ``output_index`` ``i``."""
        at = {"item_id": item["id"], "output_index": i}
        return [
            self._event(
                "response.output_item.added",
                output_index=i,
                item={**item, "arguments": "", "status": "in_progress"},
            ),
            self._event("response.function_call_arguments.delta", **at, delta=item["arguments"]),
            self._event(
                "response.function_call_arguments.done",
                **at,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=i, item=item),
        ]

    def error(self, exc: ModelyardError) -> str:
        """An ``error`` event with this server's error code (``timeout``, ``engine_error``,
        ...), then ``response.failed`` holding what was generated until then."""
        message = public_message(exc)
        failed = {"code": "server_error", "message": message}  # ResponseError's codes
        partial = "".join(self.sent)
        output = [self.response.message(partial, "incomplete")] if self.opened else []
        return self._event(
            "error", code=exc.code, message=message, param=param_of(exc)
        ) + self._event(
            "response.failed", response=self.response.dump("failed", error=failed, output=output)
        )


def _on_input(exc: ConfigError) -> ConfigError:
    """A prompt refusal of the data plane, naming this route's parameters (``input``,
    ``max_output_tokens``)."""
    renamed = naming_cap(exc, "max_output_tokens")
    return renamed if renamed is not exc else naming_prompt(exc, "input")


def add_response_routes(app: FastAPI, plane: DataPlane) -> None:
    """``POST /v1/responses``, served by ``plane``."""

    @app.post("/v1/responses", response_model=None)
    async def responses(
        body: ResponsesRequest, key: KeyDep, response: Response, request: Request
    ) -> dict[str, Any] | StreamingResponse:
        """A model response (OpenAI's Responses API) for text input: a chat completion,
        whole or streamed as typed events, with function tools (``function_call`` items
        out, ``function_call_output`` items back in). Built-in tools,
        ``previous_response_id``, reasoning and image or file inputs are refused (400)."""
        messages = body.messages()
        tools = body.offered_tools()
        params = body.sampling(plane.limits.max_tokens)

        def render(v: ModelVersion) -> str:
            return plane.engine.render_chat(v, messages, tools)

        try:
            sub = await plane.enter(key, ROUTE, body.model, body.user, params, render,
                                    whole=not body.stream,
                                    named=functools.partial(name_request, request))  # fmt: skip
            name_request(request, sub.record_id)  # a failure from here names its record
            if body.stream:
                return await event_stream(plane, sub, ResponseEvents(sub, body, params))
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
