"""Requests/min and tokens/min shared by every replica: the same buckets, kept in Redis.

``SharedRateLimiter`` keeps ``RateLimiter``'s contract (admit a request, then its
tokens, settle what it used) and its semantics (a bucket holds one minute's
worth and refills continuously), but a key's buckets live in Redis, so N
replicas behind a load balancer admit one key's limit in total, not N times it.
Each decision is one Lua script run atomically by Redis on Redis's own clock
(``TIME``), so replicas with skewed clocks agree and two replicas never both
take the last request of a minute. A bucket left alone expires once it would
be full again (a full bucket and no bucket mean the same).

When Redis cannot be reached (a 250 ms timeout), ``on_down`` decides:
``"open"`` keeps serving with this replica's own in-memory buckets (each
replica then admits up to the full limit, as without Redis) and says so in the
log and in ``shared_up``; ``"closed"`` refuses requests that have a limit with
a 503 and ``Retry-After`` (``LimitsUnavailable``). Redis is tried again at most
once a second while it is down, by one request at a time (``RedisLink``), so
an outage costs the request path one timeout per second, not one per request.
Requests of keys without limits never touch Redis.

The early refusal (``over_requests``, on the event loop before a body is read)
asks no one: it answers from what this replica last heard from Redis (a key
refused until a moment is refused again until then).

Redis Cluster works as a single server does: the client is chosen when Redis first
answers (``INFO cluster``), and a key's two buckets share a hash tag
(``modelyard:limits:{<key id>}:requests``), so the script that takes from both runs on
the one node that holds them (Cluster refuses a script whose keys are on two nodes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import redis

from modelyard.errors import LimitsUnavailable, RateLimited
from modelyard.redis_client import RedisDown, RedisLink, redacted
from modelyard.serving._limits import (
    Admission,
    RateLimiter,
    ServerLimits,
    check_fits,
    max_tokens_words,
    rate_limited,
)
from modelyard.store import ApiKey

log = logging.getLogger(__name__)

OnDown = Literal["open", "closed"]
T = TypeVar("T")
TIMEOUT_S = 0.25
RETRY_DOWN_S = 1.0
SETTLE = -1  # the "needed" of a settlement: it never waits (_TAKE)

# KEYS: the buckets; ARGV: per bucket (capacity, needed, taken). Each bucket is refilled on
# Redis's clock; when every bucket holds what it needs, each gives what it is taken (taken
# may be negative: given back, capped at capacity). A needed of -1 is a settlement (give
# back, or take a request's excess): it always happens, even on a bucket in debt, as in
# RateLimiter.settle. Returns per bucket the milliseconds until what it needs would fit
# (0: it did, and the take happened).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels, waits, fits = {}, {}, true
for i, key in ipairs(KEYS) do
  local cap, need = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1])
  local b = redis.call('HMGET', key, 'level', 'stamp')
  local level, stamp = tonumber(b[1]), tonumber(b[2])
  if level == nil then level, stamp = cap, now end
  level = math.min(cap, level + math.max(0, now - stamp) * cap / 60000)
  levels[i] = level
  waits[i] = 0
  if need >= 0 and level < need then
    waits[i] = math.ceil((need - level) * 60000 / cap)
    fits = false
  end
end
for i, key in ipairs(KEYS) do
  local cap, taken = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i])
  local level = levels[i]
  if fits then level = math.min(cap, level - taken) end
  redis.call('HSET', key, 'level', tostring(level), 'stamp', now)
  local full_in = math.ceil((cap - level) * 60000 / cap)
  redis.call('PEXPIRE', key, math.max(full_in, 1000))
end
return waits
"""


