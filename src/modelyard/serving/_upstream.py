"""Talking to an OpenAI-compatible server: an external provider, a vLLM server, another modelyard.

``UpstreamClient`` sends the requests of one ``registry.UpstreamSpec`` (where,
which model, the key's reference, timeouts, retries). ``UpstreamClient.run``
sends one request (chat when the prompt is a ``ChatPrompt``, else a
completion), streams its text to a ``TokenStream`` as it arrives, and retries
with backoff what a retry can mend (connection errors, 429 and 5xx, honouring
``Retry-After``) as long as nothing has reached the consumer yet. With
``whole=True`` it asks for a non-streamed answer instead (one response, no
per-token events: for a consumer that wants only the whole answer) and finishes
the stream with it; on an ``InterruptibleTransport`` a consumer that cancels
cuts either kind short. Upstream answers become modelyard errors a client can
read: its 4xx for the request (400), a refused credential or an unknown model
(502), 429 after the retries (503 with ``Retry-After``), a timeout (504).

Each ``UpstreamError`` has two texts. Its message is the operator's: the upstream's
host, its status and words, where the key comes from; it is logged once per failed
request (at warning) and is what the CLI prints and the inference record keeps. Its
``public`` context is the tenant's (``_http_errors.public_message``): the version, that
its provider failed, refused, was rate limiting or timed out, the status class; never
the host, the key's source or whose account it is. A 4xx that is about the request
itself (context length, a parameter) passes the provider's words and ``param`` on.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from modelyard.errors import (
    ConfigError,
    ModelyardError,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
)
from modelyard.registry import UpstreamSpec
from modelyard.serving._interruptible import Interrupt, interruptible
from modelyard.serving._passthrough import (
    CallDeltas,
    calls_as_text,
    logprobs_of,
    openai_extras,
    openai_messages,
    prompt_logprobs_of,
    vllm_extras,
)
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import (
    ContextLengthExceeded,
    Generation,
    SamplingParams,
    TokenLogprob,
    TokenPrompt,
)

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
DETAILS = "the operator finds the details in the server's log"


class ChatPrompt(str):
    """A chat request's prompt: readable text for records and limits, plus the messages
    an upstream takes as they are (it applies its own chat template)."""

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]  # the functions offered (``FunctionDef.offered``)

    def __new__(
        cls, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()
    ) -> ChatPrompt:
        text = "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)
        made = super().__new__(cls, text)
        made.messages = tuple(dict(m) for m in messages)
        made.tools = tuple(dict(t) for t in tools)
        return made


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def request_body(
    spec: UpstreamSpec,
    prompt: str,
    params: SamplingParams,
    stream: bool,
    model: str | None = None,
    vllm: bool = False,
) -> dict[str, Any]:
    """The OpenAI request for ``prompt``: chat for a ``ChatPrompt``, else a completion (to
    ``model``, default the spec's). To a vLLM server (``vllm``), a guide is sent as the
    grammar the transformers engine decodes with (``structured_outputs.grammar``: the same
    constraint on both engines) and ``logprobs`` as its legacy-completions count."""
    chat = isinstance(prompt, ChatPrompt)
    cap = spec.max_tokens_field if chat else "max_tokens"  # legacy completions: max_tokens
    body: dict[str, Any] = {"model": model or spec.model, cap: params.max_tokens,
                            "temperature": params.temperature, "top_p": params.top_p}  # fmt: skip
    if isinstance(prompt, ChatPrompt):
        body["messages"] = openai_messages(prompt.messages)
    else:  # token ids as sent (vLLM: the ids of the version's tokenizer)
        body["prompt"] = list(prompt.ids) if isinstance(prompt, TokenPrompt) else str(prompt)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.logit_bias:  # ids of the served model's tokenizer, as the client sent them
        body["logit_bias"] = {str(i): b for i, b in params.logit_bias}
    for name in params.extended:  # vLLM's own fields (an upstream engine refuses them)
        body[name] = getattr(params, name)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    tools = prompt.tools if isinstance(prompt, ChatPrompt) else ()
    body.update(vllm_extras(params) if vllm else openai_extras(params, chat, tools))
    return body


def _top_logprobs(body: Mapping[str, Any]) -> int | None:
    """The alternatives per token a request asked for (None: no logprobs)."""
    if "logprobs" not in body or body["logprobs"] is False:
        return None
    return int(body.get("top_logprobs", body["logprobs"]))


def _text_of(choice: Mapping[str, Any], chat: bool, stream: bool) -> str:
    if not chat:
        return str(choice.get("text") or "")
    part = choice.get("delta" if stream else "message") or {}
    return str(part.get("content") or "")


class UpstreamClient:
    """One upstream's HTTP client (pooled connections), shared by its requests."""

    def __init__(
        self,
        spec: UpstreamSpec,
        *,
        transport: httpx.BaseTransport | None = None,
        translate: Callable[[ModelyardError], ModelyardError] | None = None,
        vllm: bool = False,
    ):
        self.spec = spec
        self.vllm = vllm  # a vLLM server: guides and logprobs in its dialect (request_body)
        self.who = "its vLLM server" if vllm else "its provider"  # in a tenant's words
        self._translate = translate or (lambda error: error)
        timeout = httpx.Timeout(spec.timeout_s, connect=spec.connect_timeout_s)
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=spec.max_concurrency),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def run(
        self,
        prompt: str,
        params: SamplingParams,
        out: TokenStream,
        *,
        what: str,
        model: str | None = None,
        whole: bool = False,
    ) -> None:
        """Send one request, stream its text into ``out`` and finish or fail it (blocking).
        ``what`` names the version in errors; ``model`` overrides the spec's model name (a
        LoRA adapter's name on a vLLM server); ``whole`` asks for one non-streamed answer."""
        started = time.perf_counter()
        chat = isinstance(prompt, ChatPrompt)
        path = "/chat/completions" if chat else "/completions"
        body = request_body(self.spec, prompt, params, not whole, model, self.vllm)
        once = self._whole if whole else self._once
        attempt = 0
        while True:
            try:
                generation = once(path, body, chat, out, started, what)
            except _Retry as retry:
                attempt += 1
                if out.cancelled or retry.sent or attempt > self.spec.max_retries:
                    out.fail(self._failed(retry.error, what))
                    return
                wait = retry.wait_s if retry.wait_s is not None else _backoff(attempt)
                if wait > MAX_BACKOFF_S:
                    out.fail(self._failed(retry.error, what))
                    return
                time.sleep(wait)
                continue
            except ModelyardError as exc:
                out.fail(self._failed(exc, what))
                return
            out.finish(generation)
            return

    def _failed(self, error: ModelyardError, what: str) -> ModelyardError:
        """The error a request fails with, logged once with the operator's details (the
        tenant's own 4xx at info); an ``UpstreamError`` raised without a tenant's text
        (a key that is not set, an error event mid-answer) gets a general one."""
        if isinstance(error, UpstreamError):
            if not isinstance(error.context.get("public"), str):
                message = f"{what}: the upstream at {self.spec.host}: {error.message}"
                context = {**error.context, "version": what}
                context["public"] = f"{what}: {self.who} failed; {DETAILS}"
                error = type(error)(message, hint=error.hint, **context)
            key = self.spec.credential
            log.warning("upstream request of %s failed: %s (%s)", what, error.one_line(),
                        key if key == "no key" else f"key from {key}")  # fmt: skip
        else:
            log.info("upstream request of %s refused: %s", what, error.one_line())
        return self._translate(error)

    def _public(self, what: str, happened: str, status: int | None = None) -> str:
        """A tenant's text: the version, what its provider did and the status class."""
        shown = f" ({status // 100}xx)" if status else ""
        return f"{what}: {self.who} {happened}{shown}; {DETAILS}"

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {**self.spec.headers, "Accept": accept}
        key = self.spec.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _once(self, path: str, body: dict[str, Any], chat: bool, out: TokenStream,
              started: float, what: str) -> Generation:  # fmt: skip
        """One streamed request; a cancel ends it at the next event (on an
        ``InterruptibleTransport``, at once, even before the first)."""
        headers = self._headers("text/event-stream")
        interrupt = Interrupt()
        out.on_cancel(interrupt.fire)
        texts: list[str] = []
        calls = CallDeltas()  # tool calls, put together from their deltas
        top = _top_logprobs(body)
        scored: list[TokenLogprob] = []
        usage: Mapping[str, Any] | None = None
        finish = "stop"
        ended = False  # a choice said why it ended: the stream was not cut short
        ttft = None
        try:
            with (
                interruptible(interrupt),
                self._http.stream("POST", self.spec.url + path, json=body, headers=headers) as r,
            ):
                if r.status_code != 200:
                    r.read()
                    raise self._refusal(r, what)
                if r.headers.get("content-type", "").startswith("application/json"):
                    # a server that does not stream (or a proxy that buffered it) answers
                    # whole: read as a whole answer, never as an empty stream
                    r.read()
                    generation = self._answered(r, body, chat, started, what)
                    if generation.text:
                        out.push(generation.text, generation.logprobs or ())
                    return generation
                for data in _events(r.iter_lines()):
                    if out.cancelled:
                        finish = "cancelled"
                        break
                    usage = data.get("usage") or usage
                    for choice in data.get("choices") or ():
                        calls.add((choice.get("delta") or {}).get("tool_calls") if chat else None)
                        piece = _text_of(choice, chat, stream=True)
                        tokens = logprobs_of(choice.get("logprobs"), top, chat) or ()
                        scored.extend(tokens)
                        if piece or tokens:
                            if ttft is None:
                                ttft = (time.perf_counter() - started) * 1000
                            texts.append(piece)
                            out.push(piece, tokens)
                        finish = choice.get("finish_reason") or finish
                        ended = ended or bool(choice.get("finish_reason"))
        except httpx.HTTPError as exc:
            if not interrupt.fired:
                raise self._broke(exc, what, bool(texts)) from None
            finish = "cancelled"
        if not ended and finish != "cancelled":  # closed cleanly, but mid-answer
            raise self._broke(httpx.RemoteProtocolError("the stream ended before the answer"),
                              what, bool(texts)) from None  # fmt: skip
        written = calls.text()
        if written and finish != "cancelled":  # whole, as the routes read calls
            written = "\n" + written if texts else written
            texts.append(written)
            out.push(written)
        generation = self._generation("".join(texts), finish, usage, body, ttft, what)
        return replace(generation, logprobs=tuple(scored)) if top is not None else generation

    def _whole(self, path: str, body: dict[str, Any], chat: bool, out: TokenStream,
               started: float, what: str) -> Generation:  # fmt: skip
        """One non-streamed request; a cancel (``out.on_cancel``) cuts it short."""
        interrupt = Interrupt()
        out.on_cancel(interrupt.fire)
        if out.cancelled:
            return self._generation("", "cancelled", None, body, None, what)
        try:
            with interruptible(interrupt):
                r = self._http.post(self.spec.url + path, json=body,
                                    headers=self._headers("application/json"))  # fmt: skip
        except httpx.HTTPError as exc:
            if interrupt.fired:
                return self._generation("", "cancelled", None, body, None, what)
            raise self._broke(exc, what, False) from None
        if r.status_code != 200:
            raise self._refusal(r, what)
        return self._answered(r, body, chat, started, what)

    def _answered(self, r: httpx.Response, body: dict[str, Any], chat: bool, started: float,
                  what: str) -> Generation:  # fmt: skip
        """The answer of a non-streamed response (read already)."""
        elapsed_ms = (time.perf_counter() - started) * 1000
        try:
            data = r.json()
        except ValueError:
            raise UpstreamError(f"{what}: the upstream at {self.spec.host} answered with "
                                f"something that is not JSON: {r.text[:80]!r}", version=what,
                                public=self._public(what, "sent an answer that is not JSON"),
                                ) from None  # fmt: skip
        if not isinstance(data, Mapping) or "error" in data:
            error = data.get("error") if isinstance(data, Mapping) else data
            message = error.get("message") if isinstance(error, Mapping) else error
            raise UpstreamError(f"{what}: the upstream at {self.spec.host} failed: "
                                f"{str(message)[:300]}", version=what,
                                public=self._public(what, "failed"))  # fmt: skip
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], Mapping) else {}
        text = _text_of(choice, chat, stream=False)
        calls = (choice.get("message") or {}).get("tool_calls") if chat else None
        if calls:  # written as the routes read calls (``_passthrough``)
            text = "\n".join(part for part in (text, calls_as_text(calls)) if part)
        finish = str(choice.get("finish_reason") or "stop")
        generation = self._generation(text, finish, data.get("usage"), body,
                                      _ttft_ms(data.get("metrics"), elapsed_ms), what)  # fmt: skip
        top = _top_logprobs(body)
        if top is not None:
            generation = replace(
                generation, logprobs=logprobs_of(choice.get("logprobs"), top, chat)
            )
        if "prompt_logprobs" in body:  # vLLM's, asked for echo with logprobs
            try:
                scored = prompt_logprobs_of(choice.get("prompt_logprobs"), body["prompt"],
                                            int(body["prompt_logprobs"]))  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                raise UpstreamError(f"{what}: the upstream at {self.spec.host} sent no usable "
                                    f"prompt_logprobs ({exc})", version=what,
                                    public=self._public(what, "sent no usable prompt_logprobs"),
                                    ) from None  # fmt: skip
            generation = replace(generation, prompt_logprobs=scored)
        return generation

    def _broke(self, exc: httpx.HTTPError, what: str, sent: bool) -> _Retry:
        """The retry (or the error, when it is too late to retry) of a broken request."""
        if isinstance(exc, httpx.TimeoutException):
            within = f"did not answer within {self.spec.timeout_s:g} s"
            error: UpstreamError = UpstreamTimeout(
                f"{what}: the upstream at {self.spec.host} {within}",
                version=what, public=self._public(what, within),
            )  # fmt: skip
        else:
            error = UpstreamError(f"{what}: the upstream at {self.spec.host} could not be reached "
                                  f"or broke off: {type(exc).__name__}", version=what,
                                  public=self._public(what, "could not be reached or broke off"),
                                  )  # fmt: skip
        return _Retry(error, None, sent)

    def _generation(
        self,
        text: str,
        finish: str,
        usage: Mapping[str, Any] | None,
        body: Mapping[str, Any],
        ttft: float | None,
        what: str,
    ) -> Generation:
        """The answer from what the upstream sent (an aborted one is an error)."""
        if finish == "abort":  # vLLM's word for a request it dropped (it was stopping)
            raise UpstreamError(f"{what}: the upstream at {self.spec.host} aborted the request",
                                version=what, public=self._public(what, "aborted the request"),
                                )  # fmt: skip
        prompt_tokens, completion_tokens, estimated = _usage(usage, body, text)
        extra = {"upstream": self.spec.host, "upstream_model": self.spec.model}
        if estimated:
            extra["usage"] = "estimated"
        return Generation(text, prompt_tokens, completion_tokens, finish, ttft_ms=ttft, extra=extra)

    def _refusal(self, r: httpx.Response, what: str) -> Exception:
        """The error for a non-200 answer: a ``_Retry`` for what a retry may mend."""
        status = r.status_code
        said, code, param = _upstream_error(r)
        where = f"the upstream at {self.spec.host}"
        if status == 429 and code == "insufficient_quota":  # money, not a rate: never retried
            return UpstreamError(
                f"{what}: {where} says modelyard's account has no quota left (429 "
                f"insufficient_quota): {said}",
                hint=f"Check the plan and billing of the account whose key is in "
                f"{self.spec.credential}.", version=what,
                public=self._public(what, "refused the request", status),
            )  # fmt: skip
        if status == 429:
            wait = retry_after_s(r.headers.get("retry-after"))
            error: ModelyardError = UpstreamBusy(
                f"{what}: {where} is rate limiting modelyard (429): {said}", version=what,
                retry_after=max(1, math.ceil(wait or 1)),
                public=f"{what}: {self.who} is rate limiting requests (429). "
                f"{UpstreamBusy.default_hint}",
            )  # fmt: skip
            return _Retry(error, wait, False)
        if status in RETRYABLE:
            error = UpstreamError(f"{what}: {where} failed with {status}: {said}", version=what,
                                  public=self._public(what, "failed", status))  # fmt: skip
            return _Retry(error, retry_after_s(r.headers.get("retry-after")), False)
        if status in (401, 403):
            return UpstreamError(
                f"{what}: {where} refused modelyard's credential ({status}): {said}",
                hint=f"Check the key in {self.spec.credential}.", version=what,
                public=self._public(what, "refused the request", status),
            )  # fmt: skip
        if status == 404:
            return UpstreamError(
                f"{what}: {where} has no {'/'.join(r.url.path.split('/')[-2:])} for model "
                f"{_model_sent(r, self.spec.model)!r} (404): {said}", version=what,
                public=self._public(what, "does not serve the model it is asked for", status),
            )  # fmt: skip
        if 400 <= status < 500:  # the request itself: the client's to change
            message = f"the upstream refused the request ({status}): {said}"
            if code == "context_length_exceeded" or "maximum context length" in said:
                return ContextLengthExceeded(message, param=param or "prompt")
            return ConfigError(message, param=param)
        return UpstreamError(f"{what}: {where} answered {status}: {said}", version=what,
                             public=self._public(what, "failed", status))  # fmt: skip


