"""Dynamic batching: a bounded queue, batch collection and grouping, and one batched ``generate``.

Requests wait in a bounded ``RequestQueue`` (full: ``EngineOverloaded``, a fast
503). The scheduler thread ``collect``s up to ``max_batch_size`` requests, or
what arrived within ``batch_window_ms`` of the first, and ``group``s them:
requests batch together when they share a base model and their decoding is
compatible (greedy with greedy; sampling with sampling at the same temperature
and top_p; a request with a ``seed`` always runs alone, so its seed alone
decides its tokens). Greedy groups are decoded step by step by a
``DecodeSession`` (``_continuous``, which reuses ``Row``); the others go through
``run_batch``: ONE ``model.generate`` for a group, left-padded, each row on its
own adapter slot (``MultiLora.route``):

- ``BatchStreamer`` (a transformers streamer) receives each step's tokens for
  the whole batch and routes each row's new token to that request's
  ``TokenStream``, decoding incrementally: it decodes the row's whole generated
  prefix and emits the new suffix, holding back what may still change (an
  incomplete multi-byte character, trailing spaces, a possible start of a stop
  string).
- ``RowStopper`` (a stopping criterion) ends each row on its own: at its own
  ``max_tokens``, at end of sequence, at a stop string, or when its consumer has
  cancelled. Generation ends when every row has.

A row's ``completion_tokens`` are the tokens it generated, as vLLM and OpenAI count
them: an end-of-sequence token it sampled counts (it is not text), and so does the
token that completed a stop string (the text is cut before the stop string). Each of
them has its log probabilities when they were asked for, as vLLM gives them: an end of
sequence's entry is its token as written (``</s>``), though the text never shows it.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from modelyard.errors import EngineOverloaded
from modelyard.serving._grammar import GuideMasks
from modelyard.serving._multilora import MultiLora
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import FinishReason, Generation, SamplingParams, TokenLogprob
from modelyard.store import ModelVersion

_serial = itertools.count()


@dataclass(eq=False)
class PendingRequest:
    """A submitted request waiting for (or in) a batch."""

    version: ModelVersion
    prompt_ids: list[int]
    params: SamplingParams
    source: str = ""  # the model it runs on: its base's source, or its own full weights
    stream: TokenStream = field(default_factory=TokenStream)
    submitted: float = field(default_factory=time.perf_counter)
    serial: int = field(default_factory=lambda: next(_serial))
    cache_hit: bool | None = None  # its adapter was loaded already when its batch began
    unknown_tokens: int | None = None  # prompt tokens that are the tokenizer's unknown token
    matcher: Any = None  # its guide's xgrammar matcher (``_grammar``), None: unconstrained

    def extra(self) -> dict[str, Any]:
        """What the engine knows of the request for its inference record (``Generation.extra``)."""
        out: dict[str, Any] = {}
        if self.cache_hit is not None:
            out["adapter_cache_hit"] = self.cache_hit
        if self.unknown_tokens is not None:
            out["unknown_tokens"] = self.unknown_tokens
        return out

    def batch_key(self) -> tuple[Hashable, ...]:
        """Requests with equal keys may share one ``generate`` call."""
        p = self.params
        if not p.plain:
            decoding: tuple[Hashable, ...] = ("guided or logprobs", self.serial)  # alone
        elif p.greedy:
            decoding = ("greedy",)
        elif p.seed is not None:
            decoding = ("seeded", self.serial)  # alone: its seed decides its tokens
        else:
            decoding = ("sample", p.temperature, p.top_p)
        return (self.source or self.version.base_model_source, *decoding)


class RequestQueue:
    """A bounded FIFO of pending requests."""

    def __init__(self, max_size: int) -> None:
        self._queue: queue.Queue[PendingRequest] = queue.Queue(maxsize=max_size)
        self.max_size = max_size

    def put(self, request: PendingRequest) -> None:
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise EngineOverloaded(
                f"the server is at capacity: {self.max_size} requests are already waiting"
            ) from None

    def depth(self) -> int:
        return self._queue.qsize()

    def collect(
        self, max_batch_size: int, window_s: float, stop: threading.Event
    ) -> list[PendingRequest]:
        """Up to ``max_batch_size`` requests: the first to arrive, and those that follow it
        within ``window_s`` (or are already waiting). Empty when ``stop`` is set while idle."""
        first: PendingRequest | None = None
        while first is None:
            if stop.is_set():
                return []
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        batch = [first]
        deadline = time.monotonic() + window_s
        while len(batch) < max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    batch.append(self._queue.get(timeout=remaining))
                else:  # the window has passed: take only what is already waiting
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def take(self) -> PendingRequest | None:
        """The next waiting request, or None (without waiting)."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def drain(self) -> list[PendingRequest]:
        """Everything still waiting (at shutdown)."""
        left = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                return left