class SharedRateLimiter:
    """Requests/min and tokens/min per API key, in Redis for every replica (module doc)."""

    def __init__(
        self,
        url: str,
        *,
        default_rpm: int | None = None,
        default_tpm: int | None = None,
        on_down: OnDown = "open",
        prefix: str = "modelyard:limits:",
    ) -> None:
        self.url, self.on_down, self.prefix = url, on_down, prefix
        self.local = RateLimiter(default_rpm=default_rpm, default_tpm=default_tpm)
        self.default_rpm, self.default_tpm = default_rpm, default_tpm
        self.redis = RedisLink(url, timeout_s=TIMEOUT_S, retry_s=RETRY_DOWN_S,
                               on_down=self._said_down, on_back=self._said_back)  # fmt: skip
        self._lock = threading.Lock()
        self._refused_until: dict[str, float] = {}  # key id -> monotonic (requests bucket)

    # -- the RateLimiter contract -------------------------------------------------------------

    def limits_of(self, key: ApiKey) -> tuple[int | None, int | None]:
        return self.local.limits_of(key)

    @property
    def shared_up(self) -> bool:
        """Whether the last word from Redis was an answer (False while it is down)."""
        return self.redis.up

    def admit(self, key: ApiKey, tokens: int) -> Admission:
        self.admit_request(key)
        return self.admit_tokens(key, tokens)

    def admit_request(self, key: ApiKey, min_tokens: int = 0) -> None:
        """One request taken from ``key``'s shared requests bucket; a tokens bucket that
        cannot hold even ``min_tokens`` refuses it too, nothing taken."""
        rpm, tpm = self.limits_of(key)
        if rpm is None and tpm is None:
            return
        check_fits(key, min_tokens, tpm, "at least ", max_tokens_words(min_tokens))
        buckets = []
        if rpm is not None:
            buckets.append(("requests", rpm, 1, 1))
        if tpm is not None and min_tokens > 0:  # none asked: a bucket in debt is no matter
            buckets.append(("tokens", tpm, min_tokens, 0))
        if not buckets:
            return
        waits = self._run(key.id, buckets)
        if waits is None:  # Redis is down and the limits fail open: this replica's own
            self.local.admit_request(key, min_tokens)
            return
        self._refuse_if_waiting(key, buckets, waits)

    def over_requests(self, key: ApiKey) -> RateLimited | None:
        """From what this replica last heard (no network on the event loop)."""
        rpm, _ = self.limits_of(key)
        if rpm is None:
            return None
        if not self.redis.up and self.on_down == "open":
            return self.local.over_requests(key)
        with self._lock:
            until = self._refused_until.get(key.id, 0.0)
        wait = until - time.monotonic()
        if wait <= 0:
            return None
        return rate_limited(key, [("requests", rpm, wait)])

    def admit_tokens(self, key: ApiKey, tokens: int) -> Admission:
        """``tokens`` taken from the shared tokens bucket of a key whose request was taken;
        when they do not fit, the request is given back and RateLimited raised."""
        _, tpm = self.limits_of(key)
        if tpm is None:
            return Admission(key.id, 0)
        try:
            check_fits(key, tokens, tpm)
        except RateLimited:
            self._give_back_request(key)
            raise
        buckets = [("tokens", tpm, tokens, tokens)]
        waits = self._run(key.id, buckets)
        if waits is None:
            local = self.local.admit_tokens(key, tokens)
            return Admission(local.key_id, local.reserved_tokens)
        try:
            self._refuse_if_waiting(key, buckets, waits)
        except RateLimited:
            self._give_back_request(key)
            raise
        return Admission(key.id, tokens, shared=True, capacity=tpm)

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """Give back what the request did not use (or take its excess), where it was taken."""
        if admission.reserved_tokens == 0:
            return
        if not admission.shared:
            self.local.settle(admission, used_tokens)
            return
        returned = admission.reserved_tokens - used_tokens
        self._give_back(admission.key_id, [("tokens", admission.capacity, SETTLE, -returned)])

    # -- Redis ----------------------------------------------------------------------------

    def _give_back_request(self, key: ApiKey) -> None:
        rpm, _ = self.limits_of(key)
        if rpm is not None:
            self._give_back(key.id, [("requests", rpm, SETTLE, -1)])

    def _give_back(self, key_id: str, buckets: list[tuple[str, int, int, int]]) -> None:
        """Give back (or take the excess of) what a request holds, as far as Redis can be
        reached. Never raises: the request was admitted and has run (or been refused for
        another reason), so an outage that began meanwhile must not turn its answer into a
        503 nor stop its record and its cost from being kept; what is not given back is
        lost (the bucket refills within the minute)."""
        with contextlib.suppress(LimitsUnavailable):
            self._run(key_id, buckets)

    def _refuse_if_waiting(
        self, key: ApiKey, buckets: list[tuple[str, int, int, int]], waits: list[int]
    ) -> None:
        pairs = zip(buckets, waits, strict=True)
        late = [(kind, cap, wait / 1000) for (kind, cap, _, _), wait in pairs if wait > 0]
        if not late:
            return
        for kind, _, wait_s in late:
            if kind == "requests":
                with self._lock:
                    self._refused_until[key.id] = time.monotonic() + wait_s
        raise rate_limited(key, [(k, c, w) for k, c, w in late])

    def _run(self, key_id: str, buckets: list[tuple[str, int, int, int]]) -> list[int] | None:
        """The script's waits, or None when Redis is down and the limits fail open
        (``LimitsUnavailable`` when they fail closed)."""
        # {key_id}: a hash tag, so that Redis Cluster keeps a key's buckets on one node
        keys = [f"{self.prefix}{{{key_id}}}:{kind}" for kind, _, _, _ in buckets]
        args: list[int] = []
        for _, cap, need, taken in buckets:
            args += [cap, need, taken]
        waits = self.call(lambda _: self.redis.script("take", _TAKE)(keys=keys, args=args))
        return None if waits is None else [int(w) for w in waits]

    def call(self, action: Callable[[redis.Redis], T]) -> T | None:
        """``action`` on the shared Redis, under the outage rules of the module doc: None
        while Redis is down and the limits fail open, ``LimitsUnavailable`` when they fail
        closed (the budget guard keeps its spend here too)."""
        try:
            return self.redis.call(action)
        except RedisDown:
            if self.on_down == "closed":
                raise LimitsUnavailable(
                    "the rate limits cannot be checked: their shared store (Redis) cannot "
                    "be reached",
                    hint="Retry shortly; an operator should check Redis (--redis-url).",
                    retry_after=max(1, math.ceil(RETRY_DOWN_S)),
                ) from None
            return None

    def _said_down(self, exc: Exception) -> None:
        log.warning(
            "Redis at %s cannot be reached (%s): limits %s", redacted(self.url),
            type(exc).__name__,
            "are this replica's own until it answers" if self.on_down == "open"
            else "refuse requests (503) until it answers",
        )  # fmt: skip

    def _said_back(self) -> None:
        log.warning("Redis at %s answers again: limits are shared again", redacted(self.url))

    @property
    def clustered(self) -> bool:
        """Whether the shared store is a Redis Cluster (False until Redis first answered)."""
        return self.redis.clustered

    def close(self) -> None:
        self.redis.close()


Limiter = RateLimiter | SharedRateLimiter


def limiter_for(limits: ServerLimits) -> Limiter:
    """The server's limiter: shared through Redis with ``redis_url``, else its own."""
    if limits.redis_url is None:
        return RateLimiter(default_rpm=limits.default_rpm, default_tpm=limits.default_tpm)
    on_down: OnDown = "closed" if limits.on_redis_down == "closed" else "open"
    return SharedRateLimiter(limits.redis_url, default_rpm=limits.default_rpm,
                             default_tpm=limits.default_tpm, on_down=on_down)  # fmt: skip


__all__ = ["Limiter", "OnDown", "SharedRateLimiter", "limiter_for"]
