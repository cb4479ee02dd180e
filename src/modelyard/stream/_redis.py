"""A Redis Stream read by a consumer group: the ``MessageSource`` of ``modelyard stream run``.

Delivery is Redis's own: ``XREADGROUP`` hands a new message to one consumer of the
group and keeps it in the group's pending entries (the PEL) until it is
acknowledged, counting its deliveries. A consumer that restarts under the same
name reads its own pending messages first; the pending messages of a consumer
that stopped for good are claimed with ``XAUTOCLAIM`` once idle for
``claim_idle_s`` (the claim counts a delivery). A consumer renews the messages it
works on (``keep``: ``XCLAIM ... JUSTID`` of its own entries, which resets their
idle time without counting a delivery), so only a stopped or stalled consumer
loses them.

Exactly one answer per message: ``settle`` runs one Lua script per message, and
Redis runs a script whole or not at all. The script publishes only while the
message is still pending in the group (settled already: nothing published), and
sets a marker keyed by the output and the message id (``SET NX`` with a TTL,
``dedup_ttl_s``), so a message delivered again after it was settled (the group
reset with ``XGROUP SETID``, or another group writing the same output) is
acknowledged without a second answer; then ``XADD`` to the output (or the
dead-letter stream) and ``XACK``. A consumer killed at any instant has either
settled a message whole or left it pending for another delivery.

Redis Cluster works as a single server does (the client is chosen when Redis first
answers). The keys a script touches (the stream, the output or dead-letter stream,
the marker) must then live in one slot, so the names share one hash tag,
``{orders}:requests``, ``{orders}:answers`` and ``{orders}:dead``; other names are
refused before any message is read. Cluster runs no script in a pipeline, so there
a batch's settlements take one round trip each.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import redis
from redis.crc import key_slot

from modelyard.errors import ConfigError, ModelyardError
from modelyard.redis_client import connect_redis, is_cluster, redacted
from modelyard.stream._source import Delivery, Settlement

_SETTLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0
end
local ttl = tonumber(ARGV[3])
if ttl > 0 and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ttl) then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return -1
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_KEEP = """
local kept = 0
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""

_JOB_ID_MAX = 24  # a record id is the job id, '-' and the message id, in 64 characters


