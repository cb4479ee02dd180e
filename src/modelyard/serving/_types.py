"""The values engines and the app exchange: sampling parameters, results, events, statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from modelyard.errors import ConfigError, ContextLengthExceeded, EngineError

FinishReason = Literal["stop", "length", "cancelled"]
MIN_TEMPERATURE = 0.01  # below it (and above 0), logits / temperature overflows float32
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes
AdapterEvent = Literal["hit", "miss", "load", "eviction", "load_failure"]


MAX_TOP_LOGPROBS = 20  # as OpenAI allows
PENALTY_RANGE = (-2.0, 2.0)  # presence_penalty and frequency_penalty, as OpenAI allows
BIAS_RANGE = (-100.0, 100.0)  # a logit_bias value, as OpenAI allows
MAX_LOGIT_BIAS = 1024  # tokens one request may bias
MAX_REPETITION_PENALTY = 2.0  # above 0, at most this (1: none)
GuideKind = Literal["json_object", "json_schema", "tool_call"]


def context_exceeded(prompt_tokens: int, max_tokens: int, context: int, ref: str) -> ConfigError:
    """The 400 for a prompt of ``prompt_tokens`` and ``max_tokens`` over ``context``, worded as
    OpenAI and vLLM word it ("This model's maximum context length is N tokens"). A prompt
    that alone leaves no room for an answer is named alone ("the prompt is too long", which
    LangChain reads as its ``ContextOverflowError``), not a ``max_tokens`` the client may
    never have sent."""
    fits = context - prompt_tokens  # the most max_tokens could be
    if fits < 1:
        return ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens and the prompt is too "
            f"long: its {prompt_tokens} tokens leave no room for an answer in the "
            f"{context}-token context of {ref}",
            hint="Shorten the prompt.",
            param="prompt",
        )
    return ContextLengthExceeded(
        f"This model's maximum context length is {context} tokens: the prompt has "
        f"{prompt_tokens} tokens and max_tokens is {max_tokens}, {prompt_tokens + max_tokens} "
        f"in all, more than the {context}-token context of {ref}",
        hint=f"Ask for at most {fits} max_tokens, or shorten the prompt.",
        param="max_tokens",
    )


def fit_to_context(
    params: SamplingParams, prompt_tokens: int, context: int | None, ref: str
) -> SamplingParams:
    """``params`` for a prompt of ``prompt_tokens`` in a ``context``-token model (None or 0:
    unknown): as they are when they fit; with a default ``max_tokens`` lowered to what the
    context leaves (at least ``min_tokens``, at least 1); else the 400 of
    ``context_exceeded``. A client that sent no ``max_tokens`` never gets a 400 asking for
    fewer of them."""
    if not context or prompt_tokens + params.max_tokens <= context:
        return params
    left = context - prompt_tokens
    if params.max_tokens_defaulted and left >= max(1, params.min_tokens):
        return replace(params, max_tokens=left)
    raise context_exceeded(prompt_tokens, params.max_tokens, context, ref)


def naming_cap(exc: ConfigError, param: str) -> ConfigError:
    """``exc``, a context refusal naming ``max_tokens``, naming the route's or the client's
    own name for the cap instead (``max_completion_tokens``, ``max_output_tokens``);
    ``exc`` itself otherwise."""
    if not isinstance(exc, ContextLengthExceeded) or exc.context.get("param") != "max_tokens":
        return exc
    message = exc.message.replace("max_tokens", param)
    return ContextLengthExceeded(message, hint=exc.hint.replace("max_tokens", param), param=param)


def naming_prompt(exc: ConfigError, param: str) -> ConfigError:
    """``exc`` naming the route's prompt parameter (``messages``, ``input``) where it names
    the prompt (``prompt`` or ``messages``, or a part of it such as ``messages.0.content``:
    the Responses API's ``input`` is not those messages one for one), as the same class;
    ``exc`` itself otherwise."""
    if type(exc) not in (ConfigError, ContextLengthExceeded):
        return exc
    named = exc.context.get("param")
    head = named.split(".")[0] if isinstance(named, str) else None
    if head not in ("prompt", "messages") or head == param:
        return exc
    return type(exc)(exc.message, hint=exc.hint, param=param)


class ClientGone(Exception):
    """The client closed its connection before its whole answer was ready: the answer's
    generation was stopped (recorded ``cancelled``) and nothing is sent."""


@dataclass(frozen=True)
class Guide:
    """What a constrained answer must be (structured outputs, required tool calls).

    ``json_object``: any JSON object. ``json_schema``: JSON valid under ``schema``
    (its canonical JSON text). ``tool_call``: ``<tool_call>\\n{json}\\n</tool_call>``
    where the JSON is valid under ``schema`` (one of the offered functions with its
    arguments). ``param`` names the request parameter that asked for it, for errors.
    """

    kind: GuideKind
    schema: str = ""
    param: str = "response_format"


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings; ``temperature`` 0 is greedy.

    ``guide`` constrains the answer (structured outputs); ``logprobs`` asks for each
    token's log probability and that many of the most likely alternatives (0 to 20);
    ``tool_names`` are the functions the prompt offers (the answer's calls are counted).
    ``presence_penalty`` and ``frequency_penalty`` lower (or raise, when negative) the
    logit of each token the answer has used so far, as OpenAI does: by the presence
    penalty once, plus the frequency penalty times its count. ``logit_bias`` adds a
    bias to chosen token ids' logits, (id, bias) pairs sorted by id. ``echo``: the
    answer repeats the prompt (legacy completions), with the prompt's tokens' log
    probabilities when ``logprobs`` is asked too.

    vLLM's sampling extensions: ``top_k`` keeps the k most likely tokens (0 or -1: no cut),
    ``min_p`` those at least that fraction as likely as the most likely (0: no cut),
    ``repetition_penalty`` divides the positive logits (multiplies the negative ones)
    of every token in the prompt or the answer (1: none), and ``min_tokens`` keeps the
    end of sequence (and stop strings) from ending the answer before that many tokens.
    """

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    guide: Guide | None = None
    logprobs: int | None = None
    tool_names: tuple[str, ...] = ()  # the functions offered (records count the calls)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    echo: bool = False  # the answer's text and logprobs begin with the prompt's
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    # max_tokens is the server's default, not the client's: an engine lowers it to what
    # the model's context leaves after the prompt, as OpenAI and vLLM do without max_tokens
    max_tokens_defaulted: bool = False

    def __post_init__(self) -> None:
        """Settings an engine cannot run are a client's mistake (400), never an engine error:
        a tiny positive temperature overflows the logits, torch takes 64-bit seeds."""
        checks = (
            ("max_tokens", self.max_tokens >= 1, "at least 1"),
            (
                "temperature",
                math.isfinite(self.temperature)
                and (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= 2),
                f"0 (greedy) or from {MIN_TEMPERATURE:g} to 2",
            ),
            ("top_p", math.isfinite(self.top_p) and 0 < self.top_p <= 1, "above 0, at most 1"),
            (
                "seed",
                self.seed is None or SEED_RANGE[0] <= self.seed <= SEED_RANGE[1],
                f"from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
            ),
            (
                "top_logprobs",
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"from 0 to {MAX_TOP_LOGPROBS}",
            ),
            *(
                (
                    name,
                    math.isfinite(value) and PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1],
                    f"from {PENALTY_RANGE[0]:g} to {PENALTY_RANGE[1]:g}",
                )
                for name, value in (
                    ("presence_penalty", self.presence_penalty),
                    ("frequency_penalty", self.frequency_penalty),
                )
            ),
            (
                "logit_bias",
                len(self.logit_bias) <= MAX_LOGIT_BIAS
                and all(
                    i >= 0 and math.isfinite(b) and BIAS_RANGE[0] <= b <= BIAS_RANGE[1]
                    for i, b in self.logit_bias
                ),
                f"at most {MAX_LOGIT_BIAS} token ids (0 or above), each with a bias from "
                f"{BIAS_RANGE[0]:g} to {BIAS_RANGE[1]:g}",
            ),
            ("top_k", self.top_k >= -1, "0 or -1 (no cut), or at least 1"),
            ("min_p", math.isfinite(self.min_p) and 0 <= self.min_p <= 1, "from 0 to 1"),
            (
                "repetition_penalty",
                math.isfinite(self.repetition_penalty)
                and 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY,
                f"above 0, at most {MAX_REPETITION_PENALTY:g} (1: none)",
            ),
            (
                "min_tokens",
                0 <= self.min_tokens <= self.max_tokens,
                f"from 0 to max_tokens ({self.max_tokens})",
            ),
        )
        for name, ok, allowed in checks:
            if not ok:
                value = getattr(self, "logprobs" if name == "top_logprobs" else name)
                shown = f"{len(value)} biases" if name == "logit_bias" else repr(value)
                raise ConfigError(f"{name} is {shown}; it must be {allowed}", param=name)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalized(self) -> tuple[str, ...]:
        """The names of OpenAI's penalties and logit bias this request sets."""
        return tuple(
            name
            for name, value in (
                ("presence_penalty", self.presence_penalty),
                ("frequency_penalty", self.frequency_penalty),
                ("logit_bias", self.logit_bias),
            )
            if value
        )

    @property
    def extended(self) -> tuple[str, ...]:
        """The names of vLLM's sampling extensions this request sets (not at their neutral
        value)."""
        return tuple(
            name
            for name, used in (
                ("top_k", self.top_k > 0),
                ("min_p", self.min_p > 0),
                ("repetition_penalty", self.repetition_penalty != 1),
                ("min_tokens", self.min_tokens > 0),
            )
            if used
        )

    @property
    def shaped(self) -> bool:
        """Whether penalties, a logit bias or vLLM's sampling extensions change the
        model's logits (or where the answer may end)."""
        return bool(self.penalized or self.extended)

    @property
    def prompt_logprobs(self) -> bool:
        """Whether the prompt's tokens need their log probabilities (echo with logprobs)."""
        return self.echo and self.logprobs is not None

    @property
    def plain(self) -> bool:
        """Neither constrained, nor asking for log probabilities, nor ``shaped`` (continuous
        batching runs only plain greedy requests)."""
        return self.guide is None and self.logprobs is None and not self.shaped


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log probability, and the most likely alternatives at its step (a
    prompt's first token has none: ``logprob`` None)."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Generation:
    """A finished request: its text and real token counts.

    ``finish_reason`` is ``"stop"`` (end of sequence or a stop string),
    ``"length"`` (``max_tokens`` reached) or ``"cancelled"`` (the consumer went
    away). ``ttft_ms`` is the time from submission to the first generated token.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # echo with logprobs


@dataclass(frozen=True)
class StreamEvent:
    """New text of a streamed request (and, when asked, the log probabilities of the tokens
    generated since the last event); the last event carries the whole ``generation``."""

    text: str
    generation: Generation | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


class TokenPrompt(str):
    """A completion's prompt sent as token ids of the version's tokenizer: its text (decoded,
    for records and limits) and the ids the engine runs as they are."""

    ids: tuple[int, ...]

    def __new__(cls, ids: tuple[int, ...], text: str) -> TokenPrompt:
        made = super().__new__(cls, text)
        made.ids = ids
        return made


def check_token_ids(ids: tuple[int, ...], vocab_size: int, what: str) -> None:
    """A 400 for a token id ``what``'s tokenizer does not have."""
    wrong = next((i for i in ids if not 0 <= i < vocab_size), None)
    if wrong is not None:
        raise ConfigError(
            f"the prompt holds the token id {wrong}, which {what}'s tokenizer does not have "
            f"(ids 0 to {vocab_size - 1})",
            hint="Send ids of the model's own tokenizer, or send text.",
            param="prompt",
        )


def check_bias_ids(bias: tuple[tuple[int, float], ...], vocab_size: int, what: str) -> None:
    """A 400 for a ``logit_bias`` token id ``what``'s tokenizer does not have."""
    wrong = next((i for i, _ in bias if not 0 <= i < vocab_size), None)
    if wrong is not None:
        raise ConfigError(
            f"logit_bias names the token id {wrong}, which {what}'s tokenizer does not have "
            f"(ids 0 to {vocab_size - 1})",
            hint="Bias ids of the model's own tokenizer.",
            param="logit_bias",
        )


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started (the app exports them as Prometheus metrics)."""

    adapter_hits: int = 0
    adapter_misses: int = 0
    adapter_loads: int = 0
    adapter_evictions: int = 0
    adapter_load_failures: int = 0
    batches: int = 0
    batched_requests: int = 0
    largest_batch: int = 0
    queue_depth: int = 0


class EngineObserver(Protocol):
    """Receives engine events as they happen (the app's metrics implement it)."""

    def adapter_event(self, event: AdapterEvent, version: str) -> None:
        """An adapter cache ``event`` for the version ``version`` (a ``model:N`` ref)."""

    def batch_ran(self, size: int) -> None:
        """One ``generate`` call ran ``size`` requests together."""


@dataclass(frozen=True)
class Origin:
    """Where a request comes from, for its record: ``source`` (``api``, ``batch``,
    ``stream``), the ``job_id`` (a batch job, a stream's ``STREAM/GROUP``), and the
    ``record_id`` its record must have (None: a new one).

    A batch row's record id is derived from its job and row, so a row answered twice
    (its job killed before the answer reached the output, then resumed) keeps one record.
    """

    source: str = "api"
    job_id: str | None = None
    record_id: str | None = None


__all__ = [
    "MAX_TOP_LOGPROBS",
    "MIN_TEMPERATURE",
    "SEED_RANGE",
    "AdapterEvent",
    "ClientGone",
    "ContextLengthExceeded",  # lives in modelyard.errors; named here for the engine modules
    "EngineError",  # lives in modelyard.errors; named here for the engine modules
    "EngineObserver",
    "EngineStats",
    "FinishReason",
    "Generation",
    "Guide",
    "GuideKind",
    "Origin",
    "SamplingParams",
    "StreamEvent",
    "TokenLogprob",
    "TokenPrompt",
    "check_token_ids",
    "context_exceeded",
    "fit_to_context",
    "naming_cap",
    "naming_prompt",
]
