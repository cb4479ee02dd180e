"""``modelyard serve``: the data plane."""

from __future__ import annotations

import typer

from modelyard.cli._common import err_console, open_artifacts, open_store
from modelyard.errors import ConfigError


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    engine: str = typer.Option("transformers", help="transformers, or echo (a fake for tests)."),
    max_adapters: int = typer.Option(8, min=1, help="Adapters kept loaded (LRU)."),
    max_batch_size: int = typer.Option(
        8, min=1, help="Most requests run together in one generate call."
    ),
    batch_window_ms: float = typer.Option(
        5.0, min=0.0, help="How long a batch waits for more requests after its first."
    ),
    max_queue: int = typer.Option(
        256, min=1, help="Requests that may wait for the engine; beyond it, a fast 503."
    ),
    max_tokens: int = typer.Option(256, min=1, help="Upper bound on max_tokens per request."),
    refresh_seconds: float = typer.Option(
        2.0, min=0.1, help="How often to reconcile endpoints and traffic from the store."
    ),
) -> None:
    """Serve POST /v1/chat/completions, /v1/completions (stream: true for server-sent
    events), GET /v1/models, /health, /ready, /metrics for every endpoint in the store.
    New endpoints and traffic changes apply without a restart."""
    from modelyard.serving import (
        EchoEngine,
        Engine,
        ServerLimits,
        TransformersEngine,
        create_app,
        run_server,
    )

    store = open_store()
    chosen: Engine
    if engine == "transformers":
        chosen = TransformersEngine(
            open_artifacts(),
            max_adapters=max_adapters,
            max_batch_size=max_batch_size,
            batch_window_ms=batch_window_ms,
            max_queue=max_queue,
            store=store,
        )
    elif engine == "echo":
        chosen = EchoEngine()
    else:
        raise ConfigError(f"unknown --engine {engine!r}: use transformers or echo")
    app = create_app(
        store, chosen, limits=ServerLimits(max_tokens=max_tokens), refresh_seconds=refresh_seconds
    )
    err_console.print(f"serving {store.url} on http://{host}:{port} (engine {engine})")
    try:
        run_server(app, host, port)
    finally:
        chosen.close()
        store.close()
