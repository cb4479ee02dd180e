"""``modelyard stream run``: a consumer of a Redis Stream or a NATS JetStream subject on the
in-process data plane.

``run_stream`` checks what it can before it reads a message (the endpoint exists for
the key and the key has the ``infer`` scope, or the operator's version exists; the
broker answers; the group exists or is created), then runs a ``StreamConsumer`` until
it is stopped.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.batch import JobRunner, JobSettings, job_plane
from modelyard.errors import ConfigError
from modelyard.serving import Engine, SamplingParams, ServerLimits
from modelyard.store import Store
from modelyard.stream._consumer import Progress, StreamConsumer, StreamSettings, StreamSummary
from modelyard.stream._metrics import StreamMetrics
from modelyard.stream._nats import NatsStreamSource
from modelyard.stream._redis import RedisStreamSource

RECORD_SOURCE = "stream"  # the records' source


def default_consumer() -> str:
    """A consumer name unique to this process: ``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class StreamJobSpec:
    """One consumer: ``stream`` read by ``group`` as ``consumer`` on the Redis at
    ``redis_url`` (or the subject ``stream`` on the NATS JetStream at ``nats_url``),
    answers to ``output``, dead letters to ``dead_letters``; asked through ``endpoint``
    with ``api_key``, or by an operator of the version ``model`` alone (records under
    ``tenant``, default the model's owner)."""

    redis_url: str | None
    stream: str
    group: str
    output: str
    dead_letters: str
    params: SamplingParams
    consumer: str = ""  # default_consumer()
    endpoint: str | None = None
    api_key: str | None = None
    model: str | None = None
    tenant: str | None = None
    settings: StreamSettings = dataclasses.field(default_factory=StreamSettings)
    claim_idle_s: float = 60.0
    dedup_ttl_s: float = 3600.0
    start_id: str = "0"
    nats_url: str | None = None

    def __post_init__(self) -> None:
        if bool(self.redis_url) == bool(self.nats_url):
            raise ConfigError(
                "give the broker: a Redis with --redis-url or a NATS with --nats-url (one)"
            )
        if (self.endpoint is None) == (self.model is None):
            raise ConfigError(
                "give either an endpoint (with an API key) or an operator's version (--model)"
            )
        if self.endpoint is not None and not self.api_key:
            raise ConfigError(
                f"calling endpoint {self.endpoint!r} needs a tenant's API key",
                hint="Pass --api-key (or set MODELYARD_API_KEY), or, as an operator, name a "
                "version with --model NAME:VERSION.",
            )
        if self.model is not None and self.api_key:
            raise ConfigError(
                "--model runs a version as an operator, with no API key",
                hint="Drop the key, or call an endpoint with it (--endpoint).",
            )
        if self.tenant is not None and self.model is None:
            raise ConfigError("--tenant goes with --model (an endpoint's key says the tenant)")
        if self.claim_idle_s <= self.settings.poll_s:
            raise ConfigError(
                f"--claim-idle is {self.claim_idle_s:g} s; it must be longer than "
                f"{self.settings.poll_s:g} s"
            )
        if self.dedup_ttl_s < 0:
            raise ConfigError("--dedup-ttl must be 0 (no markers) or more")
        if self.dead_letters == self.output:  # a reader of answers would take them as answers
            raise ConfigError(
                f"--dead-letter-stream {self.dead_letters!r} is also the --output-stream",
                hint="Send dead letters to a stream of their own (default STREAM:dead-letters).",
                field="--dead-letter-stream",
            )


def run_stream(
    store: Store,
    engine: Engine,
    spec: StreamJobSpec,
    *,
    limits: ServerLimits | None = None,
    progress: Progress | None = None,
    progress_s: float = 10.0,
    on_start: Callable[[StreamConsumer], None] | None = None,
    metrics: StreamMetrics | None = None,
) -> StreamSummary:
    """Consume ``spec``'s stream until stopped (SIGTERM, SIGINT, ``StreamConsumer.stop``,
    or nothing left with ``until_empty``); the summary. Bad settings (the endpoint, the
    key, the version, the streams) raise a ConfigError before any message is read.
    ``metrics`` (served by the caller) watch the consumer while it runs."""
    with job_plane(
        store, engine, endpoint=spec.endpoint, api_key=spec.api_key, model=spec.model,
        tenant=spec.tenant, limits=limits,
    ) as asking:  # fmt: skip
        source = _source(spec)
        try:
            job = JobSettings(asking.endpoint, spec.params, spec.settings.concurrency,
                              source=RECORD_SOURCE)  # fmt: skip
            settings = spec.settings
            if settings.keep_s > spec.claim_idle_s / 4:  # renewed well before it can be claimed
                settings = dataclasses.replace(settings, keep_s=spec.claim_idle_s / 4)
            runner = JobRunner(asking.plane, asking.key, source.job_id, job, asking.prices)
            consumer = StreamConsumer(runner, source, settings,
                                      on_answer=metrics.answered if metrics else None)  # fmt: skip
            if on_start is not None:
                on_start(consumer)
            if metrics is not None:
                metrics.watch(consumer)
            summary = consumer.run(progress, progress_s)
            summary.lost = source.lost
            return summary
        finally:
            if metrics is not None:  # before the source closes: no scrape asks it then
                metrics.unwatch()
            source.close()


def _source(spec: StreamJobSpec) -> RedisStreamSource | NatsStreamSource:
    """The broker's share of ``spec``'s stream, open."""
    if spec.nats_url:
        return NatsStreamSource.connect(
            spec.nats_url, subject=spec.stream, group=spec.group, output=spec.output,
            dead_letters=spec.dead_letters, claim_idle_s=spec.claim_idle_s,
            dedup_ttl_s=spec.dedup_ttl_s, start_id=spec.start_id,
        )  # fmt: skip
    assert spec.redis_url
    return RedisStreamSource.connect(
        spec.redis_url, stream=spec.stream, group=spec.group,
        consumer=spec.consumer or default_consumer(), output=spec.output,
        dead_letters=spec.dead_letters, claim_idle_s=spec.claim_idle_s,
        dedup_ttl_s=spec.dedup_ttl_s, start_id=spec.start_id,
    )  # fmt: skip


__all__ = ["RECORD_SOURCE", "StreamJobSpec", "default_consumer", "run_stream"]