def group(batch: Sequence[PendingRequest], max_adapters: int) -> list[list[PendingRequest]]:
    """``batch`` split into groups that can share one ``generate``, in arrival order.

    A group holds one ``batch_key`` and at most ``max_adapters`` distinct versions,
    so every adapter it needs fits in the cache at once.
    """
    groups: list[list[PendingRequest]] = []
    open_groups: dict[tuple[Hashable, ...], tuple[list[PendingRequest], set[int]]] = {}
    for request in batch:
        key = request.batch_key()
        current = open_groups.get(key)
        if current is not None:
            members, versions = current
            if request.version.id in versions or len(versions) < max_adapters:
                members.append(request)
                versions.add(request.version.id)
                continue
        members, versions = [request], {request.version.id}
        open_groups[key] = (members, versions)
        groups.append(members)
    return groups


# -- text --------------------------------------------------------------------------------


def visible_text(
    decoded: str, stop: Sequence[str], *, final: bool, after: int = 0
) -> tuple[str, bool]:
    """The text a client may see of ``decoded`` so far, and whether a stop string ended it.

    The answer is stripped (as evaluation strips it) and cut before the first stop
    string that ends beyond ``decoded[:after]`` (``min_tokens``: as vLLM, a stop string
    within the first ``min_tokens`` tokens' text does not count). Until ``final``, what
    may still change is held back: trailing whitespace, an incomplete multi-byte
    character (decoded as U+FFFD), and a tail that could be the start of a stop string.
    """
    text = decoded.lstrip()
    after -= len(decoded) - len(text)  # in the stripped text
    cuts = [i for s in stop if s and (i := text.find(s, max(0, after - len(s) + 1))) >= 0]
    if cuts:
        return text[: min(cuts)].rstrip(), True
    if final:
        return text.rstrip(), False
    text = text.rstrip("\ufffd")
    held = max(
        (k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])),
        default=0,
    )
    return text[: len(text) - held].rstrip(), False


