"""``modelyard serve``: the data plane."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer

from modelyard.cli._common import (
    check_alert_rules,
    err_console,
    open_artifacts,
    open_store,
    settings,
)
from modelyard.errors import ConfigError
from modelyard.sockets import bind_socket, url_host
from modelyard.store import Store

# Options only some engines read: given on the command line to another engine they would
# change nothing, so they are refused rather than ignored. (--max-queue, which the echo fake
# has none of, is given to it by load tests.)
VLLM_ONLY = (
    "vllm_python", "vllm_max_loras", "vllm_max_lora_rank", "vllm_max_cpu_loras",
    "vllm_max_model_len", "vllm_max_num_seqs", "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size", "vllm_kv_cache_gb", "vllm_start_timeout_s",
)  # fmt: skip
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "device": ("transformers",),
    "host_cache_mb": ("transformers",),
    "batch_window_ms": ("transformers",),
    "max_batch_size": ("transformers",),  # vLLM schedules its own: --vllm-max-num-seqs
    "dtype": ("transformers", "vllm"),
    "max_adapters": ("transformers", "vllm"),
    "echo_delay_ms": ("echo",),
    **dict.fromkeys(VLLM_ONLY, ("vllm",)),
}


MADE_VLLM_PYTHON = Path(".venv-vllm") / "bin" / "python"
"""Where `make vllm` puts vLLM's interpreter, relative to the checkout it ran in."""


def _made_vllm_python() -> str:
    """``--engine vllm`` without --vllm-python: the environment `make vllm` built here."""
    if MADE_VLLM_PYTHON.is_file():
        return str(MADE_VLLM_PYTHON.absolute())  # not resolved: a venv's python is a link
    raise ConfigError(
        f"--engine vllm needs the python of vLLM's environment, and there is no "
        f"{MADE_VLLM_PYTHON} here",
        hint="Build it with `make vllm` (in modelyard's checkout, and run serve there), or "
        "pass --vllm-python PATH (or set MODELYARD_VLLM_PYTHON).",
    )


def refuse_unread(ctx: typer.Context, engine: str) -> None:
    """A ``ConfigError`` for an option given on the command line that ``engine`` would not
    read (an environment variable such as MODELYARD_VLLM_PYTHON may be set for every run)."""
    for name, engines in ENGINE_OPTIONS.items():
        source = ctx.get_parameter_source(name)  # typer's own click: compared by name
        if engine in engines or source is None or source.name != "COMMANDLINE":
            continue
        flag = "--" + name.replace("_", "-")
        hint = f"Leave {flag} out, or serve with --engine {engines[0]}."
        if name == "device" and engine == "vllm":
            hint = "vLLM runs on the GPUs CUDA_VISIBLE_DEVICES shows (--vllm-tensor-parallel-size)."
        raise ConfigError(
            f"{flag} is read only by --engine {' or '.join(engines)}, not by --engine {engine}",
            hint=hint,
        )


