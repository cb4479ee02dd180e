"""The data plane: an OpenAI-compatible FastAPI app over the store, a router and an engine."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

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
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

import modelyard
from modelyard.errors import (
    AuthError,
    ConfigError,
    Conflict,
    DataError,
    EngineOverloaded,
    ModelyardError,
    NotFound,
)
from modelyard.monitoring import RecordWriter, apply_storage_policy
from modelyard.serving._engine import Engine, EngineError, Generation, SamplingParams
from modelyard.serving._router import Router
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import AdapterEvent
from modelyard.store import ApiKey, ModelVersion, NewInferenceRecord, Store, Tenant
from modelyard.tenants import authenticate

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[ModelyardError], int, str], ...] = (
    (AuthError, 401, "authentication_error"),
    (NotFound, 404, "invalid_request_error"),
    (Conflict, 409, "invalid_request_error"),
    (ConfigError, 400, "invalid_request_error"),
    (DataError, 400, "invalid_request_error"),
    (EngineError, 503, "server_error"),
    (EngineOverloaded, 503, "server_error"),
)


def _status_of(exc: ModelyardError) -> tuple[int, str]:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "server_error"


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
            raise ConfigError(f"max_tokens is {wanted}, above this server's limit of {cap}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(wanted, self.temperature, self.top_p, self.seed, stop)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str


@dataclass(frozen=True)
class ServerLimits:
    max_tokens: int = 256
    key_cache_seconds: float = 10.0


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
        self._tenants: dict[str, Tenant] = {}
        self.ready = threading.Event()

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
        try:
            self.tenant(key.tenant)  # cached, so that finishing never waits on the store
            chosen = self.router.route(endpoint, key)
            version = self.router.pick(chosen, user)
            prompt = render(version)
            stream = self.engine.stream(version, prompt, params)
        except ModelyardError as exc:
            self._record(record_id, key, route, endpoint, version, prompt, None, started, exc=exc)
            raise
        return Submitted(record_id, key, route, endpoint, version, prompt, stream, started)

    def finish(
        self,
        sub: Submitted,
        gen: Generation | None,
        *,
        exc: ModelyardError | None = None,
        cancelled: bool = False,
    ) -> None:
        """Record how a submitted request ended (``cancelled``: its client went away)."""
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
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        policy = self.tenant(key.tenant).storage_policy
        status = 200 if exc is None else _status_of(exc)[0]
        if cancelled or (gen is not None and gen.finish_reason == "cancelled"):
            outcome = "cancelled"
        else:
            outcome = "ok" if exc is None else "error"
        version_ref = version.ref if version else ""
        labels = (endpoint if version else "", version_ref, key.tenant)
        self.metrics.requests.labels(*labels, outcome).inc()
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
            )
        )


def _current_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    """The caller's API key, authenticated (cached briefly) and holding the 'infer' scope."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
    plane: DataPlane = request.app.state.plane
    key = plane.keys.get(authorization[7:].strip())
    if "infer" not in key.scopes:
        raise AuthError("this API key lacks the 'infer' scope")
    return key


KeyDep = Annotated[ApiKey, Depends(_current_key)]


def _usage(gen: Generation) -> dict[str, int]:
    total = gen.prompt_tokens + gen.completion_tokens
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": total,
    }


# -- waiting for the engine, whole or streamed (server-sent events) -------------------------


async def _wait(plane: DataPlane, sub: Submitted) -> Generation:
    """The whole generation of a submitted request, recorded; waits without holding a thread."""
    try:
        async for event in sub.stream:
            if event.generation is not None:
                plane.finish(sub, event.generation)
                return event.generation
    except ModelyardError as exc:
        plane.finish(sub, None, exc=exc)
        raise
    raise EngineError("the engine ended a stream without a result")  # pragma: no cover


def _include_usage(body: _Common) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


class _Chunks:
    """OpenAI's streaming chunks for one request: chat or text completion."""

    def __init__(self, chat: bool, sub: Submitted, model: str, include_usage: bool) -> None:
        self.chat, self.include_usage = chat, include_usage
        self.created = int(time.time())
        self._head: dict[str, Any] = {
            "id": sub.record_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": model,
        }
        if chat:
            self._head["system_fingerprint"] = sub.version.ref

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
        _, kind = _status_of(exc)
        body = error_body(exc.one_line(), kind, exc.code)
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
    away, which also stops its generation.
    """
    try:
        first = await anext(sub.stream)
    except ModelyardError as exc:
        plane.finish(sub, None, exc=exc)
        raise

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
                event = await anext(sub.stream)
            gen = event.generation
            for closing in chunks.closing(gen):
                yield closing
            plane.finish(sub, gen)
            recorded = True
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
) -> FastAPI:
    """The OpenAI-compatible app. The caller keeps ownership of ``store`` and ``engine``."""
    router = Router(store, refresh_seconds=refresh_seconds)
    metrics_holder: list[_Metrics] = []
    own_writer = writer is None
    writer = writer or RecordWriter(store, on_drop=lambda n: metrics_holder[0].dropped.inc(n))
    plane = DataPlane(store, engine, router, writer, limits or ServerLimits())
    metrics_holder.append(plane.metrics)
    plane.metrics.queue_depth.set_function(lambda: engine.stats().queue_depth)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        router.refresh()
        engine.add_observer(plane.metrics)
        plane.ready.set()
        try:
            yield
        finally:
            plane.ready.clear()
            engine.remove_observer(plane.metrics)
            if own_writer:
                plane.writer.close()

    app = FastAPI(title="modelyard", version=modelyard.__version__, lifespan=lifespan)
    app.state.plane = plane
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
        gen = await _wait(plane, sub)
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
        gen = await _wait(plane, sub)
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
        status, kind = _status_of(exc)
        if status >= 500:
            log.error("request failed: %s", exc.one_line())
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, EngineOverloaded):
            headers = {"Retry-After": "1"}
        return JSONResponse(
            error_body(exc.one_line(), kind, exc.code), status_code=status, headers=headers
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
