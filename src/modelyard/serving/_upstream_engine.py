"""The ``upstream`` engine: versions whose tokens come from another OpenAI-compatible server.

A version of kind ``upstream`` holds an ``UpstreamSpec`` in its artifact; the
engine reads it through the artifact store's verification (a tampered spec is
refused like tampered weights), keeps one pooled ``UpstreamClient`` per
version, and runs each request on a worker of that version's own pool: at most
``max_concurrency`` requests at once per upstream, and at most four times that
waiting (beyond it: ``EngineOverloaded``, a 503 with ``Retry-After``). Chat
requests go to the upstream as messages (``ChatPrompt``), completions as
prompts. A consumer that leaves closes the upstream connection at the next chunk.
A client that did not ask to stream is still answered from a streamed upstream
request (``Engine.answer``: it is woken once, at the end): the spec's
``timeout_s`` bounds the wait for each chunk, and a whole answer in one response
would have to come within it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.errors import EngineError, EngineOverloaded, ModelyardError
from modelyard.registry import UpstreamSpec, verified_files
from modelyard.serving._engine import Engine
from modelyard.serving._passthrough import openai_extras
from modelyard.serving._stream import TokenStream
from modelyard.serving._tools import Tools
from modelyard.serving._types import (
    EngineObserver,
    EngineStats,
    Generation,
    SamplingParams,
    TokenPrompt,
)
from modelyard.serving._upstream import DETAILS, ChatPrompt, UpstreamClient
from modelyard.store import ModelVersion, Store

log = logging.getLogger(__name__)

QUEUE_FACTOR = 4  # requests waiting per upstream, as a multiple of its concurrency


class _Upstream:
    """One version's client, worker pool and count of requests in it."""

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.client = UpstreamClient(spec)
        self.pool = ThreadPoolExecutor(spec.max_concurrency, thread_name_prefix="upstream")
        self.lock = threading.Lock()
        self.pending = 0

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


class UpstreamEngine(Engine):
    """Answers versions of kind ``upstream`` (see the module doc); any other kind is refused."""

    name = "upstream"
    guides = True  # as OpenAI's response_format and tool_choice (``_passthrough``)
    logprobs = True
    shapes = True  # sent as the OpenAI request's presence/frequency_penalty and logit_bias

    def __init__(self, artifacts: ArtifactStore, *, store: Store | None = None) -> None:
        self.artifacts = artifacts
        self.store = store
        self._lock = threading.Lock()
        self._upstreams: dict[int, _Upstream] = {}

    def spec(self, version: ModelVersion) -> UpstreamSpec:
        return self._upstream(version).spec

    def _upstream(self, version: ModelVersion) -> _Upstream:
        if version.kind != "upstream":
            raise EngineError(f"{version.ref} is a {version.kind} version, not an upstream",
                              version=version.ref)  # fmt: skip
        with self._lock:
            found = self._upstreams.get(version.id)
        if found is not None:
            return found
        try:
            spec = UpstreamSpec.read(
                verified_files(self.store, self.artifacts, version, by="serve")
            )
        except ModelyardError as exc:
            raise EngineError(f"{version.ref}: its upstream spec cannot be used: {exc.message}",
                              version=version.ref) from None  # fmt: skip
        with self._lock:
            found = self._upstreams.setdefault(version.id, _Upstream(spec))
        log.info("%s answers from %s (model %s, key from %s)", version.ref, spec.host,
                 spec.model, spec.credential)  # fmt: skip
        return found

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.refuse_unsupported(params)
        openai_extras(params, isinstance(prompt, ChatPrompt), ())  # what it cannot pass: 400
        upstream = self._upstream(version)
        cap = upstream.spec.max_concurrency * QUEUE_FACTOR
        with upstream.lock:
            if upstream.pending >= cap:
                raise EngineOverloaded(
                    f"{version.ref}: {upstream.pending} requests are waiting for its upstream "
                    f"({upstream.spec.max_concurrency} at once)"
                )
            upstream.pending += 1
        out = TokenStream()

        def run() -> None:
            try:
                upstream.client.run(prompt, params, out, what=version.ref)
            except Exception as exc:  # the stream must end, whatever happened
                log.exception("upstream request of %s failed", version.ref)
                out.fail(EngineError(f"{version.ref}: the upstream request failed: {exc}",
                                     public=f"{version.ref}: the upstream request failed; "
                                     f"{DETAILS}"))  # fmt: skip
            finally:
                with upstream.lock:
                    upstream.pending -= 1

        upstream.pool.submit(run)
        return out

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        return self.stream(version, prompt, params).result()

    def render_chat(
        self, version: ModelVersion, messages: Sequence[Mapping[str, Any]], tools: Tools = None
    ) -> str:
        """The messages as they are (and the tools offered): the upstream applies its own
        chat template."""
        return ChatPrompt(messages, tools or ())

    def loaded(self) -> list[str]:
        return []

    def close(self) -> None:
        with self._lock:
            upstreams, self._upstreams = list(self._upstreams.values()), {}
        for upstream in upstreams:
            upstream.close()


class EngineSet(Engine):
    """The engine the app talks to: versions of kind ``upstream`` go to ``upstream``, every
    other version to ``local`` (the transformers or vLLM engine). Traffic plans may mix them."""

    def __init__(self, local: Engine, upstream: UpstreamEngine) -> None:
        self.local = local
        self.upstream = upstream
        self.name = local.name

    def _for(self, version: ModelVersion) -> Engine:
        return self.upstream if version.kind == "upstream" else self.local

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        return self._for(version).generate(version, prompt, params)

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        return self._for(version).stream(version, prompt, params)  # it refuses what it can't do

    def answer(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        return self._for(version).answer(version, prompt, params)

    def render_chat(
        self, version: ModelVersion, messages: Sequence[Mapping[str, Any]], tools: Tools = None
    ) -> str:
        return self._for(version).render_chat(version, messages, tools)

    def count_tokens(self, version: ModelVersion, prompt: str) -> int:
        return self._for(version).count_tokens(version, prompt)

    def token_prompt(self, version: ModelVersion, ids: tuple[int, ...]) -> TokenPrompt:
        return self._for(version).token_prompt(version, ids)

    def loaded(self) -> list[str]:
        return self.local.loaded()

    def problem(self) -> str | None:
        return self.local.problem()  # an upstream's outage is its versions' own 503s

    def stats(self) -> EngineStats:
        return self.local.stats()

    def add_observer(self, observer: EngineObserver) -> None:
        self.local.add_observer(observer)

    def remove_observer(self, observer: EngineObserver) -> None:
        self.local.remove_observer(observer)

    def close(self) -> None:
        self.upstream.close()
        self.local.close()


__all__ = ["EngineSet", "UpstreamEngine"]