def await_vllm(vllm: Any, store: Store, timeout_s: float) -> None:
    """Start the vLLM servers of the endpoints' versions and wait until they are ready
    (a SIGTERM meanwhile interrupts the wait like Ctrl+C). The handler is in place before
    the first server starts: a SIGTERM right after it would otherwise end this process at
    once and leave that server running, in its own process group."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        started = vllm.start_for(store)
        if not started:
            return
        err_console.print(f"waiting for {started} vLLM server(s) to start (logs in "
                          f"{settings().home / 'logs'})")  # fmt: skip
        late = vllm.wait_started(timeout_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for process in late:
        err_console.print(f"[yellow]vLLM for {process.model} is not ready ({process.problem}); "
                          "serving anyway: its requests get 503 until it is[/yellow]")  # fmt: skip


def control_plane(store: Store, *, secure: bool, redis_url: str | None = None) -> dict[str, Any]:
    """The admin API and the web console over ``store``, by mount prefix: access tokens,
    and OIDC tokens when an issuer is set; the console's sessions open both. ``secure``:
    reached over TLS (the console's cookies are then Secure). ``redis_url``: the sessions
    and failed logins are kept there, for every replica (else in this process)."""
    from modelyard.access import (
        OIDCConfig,
        OIDCLogin,
        OIDCVerifier,
        PeopleAuthenticator,
        SSOConfig,
    )
    from modelyard.admin import ADMIN_PREFIX, create_admin_app
    from modelyard.console import (
        CONSOLE_PREFIX,
        ConsoleSessions,
        LoginLimiter,
        create_console_app,
        shared_tables,
    )

    oidc = OIDCConfig.from_settings(settings())
    sso_config = SSOConfig.from_settings(settings())
    verifier = OIDCVerifier(oidc) if oidc is not None else None
    people = PeopleAuthenticator(store, verifier)
    sso = None
    if oidc is not None and sso_config is not None:
        sso = OIDCLogin(oidc, sso_config, people.actor_of, verifier=verifier)
    table, shared = shared_tables(redis_url)
    sessions = ConsoleSessions(
        people, secure=secure, refresh=sso.renew if sso else None, table=table
    )
    limiter = LoginLimiter(shared=shared)
    return {
        ADMIN_PREFIX: create_admin_app(store, people, sessions, artifacts=open_artifacts()),
        CONSOLE_PREFIX: create_console_app(
            store, sessions, limiter=limiter, oidc=verifier is not None, sso=sso
        ),
    }


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    advertise_address: str | None = typer.Option(
        None,
        envvar="MODELYARD_ADVERTISE_ADDRESS",
        show_envvar=True,
        help="host:port where `modelyard route` reaches this server (its heartbeat's address); "
        "default: --host:--port (a 0.0.0.0 host: this machine's hostname).",
    ),
    engine: str = typer.Option(
        "transformers",
        help="transformers (embedded), vllm (vLLM servers it starts; see --vllm-python), or "
        "echo (a fake for tests). Upstream versions answer from their server whatever it is.",
    ),
    vllm_python: str | None = typer.Option(
        None,
        envvar="MODELYARD_VLLM_PYTHON",
        help="--engine vllm: the python of vLLM's own environment (default: "
        "./.venv-vllm/bin/python, which `make vllm` builds, where there is one).",
    ),
    vllm_max_loras: int = typer.Option(
        4, "--vllm-max-loras", "--max-loras", min=1, help="--engine vllm: adapters in one batch."
    ),
    vllm_max_lora_rank: int = typer.Option(
        64, help="--engine vllm: largest LoRA rank (1, 8, 16, 32, 64, 128, 256, 320 or 512)."
    ),
    vllm_max_cpu_loras: int | None = typer.Option(
        None, min=1, help="--engine vllm: adapters vLLM keeps in host memory."
    ),
    vllm_max_model_len: int | None = typer.Option(
        None, min=1, help="--engine vllm: context length (default: the model's)."
    ),
    vllm_max_num_seqs: int | None = typer.Option(
        None,
        min=1,
        help="--engine vllm: requests vLLM decodes at once (default: vLLM's, 256); as many "
        "are sent to it at once, and --max-queue more wait in serve.",
    ),
    vllm_gpu_memory_utilization: float | None = typer.Option(
        None, min=0.05, max=1.0, help="--engine vllm: share of GPU memory vLLM may take."
    ),
    vllm_tensor_parallel_size: int | None = typer.Option(
        None, min=1, help="--engine vllm: GPUs one model is split over."
    ),
    vllm_start_timeout_s: float = typer.Option(
        1200.0,
        min=1.0,
        help="--engine vllm: how long a vLLM server may take to become ready (load the "
        "weights, warm up) before it is started again.",
    ),
    vllm_kv_cache_gb: float = typer.Option(
        2.0, min=0.1, help="--engine vllm on a CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)."
    ),
    echo_delay_ms: float = typer.Option(
        0.0, min=0.0, help="With --engine echo: pause before each word (tests of streaming)."
    ),
    device: str = typer.Option(
        "auto", help="transformers engine: auto (a CUDA GPU when torch sees one), cpu, cuda:N."
    ),
    dtype: str = typer.Option(
        "auto",
        help="transformers engine: auto (bfloat16 on a GPU, float32 on the CPU), float32, "
        "bfloat16, float16.",
    ),
    max_adapters: int | None = typer.Option(
        None,
        min=1,
        help="Adapters kept loaded (LRU); default 8 (--engine vllm: 8, or --vllm-max-loras "
        "when higher).",
    ),
    host_cache_mb: float = typer.Option(
        1024.0,
        min=0.0,
        help="Verified adapter weights kept in host memory, so a reload after "
        "eviction reads no file (MiB; 0: off).",
    ),
    max_batch_size: int = typer.Option(
        8, min=1, help="Most requests run together in one generate call."
    ),
    batch_window_ms: float = typer.Option(
        5.0, min=0.0, help="How long a batch waits for more requests after its first."
    ),
    max_queue: int = typer.Option(
        256, min=1, help="Requests that may wait for the engine; beyond it, a fast 503."
    ),
    max_tokens_cap: int = typer.Option(
        256, "--max-tokens-cap", "--max-tokens", min=1, help="Upper bound on max_tokens (400)."
    ),
    max_prompt_tokens: int | None = typer.Option(
        None, min=1, help="Upper bound on prompt tokens (400); default: the model's context."
    ),
    max_body_bytes: int = typer.Option(
        1_048_576, min=1, help="Upper bound on request bodies, checked before parsing (413)."
    ),
    max_file_bytes: int = typer.Option(
        200 * 1024 * 1024,
        min=1,
        help="Upper bound on a file uploaded to /v1/files (a batch's input): 413, from its "
        "Content-Length before it is read, or as a chunked upload streams to disk. Files are "
        "kept in the artifact store.",
    ),
    max_tenant_file_bytes: int = typer.Option(
        10 * 1024**3,
        min=1,
        help="Upper bound on what one tenant's files hold in all (its uploads and its "
        "batches' outputs): an upload past it is a 400 storage_limit_exceeded; a batch's "
        "output is kept regardless.",
    ),
    batch_concurrency: int = typer.Option(
        16,
        min=1,
        help="Requests of one OpenAI batch (/v1/batches) asked at once while no live request "
        "is in flight on this replica.",
    ),
    batch_concurrency_busy: int = typer.Option(
        1,
        min=1,
        help="Requests of one OpenAI batch started at once while a live request (a client's "
        "completion, chat completion or response) is in flight on this replica or ended "
        "within 0.1 s: live traffic comes first; those in flight finish. 1 to "
        "--batch-concurrency (equal: batches do not yield).",
    ),
    max_running_batches: int = typer.Option(
        2,
        min=1,
        help="OpenAI batches this replica runs at once; the others wait, or run on "
        "another replica.",
    ),
    max_tenant_batches: int = typer.Option(
        100,
        min=1,
        help="OpenAI batches a tenant may have not finished (validating, in progress, "
        "cancelling, finalizing); creating one more is a 429 batch_limit_exceeded.",
    ),
    max_prompt_chars: int = typer.Option(
        262_144,
        min=1,
        help="Upper bound on a prompt's characters, checked before it is tokenized (400).",
    ),
    tokenize_concurrency: int = typer.Option(
        4,
        min=1,
        help="Requests of one tenant routed and tokenized at once; the others wait "
        "without holding a worker thread.",
    ),
    refusals_stored_per_minute: int = typer.Option(
        10,
        min=0,
        help="Refused requests (400, 404, 429 ...) of one key stored per minute as "
        "records, prompt shortened; every refusal is counted in modelyard_refused_total.",
    ),
    metrics_token: str | None = typer.Option(
        None,
        envvar="MODELYARD_METRICS_TOKEN",
        show_envvar=True,
        help="Bearer token that /metrics (and --docs token) require; API keys never open them.",
    ),
    metrics_port: int | None = typer.Option(
        None,
        min=0,
        max=65535,
        help="Serve /metrics on this port of --host instead of the API "
        "port (which then answers 404 for it).",
    ),
    docs: str = typer.Option(
        "off",
        help="The API docs (/docs, /redoc, /openapi.json): off (404), token (needs "
        "--metrics-token) or public.",
    ),
    request_timeout_s: float = typer.Option(
        120.0, min=0.0, help="Cancel a request running longer than this (504); 0: no timeout."
    ),
    default_rpm: int | None = typer.Option(
        None, min=1, help="Requests/min for keys without their own limit; default: unlimited."
    ),
    default_tpm: int | None = typer.Option(
        None,
        min=1,
        help="Tokens/min (prompt + max_tokens) for keys without their own; default: unlimited.",
    ),
    redis_url: str | None = typer.Option(
        None,
        envvar="MODELYARD_REDIS_URL",
        show_envvar=True,
        help="Redis that replicas share requests/min, tokens/min, budgets' spend and the "
        "console's sessions in (redis://host:6379/0); default: each replica keeps its own.",
    ),
    on_redis_down: str = typer.Option(
        "open",
        help="When --redis-url cannot be reached: open (each replica limits on its own, "
        "logged) or closed (503 with Retry-After for keys with limits).",
    ),
    key_cache_ttl_s: float = typer.Option(
        10.0, min=0.0, help="How long a key is trusted before the store is asked again."
    ),
    shutdown_grace_s: float = typer.Option(
        30.0, min=0.0, help="On SIGTERM, how long in-flight requests may take to finish."
    ),
    refresh_seconds: float = typer.Option(
        2.0,
        min=0.1,
        max=3600.0,
        help="How often to reconcile endpoints and traffic from the store.",
    ),
    heartbeat_s: float = typer.Option(
        2.0,
        min=0.1,
        max=3600.0,
        help="How often to write this server's heartbeat (servers list, rollouts).",
    ),
    run_controller: bool = typer.Option(
        True,
        "--controller/--no-controller",
        help="Also run the rollout controller (one leader per store acts, by a lease).",
    ),
    controller_interval_s: float = typer.Option(
        1.0, min=0.05, max=3600.0, help="Seconds between rollout controller ticks."
    ),
    admin: bool | None = typer.Option(
        None,
        "--admin/--no-admin",
        help="Serve the admin API at /admin/v1 (access tokens, OIDC; docs/admin-api.md) and "
        "the web console at /console (docs/console.md). "
        "Default: on for 127.0.0.1, or with TLS (--tls-cert/--tls-key or --behind-tls-proxy).",
    ),
    tls_cert: str | None = typer.Option(None, help="Serve HTTPS with this certificate (PEM)."),
    tls_key: str | None = typer.Option(None, help="The private key of --tls-cert (PEM)."),
    behind_tls_proxy: bool = typer.Option(
        False,
        "--behind-tls-proxy",
        help="A proxy in front terminates TLS: the admin API may listen beyond 127.0.0.1.",
    ),
    store_gauges_max_age_s: float = typer.Option(
        0.0,
        "--store-gauges-max-age-s",
        min=0.0,
        max=86_400.0,
        envvar="MODELYARD_STORE_GAUGES_MAX_AGE_S",
        show_envvar=True,
        help="Let /metrics reuse the store's gauges (drift, alerts, traffic, rollouts, "
        "budgets, quality) read by a scrape this many seconds before, instead of reading the "
        "store at every scrape: with hundreds of endpoints, a read costs each replica about "
        "a second of CPU (docs/monitoring.md). 0: every scrape reads; at most a day.",
    ),
    embed_prompts: bool = typer.Option(
        False,
        "--embed-prompts",
        help="Embed each prompt with the packaged MiniLM model in the record writer (off the "
        "request path), so semantic drift works for tenants whose policy keeps no text.",
    ),
) -> None:
    """Serve POST /v1/chat/completions, /v1/completions, /v1/responses (stream: true for
    server-sent events; structured outputs, tools, logprobs: docs/serving.md),
    /v1/feedback, GET /v1/models, /health, /ready, /metrics for every endpoint
    in the store. New endpoints and traffic changes apply without a restart. Rate
    limits are per key: per replica, or shared by every replica with --redis-url.
    SIGTERM drains: /ready turns 503, new requests get 503, in-flight ones finish, then
    the process exits 0."""
    from modelyard.admin import ADMIN_PREFIX, admin_enabled
    from modelyard.serving import (
        BackgroundServer,
        BatchSettings,
        EchoEngine,
        Engine,
        EngineSet,
        OperatorAccess,
        PacedEchoEngine,
        ServerLimits,
        TransformersEngine,
        UpstreamEngine,
        VLLMEngine,
        VLLMOptions,
        create_app,
        create_metrics_app,
        placement,
        run_server,
    )

    limits = ServerLimits(
        max_tokens=max_tokens_cap,
        key_cache_seconds=key_cache_ttl_s,
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens,
        request_timeout_s=request_timeout_s or None,
        default_rpm=default_rpm,
        default_tpm=default_tpm,
        max_prompt_chars=max_prompt_chars,
        tokenize_concurrency=tokenize_concurrency,
        refusals_stored_per_minute=refusals_stored_per_minute,
        redis_url=redis_url,
        on_redis_down=on_redis_down,
    )
    batches = BatchSettings(  # checked before anything starts
        concurrency=batch_concurrency, concurrency_busy=batch_concurrency_busy,
        max_running=max_running_batches, max_per_tenant=max_tenant_batches,
    )  # fmt: skip
    if docs not in ("off", "token", "public"):
        raise ConfigError(f"unknown --docs {docs!r}: use off, token or public")
    if docs == "token" and not metrics_token:
        raise ConfigError(
            "--docs token needs an operator token",
            hint="Set MODELYARD_METRICS_TOKEN or pass --metrics-token.",
        )
    if metrics_port and metrics_port == port:
        raise ConfigError(f"--metrics-port {metrics_port} is the API --port; pick another")
    if engine not in ("transformers", "vllm", "echo"):
        raise ConfigError(f"unknown --engine {engine!r}: use transformers, vllm or echo")
    refuse_unread(ctx, engine)
    if engine == "vllm" and not vllm_python:
        vllm_python = _made_vllm_python()
    if engine == "vllm" and max_adapters is not None and max_adapters < vllm_max_loras:
        raise ConfigError(
            f"--max-adapters {max_adapters} is below --vllm-max-loras {vllm_max_loras}: at most "
            f"{max_adapters} adapters are registered with vLLM, so no batch could hold more",
            hint=f"Give --max-adapters {vllm_max_loras} or more, or leave it out.",
        )
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both or neither")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if tls is not None:
        _check_tls(*tls)
    admin_on = admin_enabled(host, admin, tls=tls is not None, behind_tls_proxy=behind_tls_proxy)
    placed = placement(device, dtype) if engine == "transformers" else None
    # a busy --port or --metrics-port is refused now, not after vLLM has loaded its weights
    # (minutes, for a large model); the server binds them for good once the engine is ready
    for wanted in (port, metrics_port):
        if wanted:  # 0 or none: any free port, or no listener of its own
            bind_socket(host, wanted).close()
    if run_controller:  # as Prometheus, refuse to start on a rules file it cannot evaluate
        check_alert_rules()
    store = open_store()
    chosen: Engine
    if engine == "transformers":
        chosen = TransformersEngine(
            open_artifacts(),
            max_adapters=max_adapters or 8,
            host_cache_mb=host_cache_mb,
            max_batch_size=max_batch_size,
            batch_window_ms=batch_window_ms,
            max_queue=max_queue,
            store=store,
            placement=placed,
        )
    elif engine == "vllm":
        assert vllm_python is not None  # checked above
        options = VLLMOptions(
            python=vllm_python, dtype=dtype, max_loras=vllm_max_loras,
            max_lora_rank=vllm_max_lora_rank, max_cpu_loras=vllm_max_cpu_loras,
            max_model_len=vllm_max_model_len, max_num_seqs=vllm_max_num_seqs,
            gpu_memory_utilization=vllm_gpu_memory_utilization,
            tensor_parallel_size=vllm_tensor_parallel_size, kv_cache_gb=vllm_kv_cache_gb,
            start_timeout_s=vllm_start_timeout_s,
        )  # fmt: skip
        vllm = VLLMEngine(open_artifacts(), options, store=store,
                          max_adapters=max_adapters or max(8, vllm_max_loras),
                          max_queue=max_queue, log_dir=settings().home / "logs",
                          request_timeout_s=request_timeout_s or 600.0)  # fmt: skip
        # the servers of the endpoints' versions start now, and serve listens (/health,
        # /ready) once they are ready: a replica behind a load balancer takes no traffic it
        # would answer with 503 while vLLM loads its weights
        try:
            await_vllm(vllm, store, vllm_start_timeout_s)
        except BaseException:  # Ctrl+C or SIGTERM meanwhile: no vLLM is left running
            vllm.close()
            store.close()
            raise
        chosen = vllm
    else:
        chosen = PacedEchoEngine(echo_delay_ms / 1000) if echo_delay_ms else EchoEngine()
    # versions of kind upstream (registry upstream) answer from their server, whatever --engine
    chosen = EngineSet(chosen, UpstreamEngine(open_artifacts(), store=store))
    controller = None
    if run_controller:
        from modelyard.delivery import Controller

        # its own connection pool and actor: the data plane never waits on it
        from modelyard.monitoring import tick as monitoring_tick

        controller = Controller(open_store(), extra_ticks=[monitoring_tick])
    embedder = None
    if embed_prompts:
        from modelyard.monitoring import Embedder

        embedder = Embedder()
    secure = tls is not None or behind_tls_proxy
    mounts = control_plane(store, secure=secure, redis_url=redis_url) if admin_on else {}
    app = create_app(
        store, chosen, limits=limits, refresh_seconds=refresh_seconds, heartbeat_s=heartbeat_s,
        address=advertise_address or f"{host}:{port}", controller=controller,
        controller_interval_s=controller_interval_s,
        monitoring_max_age_s=store_gauges_max_age_s,
        embedder=embedder,
        access=OperatorAccess(
            metrics="off" if metrics_port is not None else "token" if metrics_token else "public",
            docs=docs,  # type: ignore[arg-type]  # checked above
            token=metrics_token,
        ),
        mounts=mounts,
        artifacts=open_artifacts(),
        max_file_bytes=max_file_bytes,
        max_tenant_file_bytes=max_tenant_file_bytes,
        batches=batches,
    )  # fmt: skip
    where = f", {placed}" if placed is not None else ""
    metrics_server = None
    if metrics_port is not None:
        metrics_server = BackgroundServer(
            create_metrics_app(app, metrics_token), host, metrics_port
        )
        metrics_server.start()

    def banner(bound: int) -> None:  # once the port is ours: a busy port never shows one
        scheme, at = "https" if tls else "http", url_host(host)  # [::1] in a URL
        err_console.print(
            f"serving {store.url} on {scheme}://{at}:{bound} (engine {engine}{where})"
        )
        if admin_on:
            err_console.print(f"admin API on {scheme}://{at}:{bound}{ADMIN_PREFIX}")
            err_console.print(f"web console on {scheme}://{at}:{bound}/console/")
        if metrics_server is not None:
            err_console.print(f"/metrics on http://{at}:{metrics_server.port}/metrics")
        elif not metrics_token:
            err_console.print(
                "[yellow]/metrics is public on the API port (it names tenants and endpoints): "
                "set MODELYARD_METRICS_TOKEN or --metrics-port for a deployment[/yellow]"
            )

    try:
        run_server(app, host, port, shutdown_grace_s=shutdown_grace_s, on_bound=banner, tls=tls)
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        chosen.close()
        store.close()
        if controller is not None:
            controller.store.close()
    err_console.print("stopped")


def _check_tls(cert: str, key: str) -> None:
    """The certificate and key load as a pair now, not once the engine has loaded (minutes
    for vLLM): a missing file or one that is not PEM is one line naming the options."""
    import ssl

    for path, option in ((cert, "--tls-cert"), (key, "--tls-key")):
        if not Path(path).is_file():
            raise ConfigError(f"{option} {path} is not a file", field=option)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--tls-cert {cert} and --tls-key {key} do not load as a certificate and its "
            f"private key: {getattr(exc, 'reason', None) or exc}",
            hint="Give PEM files: the server's certificate (its chain after it) and its key.",
            field="--tls-cert",
        ) from None
