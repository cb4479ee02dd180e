"""The data plane: what every request needs, shared by the routes.

``DataPlane.enter`` (the routes call it): the key's requests/min on the event
loop, then, within one of the tenant's slots (``TenantSlots``), ``submit`` on a
worker thread: the key's tenant, route, render, the prompt-character and
prompt-token caps, the key's tokens/min (``_limits``), the engine; a version that
failed to load falls back to another version of the plan, and a shadow version
gets a copy. A request refused before the engine (4xx) is counted and only
sampled into the store (``count_refusal``, ``_refusals``).
``finish`` records the outcome (``_recording.Recorder``: metrics, and the record
written off the response path) and gives back unused tokens. Keys are
authenticated through a short cache (``_auth.KeyCache``), so a revocation
applies within ``key_cache_seconds``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from modelyard.errors import (
    ConfigError,
    EndpointNotFound,
    EngineError,
    ModelyardError,
    NotFound,
    RateLimited,
    RequestTimeout,
    status_of,
)
from modelyard.monitoring import (
    RecordWriter,
    apply_storage_policy,
)
from modelyard.serving._auth import KeyCache
from modelyard.serving._batch_context import batch_origin
from modelyard.serving._budgets import BudgetGuard
from modelyard.serving._engine import Engine
from modelyard.serving._health import LoadHealth, StoreProbe, load_failure_of
from modelyard.serving._limits import (
    Admission,
    ServerLimits,
    TenantSlots,
    count_prompt_tokens,
)
from modelyard.serving._live import LiveTraffic, admitted
from modelyard.serving._metrics import Metrics
from modelyard.serving._recording import Recorder
from modelyard.serving._refusals import RefusalSampler, shorten
from modelyard.serving._router import Route, Router
from modelyard.serving._shared_limits import SharedRateLimiter, limiter_for
from modelyard.serving._shutdown import Drain
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import Generation, Origin, SamplingParams
from modelyard.store import ApiKey, Feedback, ModelVersion, Store, Tenant

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    whole: bool = False  # the client wants only the whole answer (``Engine.answer``)
    origin: Origin | None = field(default=None, repr=False, compare=False)  # batch, job
    # taken by the first ``finish``, never released: a request is recorded once
    _finished: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def remaining(self) -> float | None:
        """Seconds left before the request timeout (None: no timeout)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.perf_counter())


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
        self.metrics = Metrics()
        self.keys = KeyCache(store, limits.key_cache_seconds)
        self.limiter = limiter_for(limits)  # shared by replicas through Redis, or this one's
        shared = self.limiter if isinstance(self.limiter, SharedRateLimiter) else None
        if shared is not None:
            self.metrics.watch_shared_limits(lambda: shared.shared_up)
        self.budgets = BudgetGuard(store, shared=shared, observer=self.metrics.spent)
        self.slots = TenantSlots(limits.tokenize_concurrency)
        self.refusals = RefusalSampler(limits.refusals_stored_per_minute)
        self._tenants: dict[str, Tenant] = {}
        self.ready = threading.Event()
        self.health = LoadHealth()
        self.store_probe = StoreProbe(store.schema_revision)  # /ready: 503 while it is down
        self.drain = Drain()
        self.drain.on_begin(self.ready.clear)
        self.live = LiveTraffic()  # live model requests in flight, which batches yield to
        self.recorder = Recorder(writer, self.metrics, self.health, self.tenant)

    def tenant(self, name: str) -> Tenant:
        if name not in self._tenants:
            self._tenants[name] = self.store.get_tenant(name)
        return self._tenants[name]

    async def enter(
        self,
        key: ApiKey,
        route: str,
        endpoint: str,
        user: str | None,
        params: SamplingParams,
        render: Callable[[ModelVersion], str],
        *,
        whole: bool = False,
        origin: Origin | None = None,
        named: Callable[[str], None] | None = None,
    ) -> Submitted:
        """``submit`` from the event loop, the cheap checks first: the key's requests/min
        (and a tokens bucket that cannot even hold ``max_tokens``) on the loop, then the
        costly part on a worker thread, at most ``tokenize_concurrency`` of a tenant's
        requests at once (``TenantSlots``). ``origin``: where it comes from (a batch job;
        by default, the line of an OpenAI batch this task asks, ``_batch_context``).
        ``named``: told the id of the record a refusal or failure is kept under, when one
        is (the request's ``x-request-id`` then names it, as an answer names its own)."""
        origin = origin or batch_origin()
        try:
            await self._take_request(key, params.max_tokens)
        except RateLimited as limited:
            if self._limited(key, limited):
                record_id = await run_in_threadpool(
                    self._record_refusal, key, route, endpoint, limited, origin
                )
                if named is not None:
                    named(record_id)
            raise
        admitted()  # a client's model request: batches yield to it from now (_live)
        async with self.slots.hold(key.tenant):
            return await run_in_threadpool(self.submit, key, route, endpoint, user, params,
                                           render, request_taken=True, whole=whole,
                                           origin=origin, named=named)  # fmt: skip

    async def _take_request(self, key: ApiKey, min_tokens: int = 0) -> None:
        """One of ``key``'s requests/min (RateLimited when none is left)."""
        if isinstance(self.limiter, SharedRateLimiter):  # a round trip: off the loop
            await run_in_threadpool(self.limiter.admit_request, key, min_tokens)
        else:
            self.limiter.admit_request(key, min_tokens)

    async def admit_call(self, key: ApiKey) -> None:
        """Take one of ``key``'s requests/min for a call that asks no model but costs the
        server (a file uploaded, a batch made): over the limit, the same 429 with its
        ``Retry-After`` as a model request, counted in the metrics; no record is kept (there
        is no model request to record)."""
        try:
            await self._take_request(key)
        except RateLimited as limited:
            self.metrics.rate_limited.labels(key.tenant, limited.limit).inc()
            self.count_refusal(key.tenant, limited)
            raise

    def early_refusal(self, authorization: bytes | None, route: str) -> RateLimited | None:
        """Before a completion's body is read (``GuardMiddleware``): the 429 for a cached key
        that is over its requests/min, counted (and sampled into the store), else None.
        Runs on the event loop: it never asks the store."""
        if not authorization or not authorization.lower().startswith(b"bearer "):
            return None
        key = self.keys.peek(authorization[7:].strip().decode("latin-1"))
        if key is None:
            return None
        limited = self.limiter.over_requests(key)
        if limited is None:
            return None
        if self._limited(key, limited) and key.tenant in self._tenants:  # no store lookup here
            self._record_refusal(key, route, "", limited)
        return limited

    def _limited(self, key: ApiKey, limited: RateLimited) -> bool:
        """Count a 429 decided before ``submit``; whether to store it (``count_refusal``)."""
        self.metrics.rate_limited.labels(key.tenant, limited.limit).inc()
        return self.count_refusal(key.tenant, limited, key.id)

    def _record_refusal(
        self, key: ApiKey, route: str, endpoint: str, exc: RateLimited, origin: Origin | None = None
    ) -> str:
        """Record a 429 of ``enter``'s; the record's id."""
        endpoint, record_id = self._own_name(key, endpoint), f"cmpl-{uuid.uuid4().hex}"
        self.recorder.record(record_id, key, route, endpoint, None, None,
                             None, time.perf_counter(), exc=exc, origin=origin)  # fmt: skip
        return record_id

    def _filed_under(
        self, key: ApiKey, endpoint: str, version: ModelVersion | None, exc: ModelyardError
    ) -> str:
        """The endpoint a failed request is recorded under: its own once routed, "" for a
        name the key may not use (missing or another tenant's: the error names it), and
        for a refusal decided before routing, the name only when the key may call it."""
        if version is not None:
            return endpoint
        if isinstance(exc, EndpointNotFound):
            return ""
        return self._own_name(key, endpoint)

    def _own_name(self, key: ApiKey, endpoint: str) -> str:
        """``endpoint`` when ``key`` may call it, else "": a name of another tenant's
        endpoint never files a refusal there, where its records, feedback, profiles and
        alerts would count another tenant's requests."""
        if not endpoint:  # e.g. ``early_refusal``'s, on the event loop: no lookup at all
            return ""
        try:
            visible = self.router.visible_endpoints(key)
        except ModelyardError:  # the store is down and the snapshot stale: file it nowhere
            return ""
        return endpoint if any(e.name == endpoint for e in visible) else ""

    def count_refusal(self, tenant: str, exc: ModelyardError, key_id: str | None = None) -> bool:
        """Count a request refused before the engine (``modelyard_refused_total``); whether
        to store it too (a sample: ``refusals_stored_per_minute`` per key)."""
        self.metrics.refused.labels(tenant, exc.code).inc()
        return key_id is not None and self.refusals.take(key_id)

    def submit(
        self,
        key: ApiKey,
        route: str,
        endpoint: str,
        user: str | None,
        params: SamplingParams,
        render: Callable[[ModelVersion], str],
        *,
        request_taken: bool = False,
        whole: bool = False,
        origin: Origin | None = None,
        named: Callable[[str], None] | None = None,
    ) -> Submitted:
        """Route, render and hand one request to the engine (blocking: run it off the loop).

        ``request_taken``: ``enter`` took the request from the key's requests/min already.
        ``whole``: the client wants only the whole answer (``Engine.answer``, not ``stream``).
        A failure here is recorded (a refusal, 4xx, as a sample: ``count_refusal``) and
        raised; after it, ``finish`` records the outcome. An ``origin`` with a record id
        has every refusal recorded under it, except a 429, which its caller sends again.
        ``named`` is told the id a refusal or failure is recorded under (``enter``).
        """
        record_id = origin.record_id if origin and origin.record_id else f"cmpl-{uuid.uuid4().hex}"
        started = time.perf_counter()
        version: ModelVersion | None = None
        prompt: str | None = None
        admission: Admission | None = None
        try:
            self.tenant(key.tenant)  # cached, so that finishing never waits on the store
            self.budgets.check(key)
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
            param = "messages" if route == "chat.completions" else "prompt"
            chars = self.limits.max_prompt_chars
            if chars is not None and len(prompt) > chars:  # before it is tokenized
                raise ConfigError(
                    f"the prompt has {len(prompt)} characters, above this server's limit of "
                    f"{chars} prompt characters (--max-prompt-chars)",
                    hint="Shorten the prompt.",
                    param=param,
                )
            prompt_tokens = count_prompt_tokens(self.engine, version, prompt)
            cap = self.limits.max_prompt_tokens
            if cap is not None and prompt_tokens > cap:
                raise ConfigError(
                    f"the prompt has {prompt_tokens} tokens, above this server's limit of "
                    f"{cap} prompt tokens (--max-prompt-tokens)",
                    hint="Shorten the prompt.",
                    param=param,
                )
            admit = self.limiter.admit_tokens if request_taken else self.limiter.admit
            try:
                admission = admit(key, prompt_tokens + params.max_tokens)
            except RateLimited as limited:
                self.metrics.rate_limited.labels(key.tenant, limited.limit).inc()
                raise
            try:
                stream = self._send(version, prompt, params, whole)
            except EngineError as refused:  # an engine that refuses a version at submission
                alternative = self._alternative(chosen, user, version, refused)
                if alternative is None:
                    raise
                fallback_from, version = fallback_from or version, alternative
                prompt = render(version)
                stream = self._send(version, prompt, params, whole)
        except ModelyardError as exc:
            if admission is not None:
                self.limiter.settle(admission, 0)
            again = isinstance(exc, RateLimited)  # sent again later: under an id of its own
            if status_of(exc).http_status >= 500:
                filed = self._filed_under(key, endpoint, version, exc)
                self.recorder.record(record_id, key, route, filed, version, prompt, None,
                                     started, exc=exc, origin=origin)  # fmt: skip
                if named is not None:
                    named(record_id)
            elif self.count_refusal(key.tenant, exc, key.id) or (
                origin is not None and origin.record_id is not None and not again
            ):
                refusal_id = f"cmpl-{uuid.uuid4().hex}" if again else record_id
                filed = self._filed_under(key, endpoint, version, exc)
                self.recorder.record(refusal_id, key, route, filed, version,
                                     shorten(prompt), None, started, exc=exc,
                                     origin=origin)  # fmt: skip
                if named is not None:
                    named(refusal_id)
            raise
        # the request journal
        self.recorder.started(record_id, key, route, endpoint, version, prompt, origin)
        timeout = self.limits.request_timeout_s
        deadline = None if timeout is None else started + timeout
        if self.router.mirror(chosen, version):
            self._mirror(record_id, key, route, endpoint, chosen, params, render, origin)
        return Submitted(
            record_id, key, route, endpoint, version, prompt, stream, started, admission, deadline,
            fallback_from, chosen, user, params, render, whole, origin,
        )  # fmt: skip

    def _send(
        self, version: ModelVersion, prompt: str, params: SamplingParams, whole: bool
    ) -> TokenStream:
        """Hand one request to the engine: for its whole answer, or streamed."""
        send = self.engine.answer if whole else self.engine.stream
        return send(version, prompt, params)

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
            stream = self._send(alternative, prompt, sub.params, sub.whole)
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
        live_id: str,
        key: ApiKey,
        route: str,
        endpoint: str,
        chosen: Route,
        params: SamplingParams,
        render: Callable[[ModelVersion], str],
        origin: Origin | None = None,
    ) -> None:
        """Send a copy of a request to the shadow version; its answer is recorded, never
        returned, and nothing it does (failing included) touches the live request. Its
        record's id is the live request's with ``-shadow``: the two answers pair by id."""
        shadow = chosen.shadow
        assert shadow is not None
        record_id = f"{live_id}-shadow"
        started = time.perf_counter()
        prompt: str | None = None
        try:
            prompt = render(shadow)
            stream = self.engine.answer(shadow, prompt, params)  # only its record is kept
        except ModelyardError as exc:
            self.recorder.record(record_id, key, route, endpoint, shadow, prompt, None, started,
                         exc=exc, shadow=True, origin=origin)  # fmt: skip
            return
        stream.on_finish(
            lambda gen, exc: self.recorder.record(
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
                params=params,
                origin=origin,
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
        if gen is not None:
            self.budgets.charge(sub.key, sub.endpoint, sub.version, gen)
        self.recorder.record(
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
            params=sub.params,
            fallback_from=sub.fallback_from,
            origin=sub.origin,
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
        self, key: ApiKey, request_id: str, score: float, comment: str | None, label: str | None
    ) -> Feedback:
        """Store a verdict on one of the key's tenant's requests (blocking: run it off the loop).

        A request answered here moments ago may not be written yet: wait for the
        record writer once, then ask again. ``comment`` and ``label`` are kept as the
        tenant's storage policy keeps its prompts (masked, hashed or not at all): they are
        where people paste what the customer wrote.
        """
        policy = self.tenant(key.tenant).storage_policy
        comment = apply_storage_policy(comment, policy)
        label = apply_storage_policy(label, policy)
        try:
            return self.store.add_feedback(
                request_id, tenant=key.tenant, score=score, comment=comment, api_key_id=key.id,
                label=label,
            )  # fmt: skip
        except NotFound:
            # handed to the writer moments ago: wait for its record instead of a 404
            if key.tenant_id is None or not self.recorder.handed_over(request_id, key.tenant_id):
                raise
        self.writer.wait_written(timeout=5.0)
        return self.store.add_feedback(
            request_id, tenant=key.tenant, score=score, comment=comment, api_key_id=key.id,
            label=label,
        )  # fmt: skip

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
        sub = self.submit(key, route, endpoint, user, params, render, whole=True)
        try:
            gen = sub.stream.result()
        except ModelyardError as exc:
            self.finish(sub, None, exc=exc)
            raise
        self.finish(sub, gen)
        return sub.record_id, sub.version, gen


__all__ = ["DataPlane", "Submitted"]
