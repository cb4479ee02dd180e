"""``modelyard stream run``: answer the messages of a Redis Stream or a NATS JetStream subject
through the data plane."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any

import typer

from modelyard.cli._batch import API_KEY, ENDPOINT, MODEL, TENANT, job_engine
from modelyard.cli._common import bad_input, err_console, open_artifacts, open_store, print_json
from modelyard.durations import parse_duration
from modelyard.errors import ConfigError, ModelyardError

if TYPE_CHECKING:
    from modelyard.store import Store
    from modelyard.stream import StreamJobSpec, StreamMetrics, StreamSummary

app = typer.Typer(
    help="Streaming inference: the messages of a Redis Stream or a NATS JetStream subject "
    "answered through an endpoint.",
    no_args_is_help=True,
)


@app.command("run")
def run(
    ctx: typer.Context,
    stream: str = typer.Option(
        ...,
        "--stream",
        help="The Redis Stream of requests, or with --nats-url the subject (wildcards allowed).",
    ),
    output_stream: str = typer.Option(
        ..., "--output-stream", help="The stream answers go to, one per message."
    ),
    group: str = typer.Option(
        "modelyard", help="The consumer group (created if missing); consumers share its work."
    ),
    consumer: str | None = typer.Option(
        None,
        help="This consumer's name in the group (default: HOSTNAME-PID). A stable name "
        "resumes its own pending messages at once after a restart.",
    ),
    dead_letter_stream: str | None = typer.Option(
        None, help="Where messages that cannot be answered go (default: STREAM:dead-letters)."
    ),
    redis_url: str | None = typer.Option(
        None,
        envvar="MODELYARD_REDIS_URL",
        show_envvar=True,
        help="The Redis holding the streams (redis://host:6379/0).",
    ),
    nats_url: str | None = typer.Option(
        None,
        envvar="MODELYARD_NATS_URL",
        show_envvar=True,
        help="Or a NATS server with JetStream (nats://host:4222): --stream, --output-stream "
        "and --dead-letter-stream are subjects, --group a durable consumer.",
    ),
    endpoint: str | None = ENDPOINT,
    api_key: str | None = API_KEY,
    model: str | None = MODEL,
    tenant: str | None = TENANT,
    concurrency: int = typer.Option(
        16, min=1, help="Messages in flight at most: no more are read until some are answered."
    ),
    max_attempts: int = typer.Option(
        3,
        min=1,
        help="Deliveries of a message that fails on the server's side (or stops its "
        "consumer) before it is dead-lettered.",
    ),
    claim_idle: str = typer.Option(
        "60s",
        help="Take over a pending message idle this long (its consumer stopped, or it "
        "waits for a retry).",
    ),
    dedup_ttl: str = typer.Option(
        "1h",
        help="Keep a marker per settled message this long, so a message delivered again "
        "after it was settled is not answered twice (0: no markers).",
    ),
    start_id: str = typer.Option(
        "0", help="Where a group created now starts: 0 (the stream's first message) or $ (new)."
    ),
    system: str | None = typer.Option(
        None, help="A system message before each prompt (the instruction a version trained on)."
    ),
    max_tokens: int = typer.Option(
        64, min=1, help="Most tokens of an answer (a message may set its own)."
    ),
    temperature: float = typer.Option(
        0.0, min=0.0, max=2.0, help="0 is greedy (a message may set its own)."
    ),
    until_empty: bool = typer.Option(
        False, "--until-empty", help="Stop once nothing is left to answer (none new, none pending)."
    ),
    progress_every: str = typer.Option(
        "10s", help="How often to print progress (messages/s) on stderr; 0: never."
    ),
    engine: str = typer.Option(
        "transformers", help="transformers (embedded) or echo (a fake that answers the prompt)."
    ),
    device: str = typer.Option("auto", help="transformers engine: auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="transformers engine: auto, float32, bfloat16..."),
    max_batch_size: int = typer.Option(
        16, min=1, help="Most messages decoded together in the engine's running batch."
    ),
    max_adapters: int = typer.Option(8, min=1, help="Adapters kept loaded (LRU)."),
    request_timeout_s: float = typer.Option(
        600.0, min=0.0, help="A message running longer fails with a timeout; 0: no timeout."
    ),
    echo_delay_ms: float = typer.Option(
        0.0, min=0.0, help="With --engine echo: pause before each word (tests)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON at the end."),
    metrics_port: int | None = typer.Option(
        None,
        help="Serve Prometheus metrics at http://HOST:PORT/metrics while it runs (messages "
        "by outcome, in flight, the backlog, answer latency, tokens).",
    ),
    metrics_host: str = typer.Option(
        "127.0.0.1", help="The address --metrics-port listens on (0.0.0.0: every interface)."
    ),
) -> None:
    """Consume STREAM as a member of GROUP and answer each message through an endpoint
    (or, as an operator, one version), writing the answer to OUTPUT-STREAM.

    A message has a field `body` holding JSON: {"prompt": "..."} or {"messages": [...]},
    with optional max_tokens, temperature and id. Its answer carries message_id, id,
    answer, finish_reason, prompt_tokens, completion_tokens, version, record_id and error.
    Delivery is at least once and each message is answered once in the output, whatever
    instant a consumer is killed at; a message that is not a request, or that failed
    --max-attempts times, goes to the dead-letter stream with its reason. One inference
    record per message (source stream, job STREAM/GROUP). SIGTERM or Ctrl+C drains:
    nothing more is read, the messages in flight are answered, then it exits 0.
    --metrics-port serves the consumer's Prometheus metrics until it exits.
    """
    from modelyard.serving import SamplingParams, ServerLimits
    from modelyard.stream import StreamJobSpec, StreamSettings, default_consumer, run_stream

    limits = ServerLimits(
        max_tokens=max(max_tokens, 256), request_timeout_s=request_timeout_s or None
    )
    with bad_input():
        redis_url, nats_url = _broker(ctx, redis_url, nats_url)
        if nats_url and consumer:
            raise ConfigError(
                "--consumer names a consumer of a Redis group; a NATS group's consumers "
                "share one durable consumer and have no names of their own",
                hint="Drop --consumer (the group is --group).",
                field="--consumer",
            )
        every = parse_duration(progress_every, field="--progress-every", allow_zero=True)
        spec = StreamJobSpec(
            redis_url=redis_url, stream=stream, group=group, output=output_stream,
            dead_letters=dead_letter_stream or f"{stream}:dead-letters",
            params=SamplingParams(max_tokens=max_tokens, temperature=temperature),
            consumer=consumer or default_consumer(), endpoint=endpoint, api_key=api_key,
            model=model, tenant=tenant,
            settings=StreamSettings(concurrency=concurrency, max_attempts=max_attempts,
                                    system=system, max_tokens_cap=max(max_tokens, 256),
                                    until_empty=until_empty),
            claim_idle_s=parse_duration(claim_idle, field="--claim-idle").total_seconds(),
            dedup_ttl_s=parse_duration(dedup_ttl, field="--dedup-ttl",
                                       allow_zero=True).total_seconds(),
            start_id=start_id, nats_url=nats_url,
        )  # fmt: skip
        metrics = _metrics(spec, metrics_host, metrics_port)  # listening before anything else
    with metrics or contextlib.nullcontext():
        store = open_store()
        chosen = job_engine(engine, store, device, dtype, max_batch_size, max_adapters,
                            max(256, concurrency), echo_delay_ms)  # fmt: skip
        report = _Report()
        try:
            with bad_input():
                summary = run_stream(
                    store, chosen, spec, limits=limits,
                    progress=None if json_out or not every else report.line,
                    progress_s=every.total_seconds() or 10.0,
                    on_start=functools.partial(_started, store, spec,
                                               None if json_out else report),
                    metrics=metrics,
                )  # fmt: skip
        finally:
            chosen.close()
            store.close()
    if json_out:
        print_json(summary.to_json())
    else:
        _print_summary(summary)
    if summary.in_flight:
        raise ModelyardError(
            f"stopped at once: {summary.in_flight} messages in flight were not answered",
            hint="They stay pending in the group: a consumer answers them after --claim-idle"
            + ("." if nats_url else " (at once if it reuses this --consumer name)."),
        )


def _started(store: Store, spec: StreamJobSpec, report: _Report | None, consumer: Any) -> None:
    """Before the first message is read: every upstream version the consumer may ask has
    its key here (else every message would fail, and be dead-lettered); then its line."""
    from modelyard.batch import check_upstream_keys, job_versions

    versions = job_versions(store, endpoint=spec.endpoint, model=spec.model)
    check_upstream_keys(store, open_artifacts(), versions)
    if report is not None:
        report.started(consumer.summary.job_id, spec)


def _metrics(spec: StreamJobSpec, host: str, port: int | None) -> StreamMetrics | None:
    """The consumer's metrics, served at ``host:port`` (None without --metrics-port); a
    ConfigError naming --metrics-port when the port cannot be listened on."""
    if port is None:
        return None
    from modelyard.stream import StreamMetrics

    metrics = StreamMetrics(broker="nats" if spec.nats_url else "redis", stream=spec.stream,
                            group=spec.group, consumer=spec.consumer)  # fmt: skip
    metrics.serve(host, port)
    return metrics


def _broker(
    ctx: typer.Context, redis_url: str | None, nats_url: str | None
) -> tuple[str | None, str | None]:
    """The one broker to read: a URL given on the command line wins over the other's
    environment variable; two on the command line, or two from the environment, are
    refused."""
    if redis_url and nats_url:
        given = {
            n: getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"
            for n in ("redis_url", "nats_url")
        }  # typer's own click: compared by name
        if given["redis_url"] != given["nats_url"]:
            return (redis_url, None) if given["redis_url"] else (None, nats_url)
        raise ConfigError(
            "both a Redis (--redis-url or MODELYARD_REDIS_URL) and a NATS (--nats-url or "
            "MODELYARD_NATS_URL) are given: a consumer reads one broker",
            hint="Give one of --redis-url and --nats-url on the command line.",
        )
    if not redis_url and not nats_url:
        raise ConfigError(
            "give the broker: --redis-url (a Redis Stream) or --nats-url (a NATS JetStream "
            "subject), or MODELYARD_REDIS_URL or MODELYARD_NATS_URL"
        )
    if redis_url:
        from modelyard.redis_client import check_redis_url

        check_redis_url(redis_url, "--redis-url")
    return redis_url, nats_url


class _Report:
    """Progress lines on stderr: what was settled, and messages/s since the last line."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), 0)

    def started(self, job_id: str, spec: StreamJobSpec) -> None:
        err_console.print(
            f"stream {job_id}: reading {spec.stream} as {spec.consumer} of group "
            f"{spec.group}; answers to {spec.output}, dead letters to "
            f"{spec.dead_letters}",
            markup=False,
        )

    def line(self, s: StreamSummary) -> None:
        now, settled = time.monotonic(), s.settled
        then, before = self._last
        self._last = (now, settled)
        rate = (settled - before) / (now - then) if now > then else 0.0
        err_console.print(
            f"stream {s.job_id}: {s.answered} answered, {s.refused} refused, "
            f"{s.dead_lettered} dead-lettered, {s.retried} retried, {s.in_flight} in flight; "
            f"{rate:.1f} messages/s now, {s.messages_per_s:.1f} overall",
            markup=False,
        )


def _print_summary(s: StreamSummary) -> None:
    err_console.print(
        f"stream {s.job_id}: stopped ({s.stopped}) after {s.elapsed_s:.1f} s", markup=False
    )
    err_console.print(
        f"  {s.received} messages received ({s.redelivered} delivered again), "
        f"{s.answered} answered, {s.refused} refused, {s.dead_lettered} dead-lettered, "
        f"{s.retried} left for a retry, {s.duplicates} already settled, {s.lost} deleted "
        f"while pending",
        markup=False,
    )
    if s.first_error:
        err_console.print(f"  first failure: {s.first_error}", markup=False)
    versions = ", ".join(f"{v} {n}" for v, n in sorted(s.versions.items())) or "none"
    cost = f"{s.cost:.6g}" if s.cost is not None else "n/a (no token prices: monitor price set)"
    err_console.print(
        f"  tokens: {s.prompt_tokens} prompt + {s.completion_tokens} completion; cost {cost}; "
        f"versions: {versions}",
        markup=False,
    )
    err_console.print(f"  {s.messages_per_s:.1f} messages/s", markup=False)