class Row:
    """One request inside a running batch: its tokens, its text, how it ended."""

    def __init__(
        self,
        request: PendingRequest,
        decode: Callable[[list[int]], str],
        eos_ids: frozenset[int],
        spell: Callable[[int], str] | None = None,
    ) -> None:
        """``decode``: token ids to the text a client sees (special tokens skipped);
        ``spell``: one token as written, special tokens included (a logprob's token)."""
        self.request = request
        self.stream = request.stream
        self.params = request.params
        self._decode_ids = decode
        self._spell = spell or (lambda token: decode([token]))
        self._eos_ids = eos_ids
        self.ids: list[int] = []  # the answer's tokens (an end of sequence is not text)
        self.ended_on_eos = False  # its last token was an end of sequence: counted, not shown
        self.emitted = ""
        self.finished: FinishReason | None = None
        self.first_token_at: float | None = None
        self.step_logprobs: torch.Tensor | None = None  # this step's, when it wants logprobs
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # echo with logprobs
        self._logprobs_sent = 0  # of ``logprobs``, those pushed with text already
        self._stops_after: int | None = None  # the first min_tokens tokens' text length

    def wants_to_stop(self, last_token: int, generated: int) -> bool:
        """Whether generation may end for this row after ``generated`` tokens (the stopper)."""
        return (
            self.finished is not None
            or self.stream.cancelled
            or generated >= self.params.max_tokens
            or last_token in self._eos_ids
        )

    def add(self, token: int) -> None:
        """Take one generated token (the streamer), emitting the new text."""
        if self.finished is not None:
            return  # padding after the row's end
        if self.stream.cancelled:
            self.close("cancelled")
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.step_logprobs is not None:  # an end of sequence's too, as vLLM scores it
            self.logprobs.append(self._logprob(token, self.step_logprobs))
        if token in self._eos_ids:
            self.ended_on_eos = True
            self.close("stop")
            return
        self.ids.append(token)
        text, stopped = visible_text(
            self._decode(), self.params.stop, final=False, after=self._stop_offset()
        )
        if stopped:
            self.close("stop")
            return
        if len(self.ids) >= self.params.max_tokens:
            self.close("length")
            return
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            self.stream.push(text[len(self.emitted) :], self._unsent_logprobs())
            self.emitted = text

    def close(self, reason: FinishReason) -> None:
        """Finish the row: the last text, and the ``Generation`` (idempotent)."""
        if self.finished is not None:
            return
        self.finished = reason
        text, stopped = visible_text(
            self._decode(), self.params.stop, final=True, after=self._stop_offset()
        )
        if stopped and reason == "length":
            reason = self.finished = "stop"
        ttft = (
            (self.first_token_at - self.request.submitted) * 1000
            if self.first_token_at is not None
            else None
        )
        generation = Generation(
            text=text,
            prompt_tokens=len(self.request.prompt_ids),
            # the end of sequence was computed like any token: vLLM and OpenAI count it
            completion_tokens=len(self.ids) + self.ended_on_eos,
            finish_reason=reason,
            ttft_ms=ttft,
            extra=self.request.extra(),
            logprobs=tuple(self.logprobs) if self.params.logprobs is not None else None,
            prompt_logprobs=self.prompt_logprobs,
        )
        rest = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        self.stream.finish(generation, rest, self._unsent_logprobs())

    def _decode(self) -> str:
        return self._decode_ids(self.ids)

    def _stop_offset(self) -> int:
        """Where in the decoded answer a stop string must end beyond to count: as vLLM does,
        none counts until the answer has more than ``min_tokens`` tokens, and then only one
        that ends past the first ``min_tokens`` tokens' text."""
        wait = self.params.min_tokens
        if not wait or not self.params.stop:
            return 0
        if len(self.ids) <= wait:
            return sys.maxsize
        if self._stops_after is None:
            self._stops_after = len(self._decode_ids(self.ids[:wait]))
        return self._stops_after

    def _unsent_logprobs(self) -> tuple[TokenLogprob, ...]:
        sent, self._logprobs_sent = self._logprobs_sent, len(self.logprobs)
        return tuple(self.logprobs[sent:])

    def _logprob(self, token: int, logprobs: torch.Tensor) -> TokenLogprob:
        """``token`` (the next, not appended yet) and the alternatives at its step."""
        anchor = self.ids[-1] if self.ids else self.request.prompt_ids[-1]
        return self._token_logprob(anchor, token, logprobs)

    def score_prompt(self, logprobs: Callable[[int], torch.Tensor]) -> None:
        """The prompt's tokens with their log probabilities, for echo (``logprobs(j)``: the
        log-softmax after the prompt's first ``j + 1`` tokens). The first token has none."""
        ids = self.request.prompt_ids
        first = TokenLogprob(self._decode_ids(ids[:1]), None)
        self.prompt_logprobs = (first, *(
            self._token_logprob(ids[j - 1], ids[j], logprobs(j - 1)) for j in range(1, len(ids))
        ))  # fmt: skip

    def _token_logprob(self, anchor: int, token: int, logprobs: torch.Tensor) -> TokenLogprob:
        """``token`` and the alternatives at its step, as text in context: each decoded
        after ``anchor``, the token before it (decoding a token alone can drop its leading
        space, as tokenizers do at the start of a text). A token that shows no text there,
        a special token (the end of sequence), is spelt as written (``</s>``), as vLLM
        shows it whether or not the request skips special tokens."""
        before = self._decode_ids([anchor])

        def text(t: int) -> str:
            both = self._decode_ids([anchor, t])
            shown = both[len(before) :] if both.startswith(before) else self._decode_ids([t])
            return shown or self._spell(t)

        top: tuple[tuple[str, float], ...] = ()
        if self.params.logprobs:
            values, ids = torch.topk(logprobs, min(self.params.logprobs, logprobs.shape[-1]))
            top = tuple(
                (text(int(i)), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return TokenLogprob(text(token), float(logprobs[token]), top)


class BatchStreamer(BaseStreamer):  # type: ignore[misc]
    """Receives each decoding step's tokens for the whole batch; routes them to the rows."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self._rows = rows
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate hands the prompt over first
            self._prompt_seen = True
            return
        tokens = value.reshape(len(self._rows), -1)[:, -1].tolist()
        for row, token in zip(self._rows, tokens, strict=True):
            row.add(int(token))

    def end(self) -> None:
        for row in self._rows:
            row.close("cancelled" if row.stream.cancelled else "length")


class RowStopper(StoppingCriteria):  # type: ignore[misc]
    """Ends each row on its own (``max_tokens``, end of sequence, stop string, cancelled)."""

    def __init__(self, rows: Sequence[Row], prompt_length: int) -> None:
        self._rows = rows
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = int(input_ids.shape[1]) - self._prompt_length
        last = input_ids[:, -1].tolist()
        done = [row.wants_to_stop(t, generated) for row, t in zip(self._rows, last, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class LogprobTaker:
    """A ``generate`` logits processor (first in the list, so it sees the model's own
    distribution): hands each row that asked for logprobs this step's log-softmax."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self._rows = [(i, row) for i, row in enumerate(rows) if row.params.logprobs is not None]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._rows:
            logprobs = torch.log_softmax(scores.float(), dim=-1).cpu()
            for i, row in self._rows:
                row.step_logprobs = logprobs[i]
        return scores


class LogitShaper:
    """A ``generate`` logits processor for shaped rows, in vLLM's order. First a token's
    ``logit_bias`` is added, and until the answer has ``min_tokens`` tokens the end of
    sequence (``eos_ids``) is ruled out. Then the penalties: ``repetition_penalty`` (vLLM's
    and transformers' arithmetic) divides the logit of each token in the prompt or the
    answer when positive, multiplies it when not; OpenAI's take ``presence_penalty`` off a
    token's logit once it is in the answer and ``frequency_penalty`` times its count in
    the answer (the prompt's tokens do not count). Runs before temperature, top_k, top_p
    and min_p."""

    def __init__(
        self, rows: Sequence[Row], prompt_length: int, eos_ids: frozenset[int] = frozenset()
    ) -> None:
        self._rows = [(i, row.params) for i, row in enumerate(rows) if row.params.shaped]
        self._starts = [prompt_length - len(row.request.prompt_ids) for row in rows]  # padding
        self._prompt_length = prompt_length
        self._eos = sorted(eos_ids)
        self._bias: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        answer = input_ids[:, self._prompt_length :]
        for i, p in self._rows:
            if p.logit_bias:
                if i not in self._bias:
                    ids, bias = zip(*p.logit_bias, strict=True)
                    self._bias[i] = (
                        torch.tensor(ids, device=scores.device),
                        torch.tensor(bias, dtype=scores.dtype, device=scores.device),
                    )
                ids_t, bias_t = self._bias[i]
                scores[i, ids_t] += bias_t
            if answer.shape[1] < p.min_tokens and self._eos:
                scores[i, [e for e in self._eos if e < scores.shape[-1]]] = -float("inf")
            if p.repetition_penalty != 1:
                seen = input_ids[i, self._starts[i] :]
                logits = scores[i].gather(0, seen)
                penalty = p.repetition_penalty
                logits = torch.where(logits > 0, logits / penalty, logits * penalty)
                scores[i].scatter_(0, seen, logits)
            if (p.presence_penalty or p.frequency_penalty) and answer.shape[1]:
                counts = torch.bincount(answer[i], minlength=scores.shape[-1])[: scores.shape[-1]]
                counts = counts.to(scores.dtype)
                scores[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        return scores


_SCORE_CHUNK = 256  # prompt positions turned into float32 log-probabilities at once


def _score_prompt(model: Any, row: Row) -> None:
    """One forward pass over ``row``'s prompt (alone: no padding to shift its positions),
    and its tokens' log probabilities from it (echo with logprobs)."""
    ids = torch.tensor([row.request.prompt_ids], device=model.device)
    logits = model(input_ids=ids).logits[0]
    chunks: dict[int, torch.Tensor] = {}

    def at(j: int) -> torch.Tensor:
        start = j - j % _SCORE_CHUNK
        if start not in chunks:
            chunks.clear()
            part = logits[start : start + _SCORE_CHUNK].float()
            chunks[start] = torch.log_softmax(part, dim=-1).cpu()
        return chunks[start][j - start]

    row.score_prompt(at)


def _decoder(tokenizer: Any, tokenizer_lock: threading.Lock) -> Callable[[list[int]], str]:
    def decode(ids: list[int]) -> str:
        with tokenizer_lock:
            return str(tokenizer.decode(ids, skip_special_tokens=True))

    return decode


def _speller(tokenizer: Any, tokenizer_lock: threading.Lock) -> Callable[[int], str]:
    """One token as written, special tokens included: vLLM's text of a logprob's token."""

    def spell(token: int) -> str:
        with tokenizer_lock:
            return str(tokenizer.decode([token], skip_special_tokens=False))

    return spell


def run_batch(
    model: Any,
    tokenizer: Any,
    requests: Sequence[PendingRequest],
    lora: MultiLora,
    slots: Sequence[int],
    eos_ids: frozenset[int],
    pad_token_id: int,
    tokenizer_lock: threading.Lock,
) -> None:
    """One ``generate`` for ``requests`` (same ``batch_key``); every stream gets finished.

    Row ``i`` runs with the adapter in ``slots[i]`` of ``lora``. ``tokenizer_lock``
    guards the tokenizer, which request threads share.
    """
    decode, spell = _decoder(tokenizer, tokenizer_lock), _speller(tokenizer, tokenizer_lock)
    rows = [Row(r, decode, eos_ids, spell) for r in requests]
    width = max(len(r.prompt_ids) for r in requests)
    input_ids = torch.tensor(
        [[pad_token_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests]
    )
    attention_mask = torch.tensor(
        [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests]
    )
    params = requests[0].params
    decoding: dict[str, Any] = {"do_sample": False}
    if not params.greedy:
        decoding = {
            "do_sample": True,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": max(params.top_k, 0),  # 0: no cut, as OpenAI samples
            "min_p": params.min_p or None,
        }
        if params.seed is not None:
            torch.manual_seed(params.seed)
    streamer = BatchStreamer(rows)
    processors: list[Any] = [LogprobTaker(rows)]  # first: the model's own distribution
    if any(r.params.shaped for r in requests):
        processors.append(LogitShaper(rows, width, eos_ids))
    if any(r.matcher is not None for r in requests):
        processors.append(GuideMasks([r.matcher for r in requests], int(model.config.vocab_size)))
    try:
        with torch.inference_mode():
            for i, row in enumerate(rows):
                if row.params.prompt_logprobs:
                    lora.route([slots[i]])
                    _score_prompt(model, row)
            lora.route(slots)
            model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max(r.params.max_tokens for r in requests),
                pad_token_id=pad_token_id,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([RowStopper(rows, width)]),
                logits_processor=LogitsProcessorList(processors),
                **decoding,
            )
    finally:
        lora.unroute()
    streamer.end()  # idempotent; covers a generate that stopped before its last put
