"""What a stream consumer needs of a broker: the ``MessageSource`` interface.

A source hands out ``Delivery``\\ s (a message, and which delivery of it this is)
and settles them: ``settle`` publishes a message's answer (or its dead letter)
and acknowledges the message in one atomic step, once per message, so a
redelivered message is never answered twice. Everything else (the data plane,
the records, backpressure, retries, draining) is the consumer's (``_consumer``)
and does not depend on the broker: Redis Streams (``_redis``: a Lua script
publishes and acknowledges at once) and NATS JetStream (``_nats``: a publish
deduplicated by ``Nats-Msg-Id``, then the ack). A Kafka source would settle with a
transactional producer that commits the consumed offset with the answer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    """One message as the broker delivered it: its ``id`` (unique in the stream), its
    ``fields`` as sent, and ``attempt``, which delivery of it this is (1: the first; more
    after a consumer stopped with it or left it for a retry)."""

    id: str
    fields: Mapping[str, bytes]
    attempt: int = 1


@dataclass(frozen=True)
class Settlement:
    """How a delivered message ends: ``fields`` published to the output (its answer), or to
    the dead-letter stream when ``dead``."""

    delivery: Delivery
    fields: Mapping[str, str | bytes]
    dead: bool = False


class MessageSource(Protocol):
    """A consumer group's share of a stream of requests, and where their answers go."""

    @property
    def job_id(self) -> str:
        """What the records of its messages name as their job (the stream and group)."""

    def fetch(self, limit: int, wait_s: float) -> list[Delivery]:
        """At most ``limit`` messages to answer, waiting up to ``wait_s`` for one: messages
        of consumers that stopped (claimed after an idle time), this consumer's own from an
        earlier run, then new ones. Each stays this consumer's until settled."""

    def keep(self, ids: Collection[str]) -> None:
        """Tell the broker this consumer still works on ``ids``, so they are not claimed by
        another consumer as abandoned."""

    def release(self, ids: Collection[str]) -> None:
        """Leave ``ids`` unsettled for a later attempt (a server failure): they are delivered
        again, to this consumer or another, after the group's idle time, as if abandoned;
        this consumer holds nothing of them meanwhile."""

    def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Publish each settlement and acknowledge its message, atomically and at most once
        per message; per settlement, whether it was published now (False: the message was
        settled already, by this consumer or another, and nothing was published)."""

    def backlog(self) -> int:
        """Messages not settled yet: new ones and delivered ones (this consumer's or
        others')."""

    def close(self) -> None:
        """Let go of the connection (messages not settled stay for a later delivery)."""


__all__ = ["Delivery", "MessageSource", "Settlement"]