def _model_sent(r: httpx.Response, default: str) -> str:
    """The model a request named (an adapter's name on vLLM, not the spec's base name)."""
    try:
        return str(json.loads(r.request.content).get("model", default))
    except (ValueError, AttributeError, RuntimeError):
        return default


class _Retry(Exception):
    def __init__(self, error: ModelyardError, wait_s: float | None, sent: bool) -> None:
        super().__init__(error.message)
        self.error, self.wait_s, self.sent = error, wait_s, sent


def _backoff(attempt: int) -> float:
    """0.25 s, 0.5 s, 1 s, ... with jitter (full jitter on the upper half)."""
    ceiling = min(MAX_BACKOFF_S, 0.25 * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _events(lines: Iterator[str]) -> Iterator[Mapping[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            data = json.loads(payload)
        except ValueError:
            raise UpstreamError(
                f"the upstream sent an event that is not JSON: {payload[:80]!r}"
            ) from None
        if isinstance(data, Mapping) and "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise UpstreamError(f"the upstream failed mid-answer: {str(message)[:300]}")
        if isinstance(data, Mapping):
            yield data


def _ttft_ms(metrics: Any, elapsed_ms: float) -> float | None:
    """Time to the first token of a non-streamed answer: the whole wait less the decoding
    after the first token (vLLM's per-request ``metrics.generation_time_ms``), None when the
    upstream does not say."""
    spent = metrics.get("generation_time_ms") if isinstance(metrics, Mapping) else None
    if not isinstance(spent, int | float) or not math.isfinite(spent):
        return None
    return max(0.0, elapsed_ms - float(spent))


def _upstream_error(r: httpx.Response) -> tuple[str, str | None, str | None]:
    """From an error body, read once: the upstream's own words, short (never its headers),
    and the ``code`` and ``param`` of an OpenAI error when they are texts."""
    try:
        data = r.json()
    except ValueError:
        return " ".join(r.text.split())[:300] or r.reason_phrase, None, None
    error = data.get("error") if isinstance(data, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else error or data
    said = " ".join(str(message).split())[:300] or r.reason_phrase
    if not isinstance(error, Mapping):
        return said, None, None
    code, param = error.get("code"), error.get("param")
    return (
        said,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) and len(param) <= 64 else None,
    )


def _usage(
    usage: Mapping[str, Any] | None, body: Mapping[str, Any], text: str
) -> tuple[int, int, bool]:
    """Token counts from the upstream's usage; estimated from words when it sent none."""
    if usage and isinstance(usage.get("prompt_tokens"), int):
        return int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0), False
    prompt = body.get("prompt") or " ".join(m.get("content", "") for m in body.get("messages", []))
    return len(str(prompt).split()), len(text.split()), True


__all__ = [
    "ChatPrompt",
    "UpstreamClient",
    "request_body",
    "retry_after_s",
]
