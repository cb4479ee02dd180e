"""Streaming inference: ``modelyard stream run`` answers the messages of a stream.

A ``StreamConsumer`` takes messages from a ``MessageSource`` (a consumer group's
share of a stream: ``RedisStreamSource`` for Redis Streams, ``NatsStreamSource``
for a NATS JetStream subject) as ``Delivery``\\ s, at
most ``concurrency`` at a time, asks each through the same data plane as the HTTP
API (``batch.JobRunner`` over ``serving.InProcessPlane``: traffic plans, tenants'
limits, storage policy, one record per message marked ``stream`` with the stream
and group as its job), and ends each with one ``Settlement``: its answer in the
output stream, or its reason in the dead-letter stream, published and
acknowledged at once so a message delivered again is never answered twice.
``run_stream`` runs a ``StreamJobSpec``; the message format is in ``_messages``
(``parse_request``, ``ANSWER_FIELDS``, ``DEAD_LETTER_FIELDS``); ``StreamMetrics`` are a
consumer's Prometheus metrics (``stream run --metrics-port``).
"""

from modelyard.stream._consumer import StreamConsumer, StreamSettings, StreamSummary
from modelyard.stream._job import RECORD_SOURCE, StreamJobSpec, default_consumer, run_stream
from modelyard.stream._messages import (
    ANSWER_FIELDS,
    BODY,
    DEAD_LETTER_FIELDS,
    BadMessage,
    Request,
    parse_request,
)
from modelyard.stream._metrics import StreamMetrics
from modelyard.stream._nats import NatsStreamSource
from modelyard.stream._redis import RedisStreamSource, stream_job_id
from modelyard.stream._source import Delivery, MessageSource, Settlement

__all__ = [
    "ANSWER_FIELDS",
    "BODY",
    "DEAD_LETTER_FIELDS",
    "RECORD_SOURCE",
    "BadMessage",
    "Delivery",
    "MessageSource",
    "NatsStreamSource",
    "RedisStreamSource",
    "Request",
    "Settlement",
    "StreamConsumer",
    "StreamJobSpec",
    "StreamMetrics",
    "StreamSettings",
    "StreamSummary",
    "default_consumer",
    "parse_request",
    "run_stream",
    "stream_job_id",
]
