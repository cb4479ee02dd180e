"""Engines turn a prompt and a model version into text, whole or token by token.

``Engine`` is the interface the server talks to (a vLLM engine for GPUs can
implement the same): ``stream`` submits a request and returns its
``TokenStream``; ``generate`` waits for the whole answer; ``render_chat`` turns
chat messages into the prompt format the version was trained with (it needs the
base tokenizer for tokenizer chat templates). ``TransformersEngine`` serves
LoRA adapters on shared Hugging Face bases with dynamic batching (see
``_batching``) and an adapter LRU (see ``_adapters``). ``EchoEngine`` is a fake
for tests where the model is not the point.
"""

from __future__ import annotations

import abc
import logging
import re
import threading
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ConfigError, ModelyardError
from modelyard.serving._adapters import AdapterCache, LoadedBase, adapter_name
from modelyard.serving._batching import PendingRequest, RequestQueue, group, run_batch
from modelyard.serving._continuous import DecodeSession, continuous_supported
from modelyard.serving._device import Placement
from modelyard.serving._grammar import Grammars
from modelyard.serving._prompts import render_chat
from modelyard.serving._stream import TokenStream, finished_stream
from modelyard.serving._tools import Tools
from modelyard.serving._types import (
    AdapterEvent,
    EngineError,
    EngineObserver,
    EngineStats,
    Generation,
    SamplingParams,
    StreamEvent,
    TokenPrompt,
    check_bias_ids,
    check_token_ids,
    fit_to_context,
)
from modelyard.store import ModelVersion, Store

log = logging.getLogger(__name__)


class Engine(abc.ABC):
    """Generates text for model versions (an adapter on a base, or full weights).

    ``stream`` raises what is known at submission (a prompt too long:
    ``ConfigError``; a full queue: ``EngineOverloaded``); what happens later (an
    adapter that fails to load: ``EngineError``) is raised by the stream.
    """

    name: str = "engine"
    guides = False  # constrained decoding (response_format, required tool calls)
    logprobs = False  # log probabilities of the answer's tokens
    shapes = False  # presence and frequency penalties, logit bias
    extends = False  # vLLM's top_k, min_p, repetition_penalty, min_tokens
    scores_prompts = False  # the prompt's log probabilities (echo with logprobs)

    @abc.abstractmethod
    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        """Run one request to completion."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        """Submit one request; its text arrives on the stream (here: all at once at the end)."""
        return finished_stream(self.generate(version, prompt, params))

    def answer(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        """Submit one request whose consumer wants only the whole answer (a client that did
        not ask to stream): the final event carries it, and the consumer is woken for that
        alone. Here: ``stream``'s; an engine that can answer whole more cheaply overrides it
        (the vllm engine asks vLLM for one response instead of a stream of tokens)."""
        stream = self.stream(version, prompt, params)
        stream.whole = True
        return stream

    def render_chat(
        self, version: ModelVersion, messages: Sequence[Mapping[str, Any]], tools: Tools = None
    ) -> str:
        """The prompt for ``messages`` in the template ``version`` was trained with, offering
        ``tools`` (``_tools``)."""
        return render_chat(version, messages, tools=tools)

    def count_tokens(self, version: ModelVersion, prompt: str) -> int:
        """Prompt length for limits (engines without a tokenizer count words)."""
        return len(prompt.split())

    def token_prompt(self, version: ModelVersion, ids: tuple[int, ...]) -> TokenPrompt:
        """A prompt given as token ids of ``version``'s tokenizer, with its decoded text;
        an engine without the tokenizer refuses it (400)."""
        raise ConfigError(
            f"prompts as token ids are not supported on the {self.name} engine",
            hint="Send the prompt as text.",
            param="prompt",
        )

    def loaded(self) -> list[str]:
        """Refs of the versions held in memory (for /ready and heartbeats)."""
        return []

    def problem(self) -> str | None:
        """Why this engine cannot answer now (a model server it runs is starting again
        after it died), for ``/ready``: a load balancer then sends the traffic to other
        replicas; None when it can."""
        return None

    def stats(self) -> EngineStats:
        """Adapter cache, batch and queue counters."""
        return EngineStats()

    def add_observer(self, observer: EngineObserver) -> None:
        """Tell ``observer`` about adapter cache events and batches as they happen."""
        self._observer_list().append(observer)

    def remove_observer(self, observer: EngineObserver) -> None:
        observers = self._observer_list()
        if observer in observers:
            observers.remove(observer)

    def _observer_list(self) -> list[EngineObserver]:
        observers: list[EngineObserver] | None = self.__dict__.get("_observers")
        if observers is None:
            observers = self.__dict__["_observers"] = []
        return observers

    def refuse_unsupported(self, params: SamplingParams) -> None:
        """A 400 (``ConfigError``) for what ``params`` asks and this engine cannot honour:
        a parameter is never ignored silently."""
        if params.guide is not None and not self.guides:
            name = params.guide.param.removesuffix(".schema").removesuffix(".json_schema")
            raise ConfigError(
                f"{name} is not supported on the {self.name} engine",
                hint="Ask without it, or use an endpoint served by the transformers engine.",
                param=name,
            )
        if params.logprobs is not None and not self.logprobs:
            raise ConfigError(
                f"logprobs is not supported on the {self.name} engine",
                hint="Ask without logprobs, or use an endpoint served by the transformers engine.",
                param="logprobs",
            )
        if params.prompt_logprobs and not self.scores_prompts:
            raise ConfigError(
                f"echo with logprobs (the prompt's log probabilities) is not supported on the "
                f"{self.name} engine",
                hint="Ask without one of them, or use an endpoint served by the transformers "
                "or vllm engine.",
                param="echo",
            )
        for names, able in ((params.penalized, self.shapes), (params.extended, self.extends)):
            if names and not able:
                raise ConfigError(
                    f"{names[0]} is not supported on the {self.name} engine",
                    hint=f"Ask without {names[0]} (or at its neutral value), or use an endpoint "
                    "served by the transformers or vllm engine.",
                    param=names[0],
                )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the engine holds."""


