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
    max_tokens: int = typer.Option(256, min=1, help="Upper bound on max_tokens per request."),
    refresh_seconds: float = typer.Option(
        2.0, min=0.1, help="How often to reconcile endpoints and traffic from the store."
    ),
) -> None:
    """Serve POST /v1/chat/completions, /v1/completions, GET /v1/models, /health, /ready,
    /metrics for every endpoint in the store. New endpoints and traffic changes apply
    without a restart."""
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
        chosen = TransformersEngine(open_artifacts(), max_adapters=max_adapters)
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
