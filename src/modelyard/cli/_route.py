"""``modelyard route``: one front for many replicas, each request where its adapter is."""

from __future__ import annotations

import typer

from modelyard.cli._common import err_console, open_store
from modelyard.sockets import url_host


def route(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port to listen on."),
    policy: str = typer.Option(
        "adapter",
        help="adapter (to the replica that holds the endpoint's adapter, else its home by "
        "rendezvous hashing, else the least loaded) or round-robin (no routing).",
    ),
    refresh_s: float = typer.Option(
        1.0,
        min=0.05,
        max=3600.0,
        help="How often to re-read heartbeats and traffic plans from the store.",
    ),
    stale_after_s: float = typer.Option(
        10.0,
        min=0.1,
        max=365 * 86400.0,
        help="A replica whose heartbeat is older than this gets no requests.",
    ),
    max_imbalance: int = typer.Option(
        8,
        min=1,
        help="Requests in flight beyond the least loaded replica's at which the adapter's "
        "replica gives way to it.",
    ),
    max_body_bytes: int = typer.Option(
        1_048_576, min=1, help="Upper bound on request bodies (413), as the servers' own."
    ),
    max_file_bytes: int = typer.Option(
        200 * 1024 * 1024,
        min=1,
        help="Upper bound on a file uploaded to /v1/files (413), as the servers' own: uploads "
        "are relayed as they arrive, never held, so set it as the replicas' --max-file-bytes.",
    ),
    connect_timeout_s: float = typer.Option(
        2.0, min=0.01, help="How long to wait for a replica to accept a connection."
    ),
    read_timeout_s: float = typer.Option(
        300.0,
        min=0.01,
        help="How long a replica may go quiet (before its answer, between stream chunks): 504.",
    ),
    max_connections: int = typer.Option(
        1000, min=1, help="Connections to replicas open at once (all replicas together)."
    ),
    max_attempts: int = typer.Option(
        3, min=1, help="Replicas one request is tried on, while none of them answered."
    ),
    metrics_token: str | None = typer.Option(
        None,
        envvar="MODELYARD_METRICS_TOKEN",
        show_envvar=True,
        help="Bearer token that the router's /metrics requires (default: public).",
    ),
    shutdown_grace_s: float = typer.Option(
        30.0, min=0.0, help="On SIGTERM, how long in-flight requests may take to finish."
    ),
) -> None:
    """Relay the OpenAI API (/v1/...) to the serving replicas of the store, each request to
    the replica that already holds the endpoint's adapter. Replicas are found from their
    heartbeats (`modelyard servers list`; serve --advertise-address says where to reach
    one). The router checks no key: the servers do, and their answers (401, 404, 429 with
    Retry-After, streams) come back unchanged. GET /health, /ready (503 while no replica
    is live) and /metrics are its own. SIGTERM drains, then the process exits 0."""
    from modelyard.routing import RouteOptions, create_route_app, run_router

    options = RouteOptions(
        policy=policy,  # type: ignore[arg-type]  # checked by RouteOptions
        refresh_s=refresh_s,
        stale_after_s=stale_after_s,
        max_imbalance=max_imbalance,
        max_body_bytes=max_body_bytes,
        max_file_bytes=max_file_bytes,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
        max_attempts=max_attempts,
        metrics_token=metrics_token,
    )
    store = open_store()
    app = create_route_app(store, options)

    where = url_host(host)  # an IPv6 address in a URL

    def banner(bound: int) -> None:
        err_console.print(
            f"routing on http://{where}:{bound} to the replicas of {store.url} (policy {policy})"
        )

    try:
        run_router(app, host, port, shutdown_grace_s=shutdown_grace_s, on_bound=banner)
    finally:
        store.close()
    err_console.print("stopped")