class EchoEngine(Engine):
    """Answers with the last line of the prompt, word by word. For tests of routing and records."""

    name = "echo"

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        return self.stream(version, prompt, params).result()

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.refuse_unsupported(params)
        words = prompt.strip().splitlines()[-1].split() if prompt.strip() else []
        out = words[: params.max_tokens]
        text = " ".join(out)
        cut = min((i for s in params.stop if s and (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        finish = "length" if len(words) > params.max_tokens and cut < 0 else "stop"
        stream = TokenStream()
        for piece in re.findall(r"\s*\S+|\s+$", text):
            stream.push(piece)
        stream.finish(Generation(text, len(prompt.split()), len(text.split()), finish, ttft_ms=0.0))
        return stream


class TransformersEngine(Engine):
    """Hugging Face models: shared bases, LoRA adapters in an LRU, dynamic mixed-adapter batches.

    Requests enter a bounded queue (``max_queue``; full: ``EngineOverloaded``).
    One scheduler thread collects up to ``max_batch_size`` of them, or those
    arriving within ``batch_window_ms`` of the first, and runs each group of
    compatible requests on the same base as one batch, each row with its own
    adapter (stacked LoRA slots, ``_multilora``). A greedy batch is decoded
    step by step (``_continuous``): greedy requests arriving meanwhile join it at
    the next step, up to ``max_batch_size`` rows; sampled batches run one
    ``generate``. At most ``max_adapters`` adapters stay loaded, least recently
    used evicted first; their verified tensors stay in host memory (up to
    ``host_cache_mb``), so a reload after eviction reads no file. With a
    ``store``, a tampered artifact is audited (``artifact.verification_failed``).
    A version that failed to load fails its requests at once for
    ``failure_ttl_s`` seconds, then is tried again.
    """

    name = "transformers"
    guides = True
    logprobs = True
    shapes = True
    extends = True
    scores_prompts = True

    def __init__(
        self,
        artifacts: ArtifactStore,
        *,
        max_adapters: int = 8,
        max_batch_size: int = 8,
        batch_window_ms: float = 5.0,
        max_queue: int = 256,
        store: Store | None = None,
        failure_ttl_s: float = 10.0,
        host_cache_mb: float = 1024.0,
        placement: Placement | None = None,
    ) -> None:
        for field, value in (
            ("max_adapters", max_adapters),
            ("max_batch_size", max_batch_size),
            ("max_queue", max_queue),
        ):
            if value < 1:
                raise ConfigError(f"{field} is {value}; it must be at least 1", field=field)
        if host_cache_mb < 0:
            raise ConfigError(
                f"host_cache_mb is {host_cache_mb}; it must be 0 or more", field="host_cache_mb"
            )
        if batch_window_ms < 0:
            raise ConfigError(
                f"batch_window_ms is {batch_window_ms}; it must be 0 or more",
                field="batch_window_ms",
            )
        self._cache = AdapterCache(
            artifacts,
            max_adapters=max_adapters,
            store=store,
            failure_ttl_s=failure_ttl_s,
            host_cache_bytes=int(host_cache_mb * 2**20),
            notify=self._adapter_event,
            placement=placement,
        )
        self._queue = RequestQueue(max_queue)
        self._max_batch_size = max_batch_size
        self._window_s = batch_window_ms / 1000
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            ("hit", "miss", "load", "eviction", "load_failure", "batches", "rows", "largest"), 0
        )
        self._counts_lock = threading.Lock()
        self._continuous_ok: dict[str, bool] = {}
        self._compiled: dict[str, Grammars] = {}
        self._compiled_lock = threading.Lock()  # compiling takes a while: not _counts_lock

    # -- the interface --------------------------------------------------------------------

    def render_chat(
        self, version: ModelVersion, messages: Sequence[Mapping[str, Any]], tools: Tools = None
    ) -> str:
        tokenizer = self._cache.base(self._cache.source(version)).tokenizer
        return render_chat(version, messages, tokenizer, tools)

    def count_tokens(self, version: ModelVersion, prompt: str) -> int:
        """Prompt tokens in the version's base tokenizer (exact, for caps and tokens/min)."""
        if isinstance(prompt, TokenPrompt):
            return len(prompt.ids)
        base = self._cache.base(self._cache.source(version))
        with self._tokenizer_lock:
            return len(base.tokenizer(prompt)["input_ids"])

    def token_prompt(self, version: ModelVersion, ids: tuple[int, ...]) -> TokenPrompt:
        base = self._cache.base(self._cache.source(version))
        check_token_ids(ids, int(base.model.config.vocab_size), version.ref)
        with self._tokenizer_lock:
            return TokenPrompt(ids, str(base.tokenizer.decode(list(ids))))

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        if self._stop.is_set():
            raise EngineError("the engine is shutting down", hint="Retry on another replica.")
        source = self._cache.source(version)
        base = self._cache.base(source)
        if isinstance(prompt, TokenPrompt):
            ids = list(prompt.ids)  # run as sent
        else:
            with self._tokenizer_lock:
                ids = [int(i) for i in base.tokenizer(prompt)["input_ids"]]
        if not ids:
            raise ConfigError("the prompt is empty", hint="Send some text to complete.")
        params = fit_to_context(params, len(ids), base.context_length, version.ref)
        if params.logit_bias:
            check_bias_ids(params.logit_bias, int(base.model.config.vocab_size), version.ref)
        if params.min_tokens and params.guide is not None:  # the grammar may need to end it
            raise ConfigError(
                f"min_tokens cannot be combined with {params.guide.param.split('.')[0]} on the "
                "transformers engine: the grammar decides where the answer ends",
                hint="Ask without min_tokens, or without the constraint.",
                param="min_tokens",
            )
        unk = base.tokenizer.unk_token_id  # counted here, where the prompt is tokenized anyway
        unknown = 0 if unk is None else sum(1 for i in ids if i == unk)
        request = PendingRequest(version, ids, params, source, unknown_tokens=unknown)
        if params.guide is not None:
            request.matcher = self._grammars(base).matcher(params.guide)
        self._start()
        self._queue.put(request)
        return request.stream

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        return self.stream(version, prompt, params).result()

    def loaded(self) -> list[str]:
        return self._cache.loaded()

    def stats(self) -> EngineStats:
        with self._counts_lock:
            c = dict(self._counts)
        return EngineStats(
            adapter_hits=c["hit"],
            adapter_misses=c["miss"],
            adapter_loads=c["load"],
            adapter_evictions=c["eviction"],
            adapter_load_failures=c["load_failure"],
            batches=c["batches"],
            batched_requests=c["rows"],
            largest_batch=c["largest"],
            queue_depth=self._queue.depth(),
        )

    def close(self) -> None:
        """Stop the scheduler after its current batch; requests still queued fail."""
        self._stop.set()
        with self._thread_lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)
        if thread is None or not thread.is_alive():
            self._cache.close()
        for request in self._queue.drain():
            request.stream.fail(EngineError("the engine shut down before running this request"))

    # -- the scheduler --------------------------------------------------------------------

    def _start(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="modelyard-engine", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        waiting: deque[PendingRequest] = deque()  # taken from the queue, not run yet (in order)
        try:
            while not self._stop.is_set():
                if not waiting:
                    waiting.extend(
                        self._queue.collect(self._max_batch_size, self._window_s, self._stop)
                    )
                    if not waiting:
                        continue
                count = min(len(waiting), self._max_batch_size)
                batch = [waiting.popleft() for _ in range(count)]
                first, *rest = group(batch, self._cache.max_adapters)
                waiting.extendleft(reversed([r for members in rest for r in members]))
                self._run(first, waiting)
        finally:
            for request in waiting:
                request.stream.fail(EngineError("the engine shut down before running this request"))

    def _live(self, requests: list[PendingRequest]) -> list[PendingRequest]:
        """The requests whose client is still there (the others finish as cancelled)."""
        live = []
        for request in requests:
            if request.stream.cancelled:  # the client left while it waited
                request.stream.finish(
                    Generation("", len(request.prompt_ids), 0, "cancelled", ttft_ms=None)
                )
            else:
                live.append(request)
        return live

    def _ready(
        self, requests: list[PendingRequest], keep: Collection[str] = ()
    ) -> tuple[list[PendingRequest], list[int]]:
        """Load the requests' adapters; fail those whose adapter failed. (ready, their slots)"""
        for request in requests:  # for the inference record (cache hit rate in profiles)
            request.cache_hit = self._cache.is_loaded(request.version)
        failures = self._cache.ensure([r.version for r in requests], keep=keep)
        ready = []
        for request in requests:
            error = failures.get(request.version.id)
            if error is None:
                ready.append(request)
            else:
                request.stream.fail(error)
        return ready, self._cache.slots([r.version for r in ready])

    def _run(self, members: list[PendingRequest], waiting: deque[PendingRequest]) -> None:
        """One group: load its adapters, fail the requests whose adapter failed, generate.

        Greedy groups on a model ``DecodeSession`` supports run as a continuous
        batch that later greedy requests join (see ``_join``); the others run one
        ``generate``.
        """
        session: DecodeSession | None = None
        try:
            ready, slots = self._ready(self._live(members))
            if not ready:
                return
            base = self._cache.base(ready[0].source)
            assert base.lora is not None
            self._batch_ran(len(ready))
            if not (ready[0].params.greedy and ready[0].params.plain and self._continuous(base)):
                run_batch(
                    base.model,
                    base.tokenizer,
                    ready,
                    base.lora,
                    slots,
                    base.eos_ids,
                    base.pad_token_id,
                    self._tokenizer_lock,
                )
                return
            session = DecodeSession(
                base.model,
                base.tokenizer,
                base.lora,
                base.eos_ids,
                base.pad_token_id,
                self._tokenizer_lock,
            )
            with torch.inference_mode():
                session.admit(ready, slots)
                accepting = True
                while len(session):
                    if accepting:
                        accepting = self._join(session, base.source, waiting)
                        if not len(session):
                            break
                    session.step()
        except Exception as exc:  # the scheduler must outlive any one batch
            log.exception("a batch of %d requests failed", len(members))
            error = (
                exc
                if isinstance(exc, ModelyardError)
                else EngineError(f"generation failed: {type(exc).__name__}: {exc}")
            )
            rows = session.rows if session is not None else []
            for request in [*members, *(row.request for row in rows)]:
                request.stream.fail(error)
        finally:
            if session is not None:
                session.close()

    def _join(self, session: DecodeSession, source: str, waiting: deque[PendingRequest]) -> bool:
        """Admit the greedy requests waiting for ``source`` into ``session``, up to the room.

        Returns False once a request that cannot join comes next (another base, sampled,
        or no adapter slot): the session then takes no more, so it waits its turn.
        """
        if self._stop.is_set():
            return False
        room = self._max_batch_size - len(session)
        if room <= 0:
            return True
        versions = {row.request.version.id for row in session.rows}
        joining: list[PendingRequest] = []
        accepting = True
        while len(joining) < room:
            request = waiting.popleft() if waiting else self._queue.take()
            if request is None:
                break
            if request.stream.cancelled:
                self._live([request])
                continue
            fits = request.version.id in versions or len(versions) < self._cache.max_adapters
            plain_greedy = request.params.greedy and request.params.plain
            if not (plain_greedy and request.source == source and fits):
                waiting.appendleft(request)  # nothing newer is waiting before it
                accepting = False
                break
            versions.add(request.version.id)
            joining.append(request)
        if joining:
            keep = {adapter_name(row.request.version) for row in session.rows}
            ready, slots = self._ready(joining, keep=keep)
            if ready:
                self._batch_ran(len(ready))
                try:
                    session.admit(ready, slots)
                except Exception as exc:  # the session fails with them (see _run)
                    error = EngineError(f"generation failed: {type(exc).__name__}: {exc}")
                    for request in ready:
                        request.stream.fail(error)
                    raise
        return accepting

    def _grammars(self, base: LoadedBase) -> Grammars:
        """The guides compiled for ``base``'s tokenizer (``_grammar``)."""
        with self._compiled_lock:
            grammars = self._compiled.get(base.source)
            if grammars is None:
                vocab = int(base.model.config.vocab_size)
                grammars = self._compiled[base.source] = Grammars(
                    base.tokenizer, vocab, base.eos_ids
                )
        return grammars

    def _continuous(self, base: LoadedBase) -> bool:
        known = self._continuous_ok.get(base.source)
        if known is None:
            known = self._continuous_ok[base.source] = continuous_supported(base.model)
        return known

    # -- statistics -----------------------------------------------------------------------

    def _adapter_event(self, event: AdapterEvent, version: str) -> None:
        with self._counts_lock:
            self._counts[event] += 1
        for observer in list(self._observer_list()):
            observer.adapter_event(event, version)

    def _batch_ran(self, size: int) -> None:
        with self._counts_lock:
            self._counts["batches"] += 1
            self._counts["rows"] += size
            self._counts["largest"] = max(self._counts["largest"], size)
        for observer in list(self._observer_list()):
            observer.batch_ran(size)


__all__ = [
    "EchoEngine",
    "Engine",
    "EngineError",
    "EngineStats",
    "Generation",
    "SamplingParams",
    "StreamEvent",
    "TokenStream",
    "TransformersEngine",
]
