"""The ``vllm`` engine: modelyard's versions served by vLLM servers it starts and supervises.

One ``VLLMProcess`` per model: a base (its adapters' versions share it) or a
version's own full weights. Adapters come only from the artifact store: the
version's files, verified against the manifest (a tampered one is refused and
audited), are handed to vLLM with ``/v1/load_lora_adapter`` on first use, under
the name ``v<version id>``; at most ``max_adapters`` stay registered per server,
the least recently used unloaded first. Prompts are rendered here, in the
version's template with the base's tokenizer, and sent as completions, so vLLM
sees the same tokens the transformers engine would. Requests go through an
``UpstreamClient``: streamed (``stream``), or, for a client that did not ask to
stream (``answer``), as one non-streamed vLLM request, so that neither vLLM's API
server nor modelyard handles an event per token; either is cut short when its
consumer cancels (``InterruptibleTransport``: vLLM sees the connection close and
aborts the request). An answer's text is stripped as the transformers engine strips it
(``_TrimmedStream``: vLLM detokenizes the first word with its leading space), so the same
version answers the same text on either engine. While a server is starting or restarting
its requests get 503 with ``Retry-After``, and a server that dies mid-request fails that
request (the supervisor restarts it; the adapters are loaded again on next use).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import httpx

from modelyard.artifacts import ArtifactStore
from modelyard.errors import EngineError, EngineOverloaded, ModelyardError, UpstreamError
from modelyard.registry import UpstreamSpec
from modelyard.serving._adapters import ModelSources, served_files
from modelyard.serving._engine import Engine
from modelyard.serving._interruptible import InterruptibleTransport
from modelyard.serving._prompts import render_chat
from modelyard.serving._stream import TokenStream
from modelyard.serving._tools import Tools
from modelyard.serving._types import (
    AdapterEvent,
    EngineStats,
    Generation,
    SamplingParams,
    TokenLogprob,
    TokenPrompt,
    check_token_ids,
)
from modelyard.serving._upstream import UpstreamClient
from modelyard.serving._vllm import VLLMOptions, VLLMProcess
from modelyard.store import ModelVersion, Store

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
DEATH_S = 1.0  # how long a request cut off waits to see whether its server is dying
FAILURE_TTL_S = 10.0  # an adapter that failed to load fails its requests at once this long
SEQS = 256  # vLLM's own default --max-num-seqs: requests it decodes at once


class _TrimmedStream(TokenStream):
    """A stream whose text is stripped as the transformers engine strips an answer
    (``visible_text``): no leading whitespace (vLLM detokenizes the first word as " auto"),
    none at the end; whitespace between words is held back until a word follows it. The
    final ``Generation``'s text is stripped alike. Its producer is one thread."""

    def __init__(self, *, whole: bool = False) -> None:
        super().__init__(whole=whole)
        self._begun = False  # text other than whitespace was pushed
        self._held = ""  # whitespace pushed last, shown once a word follows it

    def push(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        if not self._begun:
            text = text.lstrip()
            self._begun = bool(text)
        body = text.rstrip()
        shown = self._held + body if body else ""
        self._held = text[len(body) :] if body else self._held + text
        super().push(shown, logprobs)

    def finish(
        self, generation: Generation, text: str = "", logprobs: tuple[TokenLogprob, ...] = ()
    ) -> None:
        if text:  # pushed first, so that its whitespace is trimmed like the rest
            self.push(text)
        super().finish(replace(generation, text=generation.text.strip()), "", logprobs)


class _Server:
    """A vLLM process, its client and the adapters registered on it (LRU order)."""

    def __init__(self, process: VLLMProcess, timeout_s: float, connections: int) -> None:
        self.process = process
        self.adapters: OrderedDict[str, str] = OrderedDict()  # lora name -> version ref
        self.in_flight: Counter[str] = Counter()  # lora name -> requests using it now
        self.lock = threading.Lock()
        # Loads and unloads, one at a time: an unload of an evicted name never lands after
        # a new load of that name (whose request would then find no adapter).
        self.admin_lock = threading.Lock()
        self.timeout_s = timeout_s
        self.connections = connections
        self.client: UpstreamClient | None = None
        self.port = 0
        process.on_restart.append(self.forget)

    def forget(self) -> None:
        """After a restart vLLM holds no adapter: register them again on use."""
        with self.lock:
            self.adapters.clear()

    def idle_beyond(self, capacity: int) -> list[tuple[str, str]]:
        """Take out the least recently used adapters beyond ``capacity`` that no request is
        using (call with ``lock`` held): an adapter in use stays registered until its
        requests end, even if that holds more than ``capacity`` for a while."""
        evicted = []
        for name in list(self.adapters):
            if len(self.adapters) <= capacity:
                break
            if self.in_flight[name] == 0:
                evicted.append((name, self.adapters.pop(name)))
        return evicted

    def http(self, translate: Any) -> UpstreamClient:
        """The client for the current process (a restart moves it to another port)."""
        with self.lock:
            if self.client is None or self.port != self.process.port:
                if self.client is not None:
                    self.client.close()
                spec = UpstreamSpec(base_url=self.process.url + "/v1", model=self.process.name,
                                    timeout_s=self.timeout_s, max_retries=0,
                                    max_concurrency=self.connections)  # fmt: skip
                transport = InterruptibleTransport(spec.max_concurrency)
                self.client = UpstreamClient(spec, transport=transport, translate=translate,
                                             vllm=True)  # fmt: skip
                self.port = self.process.port
            return self.client


class VLLMEngine(Engine):
    """Versions served by supervised vLLM servers (see the module doc)."""

    name = "vllm"
    guides = True  # sent as vLLM's structured_outputs (the same grammar: ``_upstream``)
    logprobs = True
    shapes = True  # sent as the OpenAI request's presence/frequency_penalty and logit_bias
    extends = True  # sent as vLLM's top_k, min_p, repetition_penalty and min_tokens
    scores_prompts = True  # echo with logprobs: vLLM's prompt_logprobs, by token id

    def __init__(
        self,
        artifacts: ArtifactStore,
        options: VLLMOptions,
        *,
        store: Store | None = None,
        max_adapters: int = 8,
        max_queue: int = 256,
        log_dir: Path,
        request_timeout_s: float = 600.0,
    ) -> None:
        self.artifacts, self.options, self.store = artifacts, options, store
        self.max_adapters = max_adapters
        self.max_queue = max_queue
        self.log_dir = log_dir
        self.request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._servers: dict[str, _Server] = {}  # by model directory
        self._sources = ModelSources(store, artifacts)
        self._tokenizers: dict[str, Any] = {}
        # one worker per request sent to vLLM: as many at once as it batches (fewer, and
        # vLLM's batches could never fill), the others wait here, up to ``max_queue``
        self.workers = options.max_num_seqs or SEQS
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vllm-request")
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._counts: dict[AdapterEvent, int] = dict.fromkeys(get_args(AdapterEvent), 0)
        self._failures: dict[int, tuple[float, EngineError]] = {}  # version id -> (until, why)

    # -- where a version runs ---------------------------------------------------------------

    def _source(self, version: ModelVersion) -> str:
        return self._sources(version)

    def _verified(self, version: ModelVersion) -> Path:
        return Path(served_files(self.store, self.artifacts, version))

    def _server(self, source: str) -> _Server:
        with self._lock:
            found = self._servers.get(source)
            if found is None:
                tag = hashlib.sha256(source.encode()).hexdigest()[:8]
                process = VLLMProcess(self.options, source, "base",
                                      self.log_dir / f"vllm-{tag}.log")  # fmt: skip
                found = self._servers[source] = _Server(process, self.request_timeout_s,
                                                        self.workers)  # fmt: skip
                process.start()
            return found

    def warm(self, version: ModelVersion, timeout: float) -> bool:
        """Start the server ``version`` runs on (if needed) and wait until it is ready."""
        return self._server(self._source(version)).process.wait_ready(timeout)

    def start_for(self, store: Store) -> int:
        """Start (without waiting) the servers of every version the store's endpoints route
        to, so that first requests do not wait for them; returns how many servers. A version
        that cannot be served is left to its requests to report."""
        versions = {r.version_id for ep in store.list_endpoints() for r in ep.routes}
        for version_id in sorted(versions):
            version = store.get_model_version_by_id(version_id)
            if version.kind in ("adapter", "full"):
                try:
                    self._server(self._source(version))
                except ModelyardError as exc:
                    log.warning("not starting vLLM for %s: %s", version.ref, exc.one_line())
        with self._lock:
            return len(self._servers)

    def problem(self) -> str | None:
        """One of its vLLM servers is not ready (still starting, or starting again after it
        died): its versions' requests get 503 until it is."""
        with self._lock:
            processes = [server.process for server in self._servers.values()]
        down = sum(not p.ready() for p in processes)
        return f"{down} of {len(processes)} vLLM servers not ready" if down else None

    def wait_started(self, timeout_s: float) -> list[VLLMProcess]:
        """Wait up to ``timeout_s`` for every server started so far to be ready; returns
        those that are not (they go on starting under their supervisor)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            processes = [server.process for server in self._servers.values()]
        for process in processes:
            process.wait_ready(max(0.0, deadline - time.monotonic()))
        return [p for p in processes if not p.ready()]

    def process(self, version: ModelVersion) -> VLLMProcess:
        """The vLLM process ``version`` runs on (tests of crashes and restarts)."""
        return self._server(self._source(version)).process

    # -- adapters ---------------------------------------------------------------------------

    @contextmanager
    def _using(self, server: _Server, version: ModelVersion) -> Iterator[str]:
        """The model name vLLM knows ``version`` by, registered when needed and kept
        registered (never evicted) until the request that uses it ends."""
        name = self._model_name(server, version)
        try:
            yield name
        finally:
            if version.kind != "full":
                with server.lock:
                    server.in_flight[name] -= 1
                    if server.in_flight[name] <= 0:
                        del server.in_flight[name]
                self._evict(server, version)

    def _evict(self, server: _Server, version: ModelVersion) -> None:
        """Unload the idle adapters beyond ``max_adapters`` (least recently used first)."""
        with server.lock:  # the common case, at every request's end: nothing to do, and
            if len(server.adapters) <= self.max_adapters:  # no wait on a load in progress
                return
        with server.admin_lock:
            with server.lock:
                evicted = server.idle_beyond(self.max_adapters)
            for old, ref in evicted:
                self._event("eviction", ref)
                try:
                    self._admin(server, "/v1/unload_lora_adapter", {"lora_name": old}, version)
                except ModelyardError as exc:  # vLLM down: a restart forgets every adapter
                    log.warning("could not unload the adapter of %s: %s", ref, exc.one_line())

    def _model_name(self, server: _Server, version: ModelVersion) -> str:
        """The model name vLLM knows ``version`` by, registering its adapter when needed;
        an adapter's name is counted in use (``_using`` releases it)."""
        if version.kind == "full":
            return server.process.name
        name = f"v{version.id}"
        if self._hit(server, name, version):
            return name
        path = self._missed(version)  # verified outside the lock: other loads go on
        with server.admin_lock:
            if self._hit(server, name, version):  # registered while this waited
                return name
            self._load(server, name, version, path)
        self._evict(server, version)
        return name

    def _hit(self, server: _Server, name: str, version: ModelVersion) -> bool:
        with server.lock:
            if name not in server.adapters:
                return False
            server.adapters.move_to_end(name)
            server.in_flight[name] += 1
        self._event("hit", version.ref)
        return True

    def _missed(self, version: ModelVersion) -> Path:
        """The verified files of an adapter vLLM does not hold, or its recent failure."""
        self._event("miss", version.ref)
        with self._lock:
            failed = self._failures.get(version.id)
        if failed is not None and failed[0] > time.monotonic():
            raise failed[1]  # a bad adapter costs its requests no hashing and no vLLM call
        try:
            return self._verified(version)
        except EngineError as exc:
            self._failed(version, exc)
            raise

    def _load(self, server: _Server, name: str, version: ModelVersion, path: Path) -> None:
        """Register ``version``'s adapter (at ``path``) with vLLM as ``name`` (``admin_lock``
        held)."""
        body = {"lora_name": name, "lora_path": str(path)}
        try:
            r = self._admin(server, "/v1/load_lora_adapter", body, version)
        except EngineError:  # vLLM is down: not the adapter's fault, not remembered
            self._event("load_failure", version.ref)
            raise
        if r.status_code != 200 and "already" not in r.text:
            error = EngineError(
                f"vLLM refused the adapter of {version.ref} ({r.status_code}): "
                f"{' '.join(r.text.split())[:300]}",
                hint="Check the adapter fits the base and --vllm-max-lora-rank.",
                version=version.ref,
            )
            self._failed(version, error)
            raise error
        self._event("load", version.ref)
        with server.lock:
            server.adapters[name] = version.ref
            server.in_flight[name] += 1

    def _failed(self, version: ModelVersion, error: EngineError) -> None:
        """Its adapter cannot be used: fail its requests at once for ``FAILURE_TTL_S``."""
        with self._lock:
            self._failures[version.id] = (time.monotonic() + FAILURE_TTL_S, error)
        self._event("load_failure", version.ref)
        log.warning("adapter load failed: %s", error.one_line())

    def _event(self, event: AdapterEvent, ref: str) -> None:
        """Count an adapter registration event and tell the observers (the app's metrics:
        ``modelyard_adapter_cache_hits_total`` and the others, as on the transformers engine)."""
        with self._lock:
            self._counts[event] += 1
        for observer in list(self._observer_list()):
            observer.adapter_event(event, ref)

    def stats(self) -> EngineStats:
        with self._lock:
            c = dict(self._counts)
        return EngineStats(adapter_hits=c["hit"], adapter_misses=c["miss"],
                           adapter_loads=c["load"], adapter_evictions=c["eviction"],
                           adapter_load_failures=c["load_failure"])  # fmt: skip

    def _admin(
        self, server: _Server, path: str, body: dict[str, str], version: ModelVersion
    ) -> httpx.Response:
        try:
            return httpx.post(server.process.url + path, json=body, timeout=60)
        except httpx.HTTPError as exc:
            raise self._down(server, version.ref, type(exc).__name__) from None

    def _down(self, server: _Server, what: str, why: str) -> EngineError:
        return EngineError(
            f"{what}: the vLLM server is not answering "
            f"({why}; {server.process.problem or 'it stopped'})",
            hint="Retry shortly: it is being restarted.",
            retry_after=RETRY_AFTER_S,
        )

    def _translator(self, server: _Server) -> Callable[[ModelyardError], ModelyardError]:
        """A failed request of ``server``'s while it is down: a 503 to retry, naming the
        version the error names (the client is shared by every request of the server)."""

        def translate(error: ModelyardError) -> ModelyardError:
            if isinstance(error, UpstreamError) and server.process.dying(DEATH_S):
                what = str(error.context.get("version", "a request"))
                return self._down(server, what, "it stopped mid-request")
            return error

        return translate

    # -- the interface ----------------------------------------------------------------------

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.refuse_unsupported(params)
        return self._submit(version, prompt, params, whole=False)

    def answer(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        """One non-streamed vLLM request: its whole answer in one response."""
        self.refuse_unsupported(params)
        if params.prompt_logprobs and not isinstance(prompt, TokenPrompt):
            # sent as ids: vLLM's prompt log probabilities are keyed by token id
            ids = self._tokenizer(version)(prompt)["input_ids"]
            prompt = TokenPrompt(tuple(int(i) for i in ids), prompt)
        return self._submit(version, prompt, params, whole=True)

    def _submit(
        self, version: ModelVersion, prompt: str, params: SamplingParams, *, whole: bool
    ) -> TokenStream:
        server = self._server(self._source(version))
        if not server.process.ready():
            raise EngineError(
                f"{version.ref}: its vLLM server is not ready "
                f"({server.process.problem or 'it stopped; restarting'})",
                hint="Retry shortly.",
                retry_after=RETRY_AFTER_S,
            )
        with self._pending_lock:
            if self._pending >= self.workers + self.max_queue:
                raise EngineOverloaded(
                    f"{version.ref}: {self._pending - self.workers} requests are waiting for "
                    f"vLLM ({self.workers} at once; --max-queue {self.max_queue})"
                )
            self._pending += 1
        out = _TrimmedStream(whole=whole)

        def run() -> None:
            try:
                with self._using(server, version) as model:
                    client = server.http(self._translator(server))
                    client.run(prompt, params, out, what=version.ref, model=model, whole=whole)
            except ModelyardError as exc:
                out.fail(exc)
            except Exception as exc:  # the stream must end, whatever happened
                log.exception("vLLM request of %s failed", version.ref)
                out.fail(EngineError(f"{version.ref}: the vLLM request failed: {exc}"))
            finally:
                with self._pending_lock:
                    self._pending -= 1

        try:
            self._pool.submit(run)
        except RuntimeError:  # closed: the server is stopping
            with self._pending_lock:
                self._pending -= 1
            raise EngineError("the engine is shutting down", hint="Retry on another replica.",
                              retry_after=RETRY_AFTER_S) from None  # fmt: skip
        return out

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        return self.answer(version, prompt, params).result()

    def _tokenizer(self, version: ModelVersion) -> Any:
        source = self._source(version)
        with self._lock:
            found = self._tokenizers.get(source)
        if found is None:
            from modelyard.base import load_tokenizer

            found = load_tokenizer(source)
            with self._lock:
                self._tokenizers[source] = found
        return found

    def render_chat(
        self, version: ModelVersion, messages: Sequence[Mapping[str, Any]], tools: Tools = None
    ) -> str:
        return render_chat(version, messages, self._tokenizer(version), tools)

    def count_tokens(self, version: ModelVersion, prompt: str) -> int:
        if isinstance(prompt, TokenPrompt):
            return len(prompt.ids)
        return len(self._tokenizer(version)(prompt)["input_ids"])

    def token_prompt(self, version: ModelVersion, ids: tuple[int, ...]) -> TokenPrompt:
        tokenizer = self._tokenizer(version)
        check_token_ids(ids, len(tokenizer), version.ref)
        return TokenPrompt(ids, str(tokenizer.decode(list(ids))))

    def loaded(self) -> list[str]:
        with self._lock:
            servers = list(self._servers.values())
        refs: list[str] = []
        for server in servers:
            with server.lock:
                refs += list(server.adapters.values())
        return refs

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.process.stop()
            if server.client is not None:
                server.client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["VLLMEngine"]
