"""The app: an OpenAI-compatible FastAPI app over the store, a router and an engine.

Around every request: the guard (``_guard``: draining, body cap), the key
(cached for ``key_cache_seconds``) and its scope (``_routes``), then the data
plane (``_plane``): route, render, the prompt-token cap, the key's rate limits
(``_limits``), the engine; its outcome is recorded. A request past
``request_timeout_s`` is cancelled and answered 504 (``_sse``). Errors leave in
OpenAI's error body (``_http_errors``), every answer with an ``x-request-id``
(``_request_id``); ``/metrics`` exports ``_metrics``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

import modelyard
from modelyard.monitoring import (
    MonitoringCollector,
    RecordWriter,
    close_abandoned,
    new_server_id,
)
from modelyard.serving._agent import ServerAgent
from modelyard.serving._batch_runner import BatchSettings, BatchWorker
from modelyard.serving._batches_api import add_batch_routes
from modelyard.serving._engine import Engine
from modelyard.serving._files import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_TENANT_FILE_BYTES,
    FileKeeper,
)
from modelyard.serving._files_api import add_file_routes
from modelyard.serving._guard import GuardMiddleware, OperatorAccess
from modelyard.serving._http_errors import install_error_handlers
from modelyard.serving._limits import ServerLimits
from modelyard.serving._metrics import Metrics
from modelyard.serving._plane import DataPlane
from modelyard.serving._request_id import RequestIdMiddleware
from modelyard.serving._responses import add_response_routes
from modelyard.serving._router import Router
from modelyard.serving._routes import add_routes
from modelyard.serving._shutdown import Drain
from modelyard.store import Store
from modelyard.uploads import FORM_OVERHEAD

if TYPE_CHECKING:
    from modelyard.artifacts import ArtifactStore
    from modelyard.delivery import Controller


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
    monitoring_max_age_s: float = 0.0,
    embedder: Any = None,
    access: OperatorAccess | None = None,
    mounts: Mapping[str, ASGIApp] | None = None,
    artifacts: ArtifactStore | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_tenant_file_bytes: int = DEFAULT_MAX_TENANT_FILE_BYTES,
    batches: BatchSettings | None = None,
) -> FastAPI:
    """The OpenAI-compatible app. The caller keeps ownership of ``store`` and ``engine``.

    While it runs, a ``ServerAgent`` writes this server's heartbeat every
    ``heartbeat_s`` seconds (None: none; such a server is invisible to rollouts)
    and prepares rollout targets; with ``controller``, it also runs the rollout
    controller every ``controller_interval_s`` seconds. ``/metrics`` also carries the
    store's latest drift results and alert states (``export_monitoring``), read again at
    a scrape once ``monitoring_max_age_s`` passed since the last read (0: every scrape). With an
    ``embedder`` (``monitoring.Embedder``), the app's record writer embeds prompts.
    ``access`` says who may read ``/metrics`` and the API docs (default: anyone).
    ``mounts`` are apps served under a path prefix, behind the same guard (the admin
    API at ``/admin/v1``); each does its own authentication. With ``artifacts``, the
    Files API keeps tenants' files there (each at most ``max_file_bytes``, a tenant's at
    most ``max_tenant_file_bytes`` in all) and the Batch API
    runs tenants' batches on a worker of this server (``batches``); without, neither is
    served (404).
    """
    router = Router(store, refresh_seconds=refresh_seconds)
    metrics_holder: list[Metrics] = []
    own_writer = writer is None
    server_id = new_server_id()  # on its records and its heartbeat (the request journal)
    writer = writer or RecordWriter(
        store, on_drop=lambda n: metrics_holder[0].dropped.inc(n), embedder=embedder,
        server_id=server_id, sweep=lambda: close_abandoned(store, server_id),
    )  # fmt: skip
    limits = limits or ServerLimits()
    plane = DataPlane(store, engine, router, writer, limits)
    metrics_holder.append(plane.metrics)
    if export_monitoring:  # the latest drift results and alert states, read at scrape time
        plane.metrics.registry.register(MonitoringCollector(store, max_age_s=monitoring_max_age_s))
    plane.metrics.queue_depth.set_function(lambda: engine.stats().queue_depth)
    plane.metrics.watch_residency(engine.loaded)  # what `modelyard route` routes by

    agent = None
    if heartbeat_s is not None or controller is not None:
        agent = ServerAgent(
            store, plane, address=address, interval_s=heartbeat_s or 2.0,
            controller=controller, controller_interval_s=controller_interval_s,
        )  # fmt: skip
        agent.id = server_id

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # requests a stopped server (this one before a kill -9) left running: failed
        await run_in_threadpool(close_abandoned, store, server_id)
        router.refresh()
        router.start()
        engine.add_observer(plane.metrics)
        engine.add_observer(plane.health)
        plane.ready.set()
        if agent is not None:
            agent.start()
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            plane.ready.clear()
            if worker is not None:  # what its batches answered is committed first
                await worker.stop()
            await run_in_threadpool(router.stop)
            if agent is not None:
                await run_in_threadpool(agent.stop)
            engine.remove_observer(plane.metrics)
            engine.remove_observer(plane.health)
            await run_in_threadpool(plane.budgets.close)  # the charges handed over counted
            if own_writer:
                plane.writer.close()

    app = FastAPI(title="modelyard", version=modelyard.__version__, lifespan=lifespan)
    app.state.plane = plane
    app.state.keys = plane.keys
    app.state.agent = agent
    app.state.drain = plane.drain
    files = None
    if artifacts is not None:
        files = FileKeeper(store, artifacts, max_file_bytes=max_file_bytes,
                           max_tenant_bytes=max_tenant_file_bytes)  # fmt: skip
    upload_caps = {}
    if files is not None:
        upload_caps["/v1/files"] = (
            max_file_bytes + FORM_OVERHEAD,
            f"a file of at most {max_file_bytes} bytes and its form, --max-file-bytes",
        )
    app.add_middleware(
        GuardMiddleware,
        drain=plane.drain,
        max_body_bytes=limits.max_body_bytes,
        access=access,
        on_refused=lambda exc: plane.count_refusal("", exc),
        early_refusal=plane.early_refusal,
        upload_caps=upload_caps,
        live=plane.live,
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: the guard's refusals carry one too
    install_error_handlers(app)
    add_routes(app, plane)
    add_response_routes(app, plane)
    worker = None
    if files is not None:
        add_file_routes(app, files, plane)
        worker = BatchWorker(app, plane, files, server_id, batches)
        add_batch_routes(app, worker)
    app.state.batch_worker = worker
    for prefix, mounted in (mounts or {}).items():
        app.mount(prefix, mounted)
    return app


def create_metrics_app(app: FastAPI, token: str | None = None) -> FastAPI:
    """``/metrics`` of ``app`` alone, for a listener of its own (``serve --metrics-port``);
    with ``token``, only for ``Authorization: Bearer <token>``."""
    plane: DataPlane = app.state.plane
    access = OperatorAccess(metrics="token" if token else "public", docs="off", token=token)
    metrics_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    metrics_app.add_middleware(GuardMiddleware, drain=Drain(), max_body_bytes=0, access=access)

    @metrics_app.get("/metrics")
    def metrics() -> Any:
        return PlainTextResponse(
            generate_latest(plane.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    return metrics_app


__all__ = ["create_app", "create_metrics_app"]
