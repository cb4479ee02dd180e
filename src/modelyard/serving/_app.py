"""The data plane: an OpenAI-compatible FastAPI app over the store, a router and an engine.

Around every request: the guard (``_guard``: draining, body cap), the key
(cached for ``key_cache_seconds``) and its scope, then ``DataPlane.submit``:
route, render, the prompt-token cap, the key's rate limits (``_limits``), the
engine. ``finish`` records the outcome and gives back unused tokens. A request
past ``request_timeout_s`` is cancelled and answered 504.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

import modelyard
from modelyard.access import authenticate
from modelyard.errors import (
    AuthError,
    ConfigError,
    EngineOverloaded,
    InvalidApiKey,
    MissingScope,
    ModelyardError,
    NotFound,
    RateLimited,
    RequestTimeout,
    status_of,
)
from modelyard.monitoring import (
    MonitoringCollector,
    RecordWriter,
    apply_storage_policy,
    record_features,
)
from modelyard.serving._agent import ServerAgent
from modelyard.serving._engine import Engine, EngineError, Generation, SamplingParams
from modelyard.serving._guard import GuardMiddleware
from modelyard.serving._health import LoadHealth, load_failure_of
from modelyard.serving._limits import Admission, RateLimiter, count_prompt_tokens
from modelyard.serving._router import Route, Router
from modelyard.serving._shutdown import Drain
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import AdapterEvent
from modelyard.store import ApiKey, Feedback, ModelVersion, NewInferenceRecord, Store, Tenant

if TYPE_CHECKING:
    from modelyard.delivery import Controller

log = logging.getLogger(__name__)
T = TypeVar("T")


def _param_of(exc: ModelyardError) -> str | None:
    param = exc.context.get("param")
    return param if isinstance(param, str) else None


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


# -- request and response models (the OpenAI wire format) ----------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, cap: int) -> SamplingParams:
        wanted = self.max_completion_tokens or self.max_tokens or min(64, cap)
        if wanted > cap:
            field_name = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
            raise ConfigError(
                f"{field_name} is {wanted}, above this server's limit of {cap} "
                "(max_tokens cap, --max-tokens-cap)",
                hint=f"Ask for at most {cap} tokens.",
                param=field_name,
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(wanted, self.temperature, self.top_p, self.seed, stop)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a verdict on one answered request (by its ``id``)."""

    model_config = ConfigDict(extra="ignore")
    request_id: str = Field(min_length=1, max_length=64)
    score: float | None = Field(default=None, ge=-1.0, le=1.0, allow_inf_nan=False)
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(default=None, max_length=4000)

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


