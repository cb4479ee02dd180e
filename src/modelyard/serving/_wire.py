"""The OpenAI wire format: request bodies (pydantic) and the ``usage`` of a response."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelyard.errors import ConfigError
from modelyard.serving._sampling_wire import SamplingExtensions
from modelyard.serving._tools import (
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDef,
    call_guide,
    checked_choice,
)
from modelyard.serving._types import (
    BIAS_RANGE,
    MAX_LOGIT_BIAS,
    MAX_TOP_LOGPROBS,
    MIN_TEMPERATURE,
    PENALTY_RANGE,
    SEED_RANGE,
    Guide,
    SamplingParams,
)
from modelyard.serving._wire_fields import (
    Metadata,
    PromptCacheRetention,
    ServiceTier,
    Text,
)
from modelyard.serving._wire_format import JsonSchemaFormat, ResponseFormat

MAX_STOP = 4  # stop strings, as OpenAI allows
MAX_PROMPTS = 16  # prompts in one legacy completion request
MAX_N = 8  # choices of one prompt
MAX_STOP_CHARS = 256  # per stop string: each is searched in the answer at every token
MAX_TOOLS = 128  # functions offered in one request, as OpenAI allows


class TextPart(BaseModel):
    """A content part; only text is read by this server (images, audio: a 400)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError('a content part is an object: {"type": "text", "text": "..."}')
        kind = value.get("type")
        if isinstance(kind, str) and kind != "text":
            raise ValueError(
                f"content parts of type {kind!r} are not supported by this server: it reads "
                'text only ({"type": "text", "text": "..."})'
            )
        return value


