"""A stream consumer's Prometheus metrics (``stream run --metrics-port``), served on a port
of its own as Kafka and Celery consumers serve theirs.

The counts are read at scrape time from the consumer's ``StreamSummary`` (what its
progress lines and its summary print), so ``/metrics`` and the summary never disagree;
the backlog is asked of the broker at each scrape (``MessageSource.backlog``: Redis's
``XINFO GROUPS``, JetStream's consumer info) and left out of a scrape that cannot read
it; the latency of each answer is observed as it is settled.

Families (Prometheus adds ``_total`` to a counter's samples):

- ``modelyard_stream_up{broker,stream,group,consumer}``: 1 while the consumer reads its
  stream, 0 while it starts (the engine loading, the broker checked) and once it stopped;
- ``modelyard_stream_messages{outcome}``: deliveries ended, by how: ``answered``,
  ``refused`` (the request's error answered), ``dead_lettered``, ``retried`` (left
  pending for another attempt), ``duplicate`` (settled already: nothing published);
- ``modelyard_stream_received``, ``modelyard_stream_redelivered``: deliveries taken, and
  those of messages delivered before;
- ``modelyard_stream_in_flight``, ``modelyard_stream_backlog``: gauges;
- ``modelyard_stream_answer_latency_seconds``: a histogram of the answers' latencies;
- ``modelyard_stream_tokens{kind}``: prompt and completion tokens of what was published;

and the process's own ``process_*`` (memory, CPU, open files, start time), as a
supervisor's consumer is a process of its own.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Self

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from modelyard.stream._consumer import StreamConsumer, StreamSummary

log = logging.getLogger(__name__)

OUTCOMES = ("answered", "refused", "dead_lettered", "retried", "duplicate")
"""The ``outcome`` label of ``modelyard_stream_messages``."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""An answer takes from tens of milliseconds (a short one on a GPU) to minutes (a long one
on a CPU): the default buckets stop at 10 s."""


class StreamMetrics:
    """One consumer's metrics in a registry of their own; ``serve`` exports them over HTTP
    until ``close``. ``watch`` a consumer while it runs (``run_stream`` does)."""

    def __init__(self, *, broker: str, stream: str, group: str, consumer: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.latency = Histogram(
            "modelyard_stream_answer_latency_seconds",
            "Time the data plane took to answer a message, of the answers published "
            "(refusals and failures not included)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._labels = {"broker": broker, "stream": stream, "group": group, "consumer": consumer}
        self._lock = threading.Lock()  # held while the broker is asked for the backlog
        self._consumer: StreamConsumer | None = None
        self._summary: StreamSummary | None = None  # kept after the consumer stopped
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry.register(_Collector(self))

    def serve(self, host: str, port: int) -> None:
        """Export the metrics at ``http://host:port/metrics``; a ``ConfigError`` naming
        ``--metrics-port`` (or ``--metrics-host``) when that cannot be listened on."""
        if not 1 <= port <= 65535:
            raise ConfigError(
                f"--metrics-port {port} is not a port: give one from 1 to 65535",
                field="--metrics-port",
            )
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except socket.gaierror as exc:  # not a name or address
            raise ConfigError(
                f"--metrics-host {host!r} is not an address of this machine: {exc.strerror}",
                field="--metrics-host",
            ) from exc
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    f"--metrics-host {host!r} is not an address of this machine",
                    hint="Give 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or "
                    "one of its addresses.",
                    field="--metrics-host",
                ) from exc
            why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise ConfigError(
                f"--metrics-port {port} on {host} cannot be listened on: {why}",
                hint="Give a free port (each consumer on a machine needs one of its own).",
                field="--metrics-port",
            ) from exc

    @property
    def address(self) -> tuple[str, int] | None:
        """Where ``serve`` listens (host, port); None before it and after ``close``."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def watch(self, consumer: StreamConsumer) -> None:
        """Export ``consumer``'s counts, in-flight messages and backlog from now on."""
        with self._lock:
            self._consumer, self._summary = consumer, consumer.summary

    def unwatch(self) -> None:
        """The consumer stopped: its counts stay, its broker is not asked any more (its
        source is about to be closed; a scrape asking it now is waited for)."""
        with self._lock:
            self._consumer = None

    def answered(self, latency_s: float) -> None:
        """An answer published (``StreamConsumer``'s ``on_answer``)."""
        self.latency.observe(latency_s)

    def close(self) -> None:
        """Stop serving (what a scrape in progress sends is finished first)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Collector(Collector):
    """What ``StreamMetrics`` reads at each scrape: the summary, the consumer and the
    broker's backlog."""

    def __init__(self, metrics: StreamMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        with m._lock:
            consumer, summary = m._consumer, m._summary
            backlog = _backlog(consumer) if consumer is not None else None
        labels = m._labels
        up = GaugeMetricFamily(
            "modelyard_stream_up",
            "1 while this consumer reads its stream (0 while it starts or once it stopped); "
            "its labels name the broker, the stream, the group and the consumer",
            labels=list(labels),
        )
        up.add_metric(list(labels.values()), float(consumer is not None))
        yield up
        counts: dict[str, Any] = {
            "answered": 0, "refused": 0, "dead_lettered": 0, "retried": 0, "duplicates": 0,
            "received": 0, "redelivered": 0, "prompt_tokens": 0, "completion_tokens": 0,
        }  # fmt: skip
        if summary is not None:
            counts = {name: getattr(summary, name) for name in counts}
        messages = CounterMetricFamily(
            "modelyard_stream_messages",
            "Deliveries this consumer ended, by outcome: answered, refused (the request's "
            "error answered), dead_lettered, retried (left pending for another attempt), "
            "duplicate (settled already: nothing published)",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            messages.add_metric([outcome], counts["duplicates" if outcome == "duplicate"
                                                 else outcome])  # fmt: skip
        yield messages
        yield CounterMetricFamily(
            "modelyard_stream_received",
            "Deliveries this consumer took (messages delivered again included)",
            value=counts["received"],
        )
        yield CounterMetricFamily(
            "modelyard_stream_redelivered",
            "Deliveries of messages delivered before (a stopped consumer's, a retry)",
            value=counts["redelivered"],
        )
        tokens = CounterMetricFamily(
            "modelyard_stream_tokens",
            "Tokens of the answers, refusals and dead letters published, by kind",
            labels=["kind"],
        )
        tokens.add_metric(["prompt"], counts["prompt_tokens"])
        tokens.add_metric(["completion"], counts["completion_tokens"])
        yield tokens
        yield GaugeMetricFamily(
            "modelyard_stream_in_flight",
            "Messages this consumer took and has not settled yet (at most --concurrency "
            "asked at once)",
            value=consumer.in_flight if consumer is not None else 0,
        )
        if backlog is not None:
            yield GaugeMetricFamily(
                "modelyard_stream_backlog",
                "Messages of the group not settled yet, new or delivered (this consumer's "
                "and the others'), as the broker says at this scrape",
                value=backlog,
            )


def _backlog(consumer: StreamConsumer) -> int | None:
    """The group's backlog, or None when the broker cannot say (the scrape goes on)."""
    try:
        return consumer.source.backlog()
    except Exception as exc:  # an unreachable broker stops the consumer; not the scrape
        log.debug("stream metrics: no backlog: %s", exc)
        return None


__all__ = ["LATENCY_BUCKETS", "OUTCOMES", "StreamMetrics"]