@dataclass(frozen=True)
class ServerLimits:
    """What a server allows; ``None`` turns a limit off.

    ``max_tokens`` caps ``max_tokens`` per request; ``key_cache_seconds`` is how
    long an authenticated key is trusted before the store is asked again (a
    revocation or a limit change applies within it); ``max_body_bytes`` caps
    request bodies (413); ``max_prompt_tokens`` caps prompts (400);
    ``request_timeout_s`` bounds a request from admission to its last token
    (504); ``default_rpm``/``default_tpm`` apply to keys without their own limits.
    """

    max_tokens: int = 256
    key_cache_seconds: float = 10.0
    max_body_bytes: int | None = 1_048_576
    max_prompt_tokens: int | None = None
    request_timeout_s: float | None = 120.0
    default_rpm: int | None = None
    default_tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_body_bytes", "max_prompt_tokens", "default_rpm",
                     "default_tpm"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} is {value}; it must be at least 1", field=name)
        for name in ("key_cache_seconds", "request_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"{name} is {value}; it must be 0 or more", field=name)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["endpoint", "version", "tenant"]
        self.requests = Counter(
            "modelyard_requests", "Inference requests", [*labels, "status"], registry=self.registry
        )
        self.latency = Histogram(
            "modelyard_request_latency_seconds", "Request latency", labels, registry=self.registry
        )
        self.tokens = Counter(
            "modelyard_tokens", "Tokens processed", [*labels, "kind"], registry=self.registry
        )
        self.dropped = Counter(
            "modelyard_records_dropped", "Inference records dropped", registry=self.registry
        )
        self.ttft = Histogram(
            "modelyard_time_to_first_token_seconds",
            "Time from submission to the first generated token",
            labels,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelyard_batch_size",
            "Requests run together in one generate call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelyard_queue_depth", "Requests waiting for the engine", registry=self.registry
        )
        self.rate_limited = Counter(
            "modelyard_rate_limited",
            "Requests refused by a key's rate limit",
            ["tenant", "limit"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "modelyard_feedback", "Feedback received", ["tenant"], registry=self.registry
        )
        self.shadow = Counter(
            "modelyard_shadow_requests",
            "Requests mirrored to a shadow version (answers recorded, never returned)",
            [*labels, "status"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "modelyard_fallbacks",
            "Requests whose version could not be loaded, answered by another version of the plan",
            ["endpoint", "version", "answered_by"],
            registry=self.registry,
        )
        self.adapter = {
            event: Counter(f"modelyard_adapter_{name}", help_, ["version"], registry=self.registry)
            for event, name, help_ in (
                ("hit", "cache_hits", "Requests whose adapter was already loaded"),
                ("miss", "cache_misses", "Requests whose adapter was not loaded"),
                ("load", "loads", "Adapters loaded"),
                ("eviction", "evictions", "Adapters evicted (least recently used)"),
                ("load_failure", "load_failures", "Adapters that failed to load"),
            )
        }

    # EngineObserver: the engine reports adapter cache events and batches here.
    def adapter_event(self, event: AdapterEvent, version: str) -> None:
        self.adapter[event].labels(version).inc()

    def batch_ran(self, size: int) -> None:
        self.batch_size.observe(size)


class _KeyCache:
    """Authenticated keys cached briefly, so a revocation takes effect within the TTL."""

    def __init__(self, store: Store, ttl: float) -> None:
        self._store, self._ttl = store, ttl
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def get(self, raw: str) -> ApiKey:
        digest = hashlib.sha256(raw.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and hit[0] > now:
            expires = hit[1].expires_at
            if expires is not None and expires <= datetime.now(UTC):  # e.g. a rotation's grace
                raise InvalidApiKey("the API key has expired")
            return hit[1]
        key = authenticate(self._store, raw)
        with self._lock:
            self._cache[digest] = (now + self._ttl, key)
        return key


@dataclass(frozen=True)
class Submitted:
    """A request routed, rendered and handed to the engine; its events come on ``stream``."""

    record_id: str
    key: ApiKey
    route: str
    endpoint: str
    version: ModelVersion
    prompt: str
    stream: TokenStream
    started: float
    admission: Admission | None = None
    deadline: float | None = None  # time.perf_counter() by which it must end
    fallback_from: ModelVersion | None = None  # routed there, answered by ``version`` instead
    route_obj: Route | None = field(default=None, repr=False, compare=False)
    user: str | None = None
    params: SamplingParams | None = field(default=None, repr=False, compare=False)
    render: Callable[[ModelVersion], str] | None = field(default=None, repr=False, compare=False)
    # taken by the first ``finish``, never released: a request is recorded once
    _finished: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def remaining(self) -> float | None:
        """Seconds left before the request timeout (None: no timeout)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.perf_counter())


_RECENT_RECORDS = 10_000


class DataPlane:
    """Everything a request needs, shared by the routes."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        router: Router,
        writer: RecordWriter,
        limits: ServerLimits,
    ) -> None:
        self.store, self.engine, self.router, self.writer = store, engine, router, writer
        self.limits = limits
        self.metrics = _Metrics()
        self.keys = _KeyCache(store, limits.key_cache_seconds)
        self.limiter = RateLimiter(default_rpm=limits.default_rpm, default_tpm=limits.default_tpm)
        self._tenants: dict[str, Tenant] = {}
        self.ready = threading.Event()
        self.health = LoadHealth()
        self.drain = Drain()
        self.drain.on_begin(self.ready.clear)
        # Records handed to the writer, not necessarily written yet (id -> tenant id), so
        # feedback on a request just answered waits for its record instead of a 404.
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._recent_lock = threading.Lock()

    def tenant(self, name: str) -> Tenant:
        if name not in self._tenants:
            self._tenants[name] = self.store.get_tenant(name)
        return self._tenants[name]

    def submit(
        self,
        key: ApiKey,
        route: str,
        endpoint: str,
        user: str | None,
        params: SamplingParams,
        render: Callable[[ModelVersion], str],
    ) -> Submitted:
        """Route, render and hand one request to the engine (blocking: run it off the loop).

        A failure here is recorded and raised; after it, ``finish`` records the outcome.
        """
        record_id = f"cmpl-{uuid.uuid4().hex}"
        started = time.perf_counter()
        version: ModelVersion | None = None
        prompt: str | None = None
        admission: Admission | None = None
        try:
            self.tenant(key.tenant)  # cached, so that finishing never waits on the store
            chosen = self.router.route(endpoint, key)
            version = self.router.pick(chosen, user)
            assert version is not None  # a route has at least one version with weight
            fallback_from = None
            if self.health.is_failed(version.ref):
                failed = frozenset(v.id for v, _ in chosen.choices if self.health.is_failed(v.ref))
                alternative = self.router.pick(chosen, user, exclude=failed)
                if alternative is not None:
                    fallback_from, version = version, alternative
            prompt = render(version)
            prompt_tokens = count_prompt_tokens(self.engine, version, prompt)
            cap = self.limits.max_prompt_tokens
            if cap is not None and prompt_tokens > cap:
                raise ConfigError(
                    f"the prompt has {prompt_tokens} tokens, above this server's limit of "
                    f"{cap} prompt tokens (--max-prompt-tokens)",
                    hint="Shorten the prompt.",
                    param="messages" if route == "chat.completions" else "prompt",
                )
            try:
                admission = self.limiter.admit(key, prompt_tokens + params.max_tokens)
            except RateLimited as limited:
                self.metrics.rate_limited.labels(key.tenant, limited.limit).inc()
                raise
            try:
                stream = self.engine.stream(version, prompt, params)
            except EngineError as refused:  # an engine that refuses a version at submission
                alternative = self._alternative(chosen, user, version, refused)
                if alternative is None:
                    raise
                fallback_from, version = fallback_from or version, alternative
                prompt = render(version)
                stream = self.engine.stream(version, prompt, params)
        except ModelyardError as exc:
            if admission is not None:
                self.limiter.settle(admission, 0)
            self._record(record_id, key, route, endpoint, version, prompt, None, started, exc=exc)
            raise
        timeout = self.limits.request_timeout_s
        deadline = None if timeout is None else started + timeout
        if self.router.mirror(chosen):
            self._mirror(key, route, endpoint, chosen, params, render)
        return Submitted(
            record_id, key, route, endpoint, version, prompt, stream, started, admission, deadline,
            fallback_from, chosen, user, params, render,
        )  # fmt: skip

    def fall_back(self, sub: Submitted, exc: ModelyardError) -> Submitted | None:
        """When ``sub``'s version could not be loaded, the same request on another version of
        the plan (recorded as a fallback), or None when there is none (blocking)."""
        if sub.route_obj is None or sub.render is None or sub.params is None:
            return None
        alternative = self._alternative(sub.route_obj, sub.user, sub.version, exc)
        if alternative is None:
            return None
        try:
            prompt = sub.render(alternative)
            stream = self.engine.stream(alternative, prompt, sub.params)
        except ModelyardError:
            return None
        log.warning("%s failed to load; %s answers for it", sub.version.ref, alternative.ref)
        return dataclasses.replace(
            sub,
            version=alternative,
            prompt=prompt,
            stream=stream,
            fallback_from=sub.fallback_from or sub.version,
        )

    def _alternative(
        self, route: Route, user: str | None, version: ModelVersion, exc: ModelyardError
    ) -> ModelVersion | None:
        """Another version of the plan when ``exc`` says ``version`` could not be loaded."""
        if not load_failure_of(exc, version):
            return None
        self.health.failed(version.ref, exc.message)
        failed = frozenset(v.id for v, _ in route.choices if self.health.is_failed(v.ref))
        return self.router.pick(route, user, exclude=failed)

    def _mirror(
        self,
        key: ApiKey,
        route: str,
        endpoint: str,
        chosen: Route,
        params: SamplingParams,
        render: Callable[[ModelVersion], str],
    ) -> None:
        """Send a copy of a request to the shadow version; its answer is recorded, never
        returned, and nothing it does (failing included) touches the live request."""
        shadow = chosen.shadow
        assert shadow is not None
        record_id = f"cmpl-{uuid.uuid4().hex}"
        started = time.perf_counter()
        prompt: str | None = None
        try:
            prompt = render(shadow)
            stream = self.engine.stream(shadow, prompt, params)
        except ModelyardError as exc:
            self._record(record_id, key, route, endpoint, shadow, prompt, None, started,
                         exc=exc, shadow=True)  # fmt: skip
            return
        stream.on_finish(
            lambda gen, exc: self._record(
                record_id,
                key,
                route,
                endpoint,
                shadow,
                prompt,
                gen,
                started,
                exc=exc,
                shadow=True,
            )
        )

    def finish(
        self,
        sub: Submitted,
        gen: Generation | None,
        *,
        exc: ModelyardError | None = None,
        cancelled: bool = False,
        timed_out: bool = False,
    ) -> None:
        """Record how a submitted request ended (``cancelled``: its client went away;
        ``timed_out``: it ran past the request timeout) and give back unused tokens."""
        if not sub._finished.acquire(blocking=False):
            return  # finished already (a timeout raced with the end)
        if sub.admission is not None:
            used = gen.prompt_tokens + gen.completion_tokens if gen is not None else 0
            self.limiter.settle(sub.admission, used)
        self._record(
            sub.record_id,
            sub.key,
            sub.route,
            sub.endpoint,
            sub.version,
            sub.prompt,
            gen,
            sub.started,
            exc=exc,
            cancelled=cancelled,
            timed_out=timed_out,
            fallback_from=sub.fallback_from,
        )

    def timed_out(self, sub: Submitted) -> RequestTimeout:
        """Cancel a request that ran past the timeout; it is recorded (``timeout``) when its
        generation stops. Returns the error to answer with."""
        timeout = self.limits.request_timeout_s
        error = RequestTimeout(
            f"the request did not finish within this server's timeout of {timeout:g} s "
            "(--request-timeout-s); its generation was stopped"
        )
        sub.stream.cancel()
        sub.stream.on_finish(lambda gen, _exc: self.finish(sub, gen, exc=error, timed_out=True))
        return error

    def add_feedback(
        self, key: ApiKey, request_id: str, score: float, comment: str | None
    ) -> Feedback:
        """Store a verdict on one of the key's tenant's requests (blocking: run it off the loop).

        A request answered here moments ago may not be written yet: wait for the
        record writer once, then ask again.
        """
        try:
            return self.store.add_feedback(
                request_id, tenant=key.tenant, score=score, comment=comment, api_key_id=key.id
            )
        except NotFound:
            with self._recent_lock:
                pending = self._recent.get(request_id) == key.tenant_id
            if not pending:
                raise
        self.writer.flush(timeout=5.0)
        return self.store.add_feedback(
            request_id, tenant=key.tenant, score=score, comment=comment, api_key_id=key.id
        )

    def run(
        self,
        key: ApiKey,
        route: str,
        endpoint: str,
        user: str | None,
        params: SamplingParams,
        render: Callable[[ModelVersion], str],
    ) -> tuple[str, ModelVersion, Generation]:
        """Route, generate and record one request; returns (record id, version, generation)."""
        sub = self.submit(key, route, endpoint, user, params, render)
        try:
            gen = sub.stream.result()
        except ModelyardError as exc:
            self.finish(sub, None, exc=exc)
            raise
        self.finish(sub, gen)
        return sub.record_id, sub.version, gen

    def _record(
        self,
        record_id: str,
        key: ApiKey,
        route: str,
        endpoint: str,
        version: ModelVersion | None,
        prompt: str | None,
        gen: Generation | None,
        started: float,
        exc: ModelyardError | None = None,
        cancelled: bool = False,
        timed_out: bool = False,
        shadow: bool = False,
        fallback_from: ModelVersion | None = None,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        policy = self.tenant(key.tenant).storage_policy
        status = 200 if exc is None else status_of(exc).http_status
        if timed_out:
            outcome = "timeout"
        elif cancelled or (gen is not None and gen.finish_reason == "cancelled"):
            outcome = "cancelled"
        else:
            outcome = "ok" if exc is None else "error"
        version_ref = version.ref if version else ""
        labels = (endpoint if version else "", version_ref, key.tenant)
        if exc is not None and version is not None and load_failure_of(exc, version):
            self.health.failed(version.ref, exc.message)
        if shadow:
            self.metrics.shadow.labels(*labels, outcome).inc()
        else:
            self.metrics.requests.labels(*labels, outcome).inc()
        if fallback_from is not None:
            self.metrics.fallbacks.labels(endpoint, fallback_from.ref, version_ref).inc()
        self.metrics.latency.labels(*labels).observe(latency_ms / 1000)
        if gen is not None:
            self.metrics.tokens.labels(*labels, "prompt").inc(gen.prompt_tokens)
            self.metrics.tokens.labels(*labels, "completion").inc(gen.completion_tokens)
            if gen.ttft_ms is not None:
                self.metrics.ttft.labels(*labels).observe(gen.ttft_ms / 1000)
        self.writer.submit(
            NewInferenceRecord(
                id=record_id,
                endpoint_name=endpoint,
                route=route,
                latency_ms=latency_ms,
                status=outcome,
                http_status=status,
                tenant_id=key.tenant_id,
                api_key_id=key.id,
                version_id=version.id if version else None,
                prompt=apply_storage_policy(prompt, policy),
                response=apply_storage_policy(gen.text if gen else None, policy),
                prompt_tokens=gen.prompt_tokens if gen else 0,
                completion_tokens=gen.completion_tokens if gen else 0,
                ttft_ms=gen.ttft_ms if gen else None,
                error=exc.one_line() if exc else None,
                shadow=shadow,
                fallback_from_id=fallback_from.id if fallback_from else None,
            ),
            # Drift features come from the raw text, before the storage policy above.
            record_features(
                prompt,
                gen.text if gen else None,
                unknown_tokens=_extra(gen, "unknown_tokens", int),
                prompt_tokens=gen.prompt_tokens if gen else 0,
                cache_hit=_extra(gen, "adapter_cache_hit", bool),
            ),
            prompt,  # embedded by a writer that has an embedder (semantic drift); not stored
        )
        if key.tenant_id is not None:
            with self._recent_lock:
                self._recent[record_id] = key.tenant_id
                while len(self._recent) > _RECENT_RECORDS:
                    self._recent.popitem(last=False)


def _extra(gen: Generation | None, name: str, kind: type[T]) -> T | None:
    """What the engine said of a request in ``Generation.extra`` (adapter cache hit, unknown
    prompt tokens), when it says so."""
    value = gen.extra.get(name) if gen is not None else None
    return value if isinstance(value, kind) else None


def _key_with(scope: str) -> Callable[..., ApiKey]:
    """A dependency: the caller's API key, authenticated (cached briefly), holding ``scope``."""

    def current_key(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> ApiKey:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        plane: DataPlane = request.app.state.plane
        key = plane.keys.get(authorization[7:].strip())
        if scope not in key.scopes:
            raise MissingScope(f"this API key lacks the {scope!r} scope")
        return key

    return current_key


KeyDep = Annotated[ApiKey, Depends(_key_with("infer"))]
FeedbackKeyDep = Annotated[ApiKey, Depends(_key_with("feedback"))]


def _usage(gen: Generation) -> dict[str, int]:
    total = gen.prompt_tokens + gen.completion_tokens
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": total,
    }


# -- waiting for the engine, whole or streamed (server-sent events) -------------------------


async def _wait(plane: DataPlane, sub: Submitted) -> tuple[Submitted, Generation]:
    """The whole generation of a submitted request, recorded; waits without holding a thread.

    A version that could not be loaded hands the request to another version of the
    plan (``DataPlane.fall_back``); the returned ``Submitted`` is the one that answered.
    """
    while True:
        try:
            async with asyncio.timeout(sub.remaining()):
                async for event in sub.stream:
                    if event.generation is not None:
                        plane.finish(sub, event.generation)
                        return sub, event.generation
        except TimeoutError:
            raise plane.timed_out(sub) from None
        except ModelyardError as exc:
            other = await run_in_threadpool(plane.fall_back, sub, exc)
            if other is not None:
                sub = other
                continue
            plane.finish(sub, None, exc=exc)
            raise
        raise EngineError("the engine ended a stream without a result")  # pragma: no cover


def _include_usage(body: _Common) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


class _Chunks:
    """OpenAI's streaming chunks for one request: chat or text completion."""

    def __init__(self, chat: bool, sub: Submitted, model: str, include_usage: bool) -> None:
        self.chat, self.include_usage, self.model = chat, include_usage, model
        self.created = int(time.time())
        self._head: dict[str, Any] = {
            "id": sub.record_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": model,
        }
        if chat:
            self._head["system_fingerprint"] = sub.version.ref

    def rebound(self, sub: Submitted) -> _Chunks:
        """The same stream's chunks, now answered by ``sub`` (a fallback version)."""
        return _Chunks(self.chat, sub, self.model, self.include_usage)

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        data = {**self._head, "choices": choices}
        if self.include_usage:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def opening(self) -> list[str]:
        if not self.chat:
            return []
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return [self._event([{**role, "finish_reason": None}])]

    def text(self, text: str) -> str:
        return self._event([self._choice(text, None)])

    def closing(self, gen: Generation) -> list[str]:
        events = [self._event([self._choice(None, gen.finish_reason)])]
        if self.include_usage:
            events.append(self._event([], _usage(gen)))
        return [*events, "data: [DONE]\n\n"]

    @staticmethod
    def error(exc: ModelyardError) -> str:
        body = error_body(exc.one_line(), status_of(exc).type, exc.code, _param_of(exc))
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class _EventStreamResponse(StreamingResponse):
    """Server-sent events whose generator is always closed, so its ``finally`` always runs
    (Starlette abandons the body iterator when the client disconnects)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[str, None], headers: dict[str, str]) -> None:
        super().__init__(body, headers=headers)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()


async def _event_stream(plane: DataPlane, sub: Submitted, chunks: _Chunks) -> StreamingResponse:
    """Wait for the first event (an error before it is a normal error response), then stream.

    The record is written when the stream ends: ``ok``; ``error`` when the engine
    fails mid-stream (sent as an error event); ``cancelled`` when the client goes
    away, which also stops its generation; ``timeout`` when the request timeout
    passes (a 504 before the first token, an error event after it).
    """
    while True:
        try:
            async with asyncio.timeout(sub.remaining()):
                first = await anext(sub.stream)
            break
        except TimeoutError:
            raise plane.timed_out(sub) from None
        except ModelyardError as exc:
            other = await run_in_threadpool(plane.fall_back, sub, exc)
            if other is None:
                plane.finish(sub, None, exc=exc)
                raise
            sub, chunks = other, chunks.rebound(other)

    async def events() -> AsyncGenerator[str, None]:
        recorded = False
        try:
            for opening in chunks.opening():
                yield opening
            event = first
            while True:
                if event.text:
                    yield chunks.text(event.text)
                if event.generation is not None:
                    break
                async with asyncio.timeout(sub.remaining()):
                    event = await anext(sub.stream)
            gen = event.generation
            for closing in chunks.closing(gen):
                yield closing
            plane.finish(sub, gen)
            recorded = True
        except TimeoutError:
            recorded = True
            yield chunks.error(plane.timed_out(sub))
        except ModelyardError as exc:
            plane.finish(sub, None, exc=exc)
            recorded = True
            yield chunks.error(exc)
        finally:
            if not recorded:  # the client went away: stop generating, record when it stops
                sub.stream.cancel()
                sub.stream.on_finish(
                    lambda gen, exc: plane.finish(sub, gen, exc=exc, cancelled=True)
                )

    headers = {"x-modelyard-version": sub.version.ref, "cache-control": "no-cache"}
    return _EventStreamResponse(events(), headers)


def create_app(
    store: Store,
    engine: Engine,
    *,
    limits: ServerLimits | None = None,
    refresh_seconds: float = 2.0,
    writer: RecordWriter | None = None,
    heartbeat_s: float | None = 2.0,
    address: str = "",
    controller: Controller | None = None,
    controller_interval_s: float = 1.0,
    export_monitoring: bool = True,
    embedder: Any = None,
) -> FastAPI:
    """The OpenAI-compatible app. The caller keeps ownership of ``store`` and ``engine``.

    While it runs, a ``ServerAgent`` writes this server's heartbeat every
    ``heartbeat_s`` seconds (None: none; such a server is invisible to rollouts)
    and prepares rollout targets; with ``controller``, it also runs the rollout
    controller every ``controller_interval_s`` seconds. ``/metrics`` also carries the
    store's latest drift results and alert states (``export_monitoring``). With an
    ``embedder`` (``monitoring.Embedder``), the app's record writer embeds prompts.
    """
    router = Router(store, refresh_seconds=refresh_seconds)
    metrics_holder: list[_Metrics] = []
    own_writer = writer is None
    writer = writer or RecordWriter(
        store, on_drop=lambda n: metrics_holder[0].dropped.inc(n), embedder=embedder
    )
    limits = limits or ServerLimits()
    plane = DataPlane(store, engine, router, writer, limits)
    metrics_holder.append(plane.metrics)
    if export_monitoring:  # the latest drift results and alert states, read at scrape time
        plane.metrics.registry.register(MonitoringCollector(store))
    plane.metrics.queue_depth.set_function(lambda: engine.stats().queue_depth)

    agent = None
    if heartbeat_s is not None or controller is not None:
        agent = ServerAgent(
            store, plane, address=address, interval_s=heartbeat_s or 2.0,
            controller=controller, controller_interval_s=controller_interval_s,
        )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        router.refresh()
        router.start()
        engine.add_observer(plane.metrics)
        engine.add_observer(plane.health)
        plane.ready.set()
        if agent is not None:
            agent.start()
        try:
            yield
        finally:
            plane.ready.clear()
            await run_in_threadpool(router.stop)
            if agent is not None:
                await run_in_threadpool(agent.stop)
            engine.remove_observer(plane.metrics)
            engine.remove_observer(plane.health)
            if own_writer:
                plane.writer.close()

    app = FastAPI(title="modelyard", version=modelyard.__version__, lifespan=lifespan)
    app.state.plane = plane
    app.state.agent = agent
    app.state.drain = plane.drain
    app.add_middleware(GuardMiddleware, drain=plane.drain, max_body_bytes=limits.max_body_bytes)
    _install_error_handlers(app)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, key: KeyDep, response: Response
    ) -> dict[str, Any] | StreamingResponse:
        messages = [m.model_dump() for m in body.messages]
        sub = await run_in_threadpool(
            plane.submit,
            key,
            "chat.completions",
            body.model,
            body.user,
            body.sampling(plane.limits.max_tokens),
            lambda v: plane.engine.render_chat(v, messages),
        )
        chunks = _Chunks(True, sub, body.model, _include_usage(body))
        if body.stream:
            return await _event_stream(plane, sub, chunks)
        sub, gen = await _wait(plane, sub)
        response.headers["x-modelyard-version"] = sub.version.ref
        return {
            "id": sub.record_id,
            "object": "chat.completion",
            "created": chunks.created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(gen),
            "system_fingerprint": sub.version.ref,
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, key: KeyDep, response: Response
    ) -> dict[str, Any] | StreamingResponse:
        sub = await run_in_threadpool(
            plane.submit,
            key,
            "completions",
            body.model,
            body.user,
            body.sampling(plane.limits.max_tokens),
            lambda _v: body.prompt,
        )
        chunks = _Chunks(False, sub, body.model, _include_usage(body))
        if body.stream:
            return await _event_stream(plane, sub, chunks)
        sub, gen = await _wait(plane, sub)
        response.headers["x-modelyard-version"] = sub.version.ref
        return {
            "id": sub.record_id,
            "object": "text_completion",
            "created": chunks.created,
            "model": body.model,
            "choices": [
                {"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": None}
            ],
            "usage": _usage(gen),
        }

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, key: FeedbackKeyDep) -> dict[str, Any]:
        """A verdict on one request: ``score`` from -1 to 1, or ``thumbs`` up (1) / down (-1).

        Sent again for the same request, the latest verdict replaces the earlier one.
        """
        saved = await run_in_threadpool(
            plane.add_feedback, key, body.request_id, body.value, body.comment
        )
        plane.metrics.feedback.labels(key.tenant).inc()
        return {
            "id": saved.id,
            "object": "feedback",
            "request_id": saved.record_id,
            "score": saved.score,
            "comment": saved.comment,
            "created": int(saved.created_at.timestamp()),
            "updated": int(saved.updated_at.timestamp()),
        }

    @app.get("/v1/models")
    def list_models(key: KeyDep) -> Any:
        data = [
            {
                "id": ep.name,
                "object": "model",
                "created": int(ep.created_at.timestamp()),
                "owned_by": ep.tenant or "shared",
            }
            for ep in plane.router.visible_endpoints(key)
        ]
        return {"object": "list", "data": data}

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok", "version": modelyard.__version__}

    @app.get("/ready")
    def ready() -> Any:
        if not plane.ready.is_set():
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True, "engine": engine.name, "loaded": engine.loaded()}

    @app.get("/metrics")
    def metrics() -> Any:
        return PlainTextResponse(
            generate_latest(plane.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the OpenAI error body; client mistakes are 4xx, never 500."""

    @app.exception_handler(ModelyardError)
    async def modelyard_error(_req: Request, exc: ModelyardError) -> JSONResponse:
        found = status_of(exc)
        status = found.http_status
        if status >= 500:
            log.error("request failed: %s", exc.one_line())
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, EngineOverloaded):
            headers = {"Retry-After": "1"}
        elif isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse(
            error_body(exc.one_line(), found.type, exc.code, _param_of(exc)),
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"invalid request: {param + ': ' if param else ''}{first.get('msg')}"
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code
        )