# What an SDK's own answer holds besides content (a message sent back as it came): no effect
_ANSWER_FIELDS = frozenset({"refusal", "annotations", "reasoning_content", "reasoning"})
_NULL_ONLY = ("audio", "function_call")  # accepted when null (the SDK's model_dump)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # only _ANSWER_FIELDS get past _known_fields
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: Text | None = None  # a tool turn: the call it answers

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        """A field this server would not read (a typo, an image URL beside the content) is a
        400 naming it, never dropped."""
        if not isinstance(value, dict):
            return value
        for name in value:
            if name in cls.model_fields or name in _ANSWER_FIELDS:
                continue
            if name in _NULL_ONLY and value[name] is None:
                continue
            raise ValueError(
                f"{name!r} is not a message field this server reads (a message has role, "
                "content, name, tool_calls, tool_call_id); remove it"
            )
        return value

    @field_validator("content")
    @classmethod
    def _parts_or_text(cls, content: str | list[TextPart] | None) -> Any:
        if isinstance(content, list) and not content:
            raise ValueError("content is an empty list; send a string, or at least one text part")
        return content

    @model_validator(mode="after")
    def _content_or_calls(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError("a message needs a content (or, from the assistant, tool_calls)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def rendered(self, i: int) -> dict[str, Any]:
        """The message as prompt templates take it (``name`` as vLLM passes it: a template
        that knows participants' names renders it; an upstream is sent it)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [
                c.rendered(f"messages.{i}.tool_calls.{j}") for j, c in enumerate(self.tool_calls)
            ]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt include_usage is a 400
    include_usage: bool = Field(default=False, strict=True)
    include_obfuscation: bool | None = None  # obfuscation padding: none is sent, harmless


def _neutral(value: Any) -> bool:
    """Whether an OpenAI parameter this server does not implement is sent at its no-op value."""
    return value is None or value is False or value == 0 or value in ({}, [], "", "none", "auto")


# OpenAI parameters that change the answer and are not implemented yet: refused unless
# sent at their no-op value (what SDKs and frameworks send by default)
_NOT_YET = (
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "best_of",
    "suffix",
)


class CommonRequest(SamplingExtensions):
    """The body of a completion request: what is implemented (vLLM's sampling extensions
    too: ``SamplingExtensions``), what is accepted as harmless (``user``, ``metadata``,
    ``store``, ...), and what is refused (``_NOT_YET``, unknown names)."""

    model_config = ConfigDict(extra="forbid")
    model: Text = Field(min_length=1, max_length=256)
    # strict: "5", 5.0 or true for a number (or "yes" for a bool) is a 400, as OpenAI answers
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, allow_inf_nan=False, strict=True
    )
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False, strict=True)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1], strict=True)
    stop: Text | list[Text] | None = None
    n: int | None = Field(default=None, strict=True)
    user: Text | None = None
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    # harmless: they do not change the answer
    metadata: Metadata | None = None
    store: bool | None = None
    service_tier: ServiceTier | None = None
    # structured outputs (constrained decoding, ``_grammar``)
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: Text | None = None
    prompt_cache_retention: PromptCacheRetention | None = None
    safety_identifier: Text | None = None
    # logit shaping: OpenAI's penalties on the answer's tokens, and a bias per token id
    presence_penalty: float | None = Field(
        default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1], allow_inf_nan=False, strict=True
    )
    frequency_penalty: float | None = Field(
        default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1], allow_inf_nan=False, strict=True
    )
    logit_bias: dict[str, float] | None = None
    # not implemented yet (see _NOT_YET)
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    best_of: Any = None
    suffix: Any = None
    # legacy completions only (``CompletionRequest``); elsewhere refused
    echo: Any = None

    @field_validator(*_NOT_YET)
    @classmethod
    def _not_yet(cls, value: Any, info: Any) -> Any:
        name = info.field_name
        neutral = _neutral(value)
        if name == "modalities":
            neutral = value is None or value == ["text"]
        elif name == "best_of":
            neutral = value is None or value == 1
        elif name == "web_search_options":
            neutral = value is None  # {}: search the web with the default options
        if not neutral:
            raise ValueError(
                f"{name} is not supported by this server yet; remove it from the request"
            )
        return value

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError('must be an object of token ids to biases, e.g. {"50256": -100}')
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"biases {len(value)} tokens; send at most {MAX_LOGIT_BIAS}")
        for key, bias in value.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit()):
                raise ValueError(
                    f"key {key!r} is not a token id: keys are the ids of the model's "
                    'tokenizer as strings, e.g. {"50256": -100}'
                )
            ok = isinstance(bias, int | float) and not isinstance(bias, bool)
            if not ok or not math.isfinite(bias) or not BIAS_RANGE[0] <= bias <= BIAS_RANGE[1]:
                raise ValueError(
                    f"the bias of token {key} is {bias!r}; a bias is a number from "
                    f"{BIAS_RANGE[0]:g} to {BIAS_RANGE[1]:g}"
                )
        return value

    @field_validator("echo")
    @classmethod
    def _echo_elsewhere(cls, value: Any, info: ValidationInfo) -> Any:
        if not _neutral(value):
            raise ValueError("echo is for /v1/completions; remove it from this request")
        return value

    def shaping(self) -> dict[str, Any]:
        """The penalties and the logit bias as ``SamplingParams`` takes them."""
        return {
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "logit_bias": tuple(
                sorted((int(k), float(b)) for k, b in (self.logit_bias or {}).items())
            ),
        }

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_token_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        """Both caps at once: the same number is one cap; two numbers, a 400 naming both
        (OpenAI refuses both together; vLLM silently takes ``max_completion_tokens``)."""
        other = info.data.get("max_tokens")
        if value is not None and other is not None and value != other:
            raise ValueError(
                f"max_tokens ({other}) and max_completion_tokens ({value}) disagree; send one "
                "of them (max_completion_tokens is OpenAI's current name for max_tokens)"
            )
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

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_N:
            raise ValueError(f"n is {value}; ask for 1 to {MAX_N} choices")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: Any) -> Any:
        if value is not None and not info.data.get("stream"):
            # as OpenAI and vLLM answer: usage is in every answer that is not streamed
            raise ValueError("is only allowed with stream: true; remove it, or stream")
        return value

    @property
    def choices(self) -> int:
        """How many choices the answer has (``n`` per prompt)."""
        return self.n or 1

    def choice_params(self, cap: int) -> list[SamplingParams]:
        """The sampling of each of the ``n`` choices: with a ``seed``, choice ``i`` samples
        with ``seed + i`` (the same seed gives the same choices, not n copies of one)."""
        params, n = self.sampling(cap), self.n or 1
        if params.seed is None:
            return [params] * n
        seed, top = params.seed, SEED_RANGE[1]
        return [
            dataclasses.replace(params, seed=seed + i if seed + i <= top else seed - i)
            for i in range(n)
        ]

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"{len(stops)} stop strings; send at most {MAX_STOP}")
        for stop in stops:
            if not stop:  # it would end every answer before its first token, or do nothing
                raise ValueError(
                    "a stop string is empty; send stop strings of at least one character (or "
                    "no stop), as vLLM takes them"
                )
            if len(stop) > MAX_STOP_CHARS:
                raise ValueError(
                    f"a stop string of {len(stop)} characters; each may have at most "
                    f"{MAX_STOP_CHARS}"
                )
        return value

    def sampling(self, cap: int) -> SamplingParams:
        default = min(max(64, self.min_tokens or 0), cap)  # room for min_tokens when it fits
        wanted = self.max_completion_tokens or self.max_tokens or default
        if wanted > cap:
            field_name = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
            raise ConfigError(
                f"{field_name} is {wanted}, above this server's limit of {cap} "
                "(max_tokens cap, --max-tokens-cap)",
                hint=f"Ask for at most {cap} tokens.",
                param=field_name,
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        guide = self.guide()
        if guide is not None:
            from modelyard.serving._grammar import grammar_of  # xgrammar: only when asked

            grammar_of(guide)  # a schema the library cannot compile: 400 naming it
        return SamplingParams(
            wanted,
            temperature,
            top_p,
            self.seed,
            stop,
            guide,
            self.wanted_logprobs(),
            tuple(t["name"] for t in self.offered_tools()),
            **self.shaping(),
            **self.extensions(),
            echo=self.echo is True,
            max_tokens_defaulted=not (self.max_completion_tokens or self.max_tokens),
        )

    def offered_tools(self) -> list[dict[str, Any]]:
        """The functions offered to the model (chat: ``tools``)."""
        return []

    def guide(self) -> Guide | None:
        """What the answer is constrained to (``response_format``)."""
        return self.response_format.guide() if self.response_format is not None else None

    def wanted_logprobs(self) -> int | None:
        """How many alternatives per token the client asked for, None: no logprobs."""
        return None


class ChatCompletionRequest(CommonRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(default=None, strict=True)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, strict=True)
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("tools")
    @classmethod
    def _distinct_names(cls, value: list[ToolDef] | None) -> list[ToolDef] | None:
        names = [t.function.name for t in value or []]
        if len(set(names)) != len(names):
            raise ValueError("two functions have the same name")
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _known_choice(cls, value: Any) -> Any:
        return checked_choice(value)

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: ToolChoice | None, info: ValidationInfo) -> Any:
        names = [t.function.name for t in info.data.get("tools") or []]
        if value not in (None, "none", "auto") and not names:
            raise ValueError("it asks for a tool call, and no tools are offered")
        if isinstance(value, NamedToolChoice) and value.function.name not in names:
            raise ValueError(
                f"it names the function {value.function.name!r}, which is not among the tools "
                f"offered ({', '.join(names)})"
            )
        return value

    def offered_tools(self) -> list[dict[str, Any]]:
        """The functions offered to the model (none with ``tool_choice: none``)."""
        if self.tool_choice == "none":
            return []
        return [t.function.offered() for t in self.tools or []]

    def rendered_messages(self) -> list[dict[str, Any]]:
        """The messages as templates take them; a tool result answering no call an earlier
        assistant message made is a 400 naming its ``tool_call_id``, as OpenAI (and this
        server's Responses API) refuse it."""
        called: set[str] = set()
        for i, m in enumerate(self.messages):
            called.update(c.id for c in m.tool_calls or [])
            if m.role == "tool" and m.tool_call_id not in called:
                raise ConfigError(
                    f"messages.{i}: the tool message's tool_call_id {m.tool_call_id!r} answers "
                    "no call of an earlier assistant message",
                    hint="Send the assistant message with its tool_calls (as the answer gave "
                    "them) before the tool messages that answer them.",
                    param=f"messages.{i}.tool_call_id",
                )
        try:
            return [m.rendered(i) for i, m in enumerate(self.messages)]
        except ValueError as exc:
            raise ConfigError(str(exc), param=str(exc).split(":")[0]) from None

    def guide(self) -> Guide | None:
        """A required call (``tool_choice`` ``required`` or a named function) constrains the
        answer to it; else ``response_format`` does."""
        choice = self.tool_choice
        if choice == "required":
            return call_guide(self.offered_tools())
        if isinstance(choice, NamedToolChoice):
            return call_guide(self.offered_tools(), only=choice.function.name)
        return super().guide()

    def wanted_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(CommonRequest):
    """``prompt`` is a text, or a list of texts answered as one choice each (the legacy
    completions API; ``choices[i].index`` is the prompt's place)."""

    prompt: Text | list[Text] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, strict=True)
    echo: bool | None = Field(default=None, strict=True)  # the answer repeats the prompt

    @field_validator("echo")
    @classmethod
    def _echo_elsewhere(cls, value: Any, info: ValidationInfo) -> Any:
        return value  # this is its route (the name replaces CommonRequest's refusal)

    @field_validator("logprobs")
    @classmethod
    def _scored_echo_is_whole(cls, value: Any, info: ValidationInfo) -> Any:
        # after echo and stream in the field order, so both are known here
        if value is not None and info.data.get("echo") and info.data.get("stream"):
            raise ValueError(  # the prompt's scores come with the whole answer only
                "logprobs with echo is not supported with stream: true; ask without stream "
                "(the prompt's tokens scored, then the answer's) or without logprobs"
            )
        return value

    tools: Any = None
    tool_choice: Any = None

    @field_validator("tools", "tool_choice")
    @classmethod
    def _chat_only(cls, value: Any, info: Any) -> Any:
        if not _neutral(value):
            raise ValueError(f"{info.field_name} is for /v1/chat/completions, not completions")
        return value

    def wanted_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("the prompt list is empty; send at least one prompt")
            several = [value] if isinstance(value[0], int) else value
            if len(several) > MAX_PROMPTS:
                raise ValueError(f"{len(several)} prompts; send at most {MAX_PROMPTS} at once")
            for ids in several:
                if isinstance(ids, list) and (not ids or min(ids) < 0):
                    raise ValueError(
                        "a prompt of token ids must hold at least one id, none negative"
                    )
        return value

    @property
    def choices(self) -> int:
        return len(self.prompts) * (self.n or 1)

    @property
    def prompts(self) -> list[str | tuple[int, ...]]:
        """The prompts, each a text or the token ids of the version's tokenizer."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        out: list[str | tuple[int, ...]] = []
        ids: list[int] = []
        for p in value:
            if isinstance(p, int):  # one prompt of token ids
                ids.append(p)
            else:
                out.append(p if isinstance(p, str) else tuple(p))
        return [tuple(ids)] if ids else out


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a verdict on one answered request (by its ``id``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt comment or label is a 400
    request_id: Text = Field(min_length=1, max_length=64)
    score: float | None = Field(default=None, ge=-1.0, le=1.0, allow_inf_nan=False, strict=True)
    thumbs: Literal["up", "down"] | None = None
    comment: Text | None = Field(default=None, max_length=4000)
    label: Text | None = Field(default=None, min_length=1, max_length=500)  # the right answer

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackRequest:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("send exactly one of score (-1 to 1) or thumbs (up or down)")
        return self

    @property
    def value(self) -> float:
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else -1.0
        assert self.score is not None  # one of the two, checked above
        return self.score


def include_usage(body: CommonRequest) -> bool:
    """Whether a streamed answer ends with a ``usage`` chunk (``stream_options``)."""
    return body.stream_options is not None and body.stream_options.include_usage


__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CommonRequest",
    "CompletionRequest",
    "FeedbackRequest",
    "JsonSchemaFormat",
    "Metadata",
    "ResponseFormat",
    "ServiceTier",
    "StreamOptions",
    "include_usage",
]