def stream_job_id(stream: str, group: str) -> str:
    """The job id of a group's records: ``stream/group``, shortened with a hash past 24
    characters."""
    name = f"{stream}/{group}"
    if len(name) <= _JOB_ID_MAX:
        return name
    return f"{name[:11]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _redis_errors(url: str) -> Iterator[None]:
    """Redis's failures as one ModelyardError naming the server (translated once, here),
    its password left out: the line goes to a consumer's log."""
    url = redacted(url)
    try:
        yield
    except (redis.ConnectionError, redis.exceptions.RedisClusterException) as exc:
        raise ModelyardError(
            f"cannot reach Redis at {url}: {exc}",
            hint="Check that it runs and --redis-url (MODELYARD_REDIS_URL); messages not "
            "answered yet stay pending and are answered after a restart.",
        ) from exc
    except redis.RedisError as exc:
        raise ModelyardError(f"Redis at {url} refused a stream command: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamSource:
    """Consumer ``consumer`` of group ``group`` on ``stream``; answers go to ``output`` and
    dead letters to ``dead_letters``. See the module's docstring."""

    def __init__(
        self,
        client: Any,  # a redis.Redis, or a RedisCluster
        *,
        stream: str,
        group: str,
        consumer: str,
        output: str,
        dead_letters: str,
        claim_idle_s: float = 60.0,
        dedup_ttl_s: float = 3600.0,
        start_id: str = "0",
        url: str = "redis",
    ) -> None:
        if stream in (output, dead_letters):
            raise ConfigError(
                f"the stream {stream!r} is also where answers or dead letters go",
                hint="Name other streams with --output-stream and --dead-letter-stream.",
            )
        if claim_idle_s <= 0:
            raise ConfigError(f"--claim-idle is {claim_idle_s:g} s; it must be above 0")
        self.client, self.url = client, url
        self.stream, self.group, self.consumer = stream, group, consumer
        self.output, self.dead_letters = output, dead_letters
        self.claim_idle_s, self.dedup_ttl_s = claim_idle_s, dedup_ttl_s
        self.lost = 0  # pending messages deleted from the stream before they were answered
        self._history: str | None = "0"  # reading own pending entries from here; None: done
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self.clustered = is_cluster(client)
        if self.clustered:
            self._check_slots()
        self._settle = client.register_script(_SETTLE)
        self._keep = client.register_script(_KEEP)
        self._start_id = start_id

    @classmethod
    def connect(cls, url: str, **kwargs: Any) -> RedisStreamSource:
        """A source on the Redis at ``url``, its group created when missing (reading the
        stream from ``start_id``: ``0`` its first message, ``$`` only new ones)."""
        with _redis_errors(url):
            client = connect_redis(url, timeout_s=30, connect_timeout_s=5)
        try:
            source = cls(client, url=url, **kwargs)
            source.open()
        except BaseException:
            client.close()
            raise
        return source

    def _check_slots(self) -> None:
        """On a Redis Cluster: every key a settlement touches in the stream's slot."""
        keys = {"--stream": self.stream, "--output-stream": self.output,
                "--dead-letter-stream": self.dead_letters}  # fmt: skip
        keys["the settled markers"] = self.marker("0-0")
        slot = key_slot(self.stream.encode())
        apart = [f"{flag} {key!r}" for flag, key in keys.items() if key_slot(key.encode()) != slot]
        if apart:
            raise ConfigError(
                f"on a Redis Cluster, {', '.join(apart)} would live in another slot than "
                f"the stream {self.stream!r}, and one script settles each message on all of "
                "them",
                hint="Give the streams one hash tag: --stream '{orders}:requests' "
                "--output-stream '{orders}:answers' --dead-letter-stream '{orders}:dead'.",
            )

    @property
    def job_id(self) -> str:
        return stream_job_id(self.stream, self.group)

    def open(self) -> None:
        """Create the group (and the stream) unless it exists."""
        with _redis_errors(self.url):
            try:
                self.client.xgroup_create(self.stream, self.group, self._start_id, mkstream=True)
            except redis.ResponseError as exc:
                if "WRONGTYPE" in str(exc):  # a list, a hash, a string by that name
                    raise ConfigError(
                        f"the Redis key {self.stream!r} is not a stream (Redis: {exc})",
                        hint="Give --stream the name of a Redis stream (XADD makes one), or a "
                        "name no key has yet.",
                        field="--stream",
                    ) from None
                if "BUSYGROUP" not in str(exc):
                    raise

    def fetch(self, limit: int, wait_s: float) -> list[Delivery]:
        out: list[Delivery] = []
        with _redis_errors(self.url):
            if self._history is not None:
                out += self._read_history(limit)
            if len(out) < limit and time.monotonic() >= self._next_claim:
                out += self._claim(limit - len(out))
            if len(out) < limit:
                out += self._read_new(limit - len(out), None if out else wait_s)
        return out

    def _read_history(self, limit: int) -> list[Delivery]:
        """This consumer's pending messages from an earlier run (its name reused)."""
        assert self._history is not None
        entries = _entries(
            self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._history}, count=limit
            )
        )
        self._history = _text(entries[-1][0]) if len(entries) == limit else None
        return self._with_attempts(entries)

    def _claim(self, limit: int) -> list[Delivery]:
        """Pending messages idle past ``claim_idle_s`` (a stopped consumer's, or ones left
        for a retry), taken over by this consumer."""
        idle_ms = int(self.claim_idle_s * 1000)
        reply: Any = self.client.xautoclaim(
            self.stream, self.group, self.consumer, idle_ms, self._claim_cursor, count=limit
        )
        cursor, entries, *rest = reply
        self.lost += len(rest[0]) if rest else 0  # deleted from the stream while pending
        self._claim_cursor = _text(cursor)
        if self._claim_cursor == "0-0":  # scanned every pending entry: rest a while
            self._next_claim = time.monotonic() + min(max(self.claim_idle_s / 2, 0.2), 10.0)
        return self._with_attempts(entries)

    def _read_new(self, limit: int, wait_s: float | None) -> list[Delivery]:
        block = None if wait_s is None else max(1, int(wait_s * 1000))
        entries = _entries(
            self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=limit, block=block
            )
        )
        return [Delivery(_text(i), self._fields(f)) for i, f in entries]

    def _with_attempts(self, entries: Sequence[Any]) -> list[Delivery]:
        """Deliveries of pending ``entries`` with their delivery counts; entries deleted
        from the stream meanwhile are acknowledged (nothing is left to answer)."""
        entries = [(i, f) for i, f in entries if i is not None]
        gone = [_text(i) for i, f in entries if not f]
        if gone:
            self.client.xack(self.stream, self.group, *gone)
            self.lost += len(gone)
        entries = [(_text(i), f) for i, f in entries if f]
        pipe = self.client.pipeline(transaction=False)
        for i, _ in entries:
            pipe.xpending_range(self.stream, self.group, min=i, max=i, count=1)
        counts = [r[0]["times_delivered"] if r else 1 for r in pipe.execute()]
        return [
            Delivery(i, self._fields(f), int(n)) for (i, f), n in zip(entries, counts, strict=True)
        ]

    @staticmethod
    def _fields(raw: Any) -> dict[str, bytes]:
        return {_text(k): v if isinstance(v, bytes) else str(v).encode() for k, v in raw.items()}

    def keep(self, ids: Collection[str]) -> None:
        if not ids:
            return
        with _redis_errors(self.url):
            self._keep(keys=[self.stream], args=[self.group, self.consumer, *ids])

    def release(self, ids: Collection[str]) -> None:
        """Nothing to do: a message stays in the group's pending list, claimed again once
        idle for --claim-idle, and this consumer keeps nothing of it."""

    def marker(self, message_id: str) -> str:
        """The key that says ``message_id`` was settled into this output."""
        return f"{self.output}:settled:{self.stream}:{message_id}"

    def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        if not settlements:
            return []
        ttl_ms = int(self.dedup_ttl_s * 1000)
        with _redis_errors(self.url):
            # Cluster runs no script in a pipeline: there, one round trip each
            pipe = None if self.clustered else self.client.pipeline(transaction=False)
            replies = []
            for s in settlements:
                pairs = [x for kv in s.fields.items() for x in kv]
                target = self.dead_letters if s.dead else self.output
                keys = [self.stream, target, self.marker(s.delivery.id)]
                args = [self.group, s.delivery.id, ttl_ms, *pairs]
                replies.append(self._settle(keys=keys, args=args, client=pipe))
            if pipe is not None:
                replies = pipe.execute()
            return [int(r) == 1 for r in replies]

    def backlog(self) -> int:
        with _redis_errors(self.url):
            groups = self.client.xinfo_groups(self.stream)
            mine = next(g for g in groups if _text(g["name"]) == self.group)
            lag = mine.get("lag")
            if lag is None:  # unknown after deletions: is anything past the last delivered?
                newest: Any = self.client.xrevrange(self.stream, count=1)
                last = _text(mine["last-delivered-id"])
                lag = int(bool(newest) and _after(_text(newest[0][0]), last))
            return int(mine["pending"]) + int(lag)

    def close(self) -> None:
        """Leave the group when nothing is pending for this consumer (its name would only
        clutter ``XINFO CONSUMERS``), and close the connection."""
        with contextlib.suppress(redis.RedisError):
            mine = self.client.xpending_range(
                self.stream, self.group, "-", "+", 1, consumername=self.consumer
            )
            if not mine:
                self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        self.client.close()


def _entries(reply: Any) -> list[Any]:
    """The ``(id, fields)`` entries of an ``XREADGROUP`` reply on one stream."""
    return list(reply[0][1]) if reply else []


def _after(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes after ``b``."""
    ma, _, sa = a.partition("-")
    mb, _, sb = b.partition("-")
    return (int(ma), int(sa or 0)) > (int(mb), int(sb or 0))


__all__ = ["RedisStreamSource", "stream_job_id"]
