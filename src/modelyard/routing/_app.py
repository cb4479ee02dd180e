"""The router's app: ``/v1/...`` relayed to replicas, its own ``/health``, ``/ready``, ``/metrics``.

What it knows of the fleet comes from the store, re-read every ``refresh_s``
off the event loop (``FleetView``): the servers whose heartbeat is fresh, and
every endpoint's traffic plan. A store that cannot be reached leaves the last
snapshot in use. SIGTERM drains it (``_server``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import modelyard
from modelyard.errors import ModelyardError
from modelyard.routing._metrics import RouteMetrics
from modelyard.routing._options import RouteOptions
from modelyard.routing._policy import AdapterAffinity, Plan, Policy, RoundRobin, plans_of
from modelyard.routing._proxy import Proxy
from modelyard.routing._replicas import Replicas
from modelyard.routing._server import Drain
from modelyard.store import Endpoint, Server, Store

log = logging.getLogger(__name__)


class FleetView:
    """Live replicas and endpoints' plans, as of the last read of the store."""

    def __init__(self, store: Store, stale_after_s: float) -> None:
        self.store, self.stale_after_s = store, stale_after_s
        self.replicas = Replicas()
        self.plans: dict[str, Plan] = {}
        self.reads = 0

    def read(self) -> tuple[list[Server], list[Endpoint]]:
        """The store's side (blocking: run it off the event loop)."""
        servers = self.store.list_servers(stale_after_s=self.stale_after_s, alive=True)
        return servers, self.store.list_endpoints()

    def apply(self, servers: list[Server], endpoints: list[Endpoint]) -> None:
        """The router's side, on the event loop (the proxy reads it there)."""
        self.replicas.update(servers)
        self.plans = plans_of(endpoints)
        self.reads += 1

    async def refresh(self) -> None:
        try:
            servers, endpoints = await asyncio.to_thread(self.read)
        except ModelyardError as exc:
            log.warning("cannot read the fleet from the store: %s", exc.one_line())
            return
        self.apply(servers, endpoints)


def create_route_app(store: Store, options: RouteOptions | None = None) -> FastAPI:
    """The router. The caller keeps ownership of ``store``."""
    options = options or RouteOptions()
    view = FleetView(store, options.stale_after_s)
    metrics = RouteMetrics(view.replicas.all)
    policy: Policy = (
        AdapterAffinity(options.max_imbalance) if options.policy == "adapter" else RoundRobin()
    )
    drain = Drain()
    proxy = Proxy(view, policy, metrics, options, drain)

    async def reconcile() -> None:
        while True:
            await asyncio.sleep(options.refresh_s)
            await view.refresh()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await view.refresh()
        proxy.open()
        task = asyncio.create_task(reconcile())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await proxy.close()

    app = FastAPI(title="modelyard route", version=modelyard.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.drain, app.state.view, app.state.metrics = drain, view, metrics

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": modelyard.__version__}

    @app.get("/ready")
    def ready() -> JSONResponse:
        live = len(view.replicas.usable())
        ok = live > 0 and not drain.draining
        return JSONResponse({"ready": ok, "replicas": live}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def prometheus(request: Request) -> PlainTextResponse:
        token = options.metrics_token
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            return PlainTextResponse("an operator token is required\n", status_code=401)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def not_here(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # OpenAI's error body, as the servers answer: a client's SDK reads it whatever path
        message = (
            f"Invalid URL ({req.method} {req.url.path}): the router relays /v1/... only; "
            "the admin API and the console are served by each replica"
            if exc.status_code == 404
            else str(exc.detail)
        )
        error = {"message": message, "type": "invalid_request_error", "code": None, "param": None}
        return JSONResponse({"error": error}, status_code=exc.status_code, headers=exc.headers)

    app.mount("/v1", proxy)
    return app
