"""Per-key rate limits: requests/min and tokens/min, as token buckets in this server's memory.

Each API key has two buckets per server replica (here, not shared: N replicas
behind a load balancer admit up to N times a key's limit; ``_shared_limits``
keeps the same buckets in Redis for every replica). A bucket holds up to one
minute's worth (the limit) and refills continuously at limit/60 per second, so a
key may burst its whole minute at once and then runs at the steady rate.

A request takes one from the requests bucket and, from the tokens bucket, its
prompt tokens plus its ``max_tokens`` (the most it may cost) at admission;
when it ends, ``settle`` gives back what it did not use (the difference to its
real prompt + completion tokens), so a short answer costs only what it used.
A request that does not fit is refused whole (nothing taken) with the seconds
until it would fit. A request larger than a key's whole minute can never fit
and is refused with ``Retry-After: 60``.

The request path checks the cheap things first (``DataPlane.submit``): the
requests bucket (``admit_request``: one request taken, and a tokens bucket that
cannot even hold ``max_tokens`` refused at once), the prompt's characters
(``max_prompt_chars``), and only then the prompt is tokenized and its tokens
taken (``admit_tokens``; a refusal there gives the request back). At most
``tokenize_concurrency`` requests of one tenant are routed and tokenized at
once (``TenantSlots``), so one tenant's huge prompts cannot hold every worker
thread.

A key's limits are ``ApiKey.rpm_limit`` / ``tpm_limit``; None falls back to the
server's defaults (``--default-rpm`` / ``--default-tpm``); no limit at all
means unlimited. ``ServerLimits`` holds those defaults with the server's other
caps: body size, prompt tokens, ``max_tokens``, the request timeout.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from modelyard.errors import ConfigError, RateLimited
from modelyard.redis_client import check_redis_url
from modelyard.serving._types import SamplingParams
from modelyard.store import ApiKey, ModelVersion


@runtime_checkable
class TokenCounter(Protocol):
    """An engine that can count a prompt's tokens the way it will tokenize it."""

    def count_tokens(self, version: ModelVersion, prompt: str) -> int:
        """The number of tokens ``prompt`` has for ``version``'s tokenizer."""


def count_prompt_tokens(engine: object, version: ModelVersion, prompt: str) -> int:
    """``prompt``'s tokens as ``engine`` counts them; whitespace-separated words for an
    engine that cannot count (the EchoEngine counts words too)."""
    if isinstance(engine, TokenCounter):
        return engine.count_tokens(version, prompt)
    return len(prompt.split())


class _Bucket:
    """``capacity`` tokens, refilled at ``capacity / 60`` per second; may run into debt."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.stamp = now

    def refill(self, now: float, capacity: int) -> None:
        if capacity != self.capacity:  # the key's limit changed: keep what is left, capped
            self.capacity = capacity
            self.level = min(self.level, float(capacity))
        elapsed = max(0.0, now - self.stamp)
        self.level = min(float(self.capacity), self.level + elapsed * self.capacity / 60.0)
        self.stamp = now

    def wait_for(self, amount: int) -> float:
        """Seconds until ``amount`` fits (0 when it does now)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


def check_fits(
    key: ApiKey,
    tokens: int,
    tpm: int | None,
    least: str = "",
    what: str = "prompt + max_tokens",
) -> None:
    """``tokens`` can never fit in a minute of ``tpm``: RateLimited, Retry-After 60."""
    if tpm is not None and tokens > tpm:
        raise RateLimited(
            f"this request needs {least}{tokens} tokens ({what}), more than the "
            f"{tpm} tokens per minute of API key {key.id}",
            hint="Ask for fewer max_tokens or shorten the prompt, or ask an operator "
            "for a higher limit (`modelyard keys limits`).",
            retry_after=60,
            limit="tokens",
            never_fits=True,
        )


def max_tokens_words(tokens: int) -> str:
    """What a request's lower bound of tokens is, in a 429: its ``max_tokens``, which is
    the default when it is the default's value (a client that sent none wonders)."""
    default = SamplingParams.max_tokens
    return f"its max_tokens, {default} when not set" if tokens == default else "its max_tokens"


def rate_limited(key: ApiKey, waits: list[tuple[str, int | None, float]]) -> RateLimited:
    kind, limit, wait = max(waits, key=lambda w: w[2])
    seconds = max(1, math.ceil(wait))
    return RateLimited(
        f"API key {key.id} is over its limit of {limit} {kind} per minute",
        hint=f"Retry after {seconds} s (Retry-After), or ask an operator for a higher limit.",
        retry_after=seconds,
        limit=kind,
    )


@dataclass(frozen=True)
class Admission:
    """What one admitted request holds: its key and the tokens reserved for it (``shared``:
    in Redis, from a tokens/min of ``capacity``: ``SharedRateLimiter``)."""

    key_id: str
    reserved_tokens: int
    shared: bool = False
    capacity: int = 0


class RateLimiter:
    """Requests/min and tokens/min per API key, in memory (one set of buckets per key)."""

    def __init__(
        self,
        *,
        default_rpm: int | None = None,
        default_tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_rpm, self.default_tpm = default_rpm, default_tpm
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def limits_of(self, key: ApiKey) -> tuple[int | None, int | None]:
        """(requests/min, tokens/min) for ``key``; None is unlimited."""
        rpm = key.rpm_limit if key.rpm_limit is not None else self.default_rpm
        tpm = key.tpm_limit if key.tpm_limit is not None else self.default_tpm
        return rpm or None, tpm or None

    def admit(self, key: ApiKey, tokens: int) -> Admission:
        """Take one request and ``tokens`` from ``key``'s buckets, or raise RateLimited."""
        self.admit_request(key)
        return self.admit_tokens(key, tokens)

    def admit_request(self, key: ApiKey, min_tokens: int = 0) -> None:
        """Take one request from ``key``'s requests bucket, before anything costly is done
        for it; a tokens bucket that cannot hold even ``min_tokens`` (a lower bound of the
        request's tokens, e.g. its ``max_tokens``) refuses it too, nothing taken."""
        rpm, tpm = self.limits_of(key)
        check_fits(key, min_tokens, tpm, "at least ", max_tokens_words(min_tokens))
        now = self._clock()
        with self._lock:
            requests = self._bucket(self._requests, key.id, rpm, now)
            budget = self._bucket(self._tokens, key.id, tpm, now)
            waits = []
            if requests is not None and requests.wait_for(1) > 0:
                waits.append(("requests", rpm, requests.wait_for(1)))
            # no tokens asked (an upload, a batch made): a tokens bucket in debt is no matter
            if budget is not None and min_tokens > 0 and budget.wait_for(min_tokens) > 0:
                waits.append(("tokens", tpm, budget.wait_for(min_tokens)))
            if not waits:
                if requests is not None:
                    requests.level -= 1
                return
        raise rate_limited(key, waits)

    def over_requests(self, key: ApiKey) -> RateLimited | None:
        """Whether ``key`` is over its requests/min now (nothing taken): the error to answer
        with, or None."""
        rpm, _ = self.limits_of(key)
        if rpm is None:
            return None
        now = self._clock()
        with self._lock:
            requests = self._bucket(self._requests, key.id, rpm, now)
            assert requests is not None
            wait = requests.wait_for(1)
        return rate_limited(key, [("requests", rpm, wait)]) if wait > 0 else None

    def admit_tokens(self, key: ApiKey, tokens: int) -> Admission:
        """Take ``tokens`` from the tokens bucket of a key whose request was taken by
        ``admit_request``; when they do not fit, the request is given back and RateLimited
        raised."""
        _, tpm = self.limits_of(key)
        try:
            check_fits(key, tokens, tpm)
        except RateLimited:
            self._give_back_request(key)
            raise
        now = self._clock()
        with self._lock:
            budget = self._bucket(self._tokens, key.id, tpm, now)
            if budget is None:
                return Admission(key.id, 0)
            wait = budget.wait_for(tokens)
            if wait <= 0:
                budget.level -= tokens
                return Admission(key.id, tokens)
        self._give_back_request(key)
        raise rate_limited(key, [("tokens", tpm, wait)])

    def _give_back_request(self, key: ApiKey) -> None:
        with self._lock:
            requests = self._requests.get(key.id)
            if requests is not None:
                requests.level = min(float(requests.capacity), requests.level + 1)

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """A request ended having used ``used_tokens``: give back the rest of its reservation
        (or take the excess, when the real prompt was longer than counted)."""
        if admission.reserved_tokens == 0:
            return
        now = self._clock()
        with self._lock:
            bucket = self._tokens.get(admission.key_id)
            if bucket is not None:
                bucket.refill(now, bucket.capacity)
                bucket.level = min(
                    float(bucket.capacity),
                    bucket.level + admission.reserved_tokens - used_tokens,
                )

    @staticmethod
    def _bucket(
        buckets: dict[str, _Bucket], key_id: str, limit: int | None, now: float
    ) -> _Bucket | None:
        if limit is None:
            buckets.pop(key_id, None)
            return None
        bucket = buckets.get(key_id)
        if bucket is None:
            bucket = buckets[key_id] = _Bucket(limit, now)
        else:
            bucket.refill(now, limit)
        return bucket


@dataclass(frozen=True)
class ServerLimits:
    """What a server allows; ``None`` turns a limit off.

    ``max_tokens`` caps ``max_tokens`` per request; ``key_cache_seconds`` is how
    long an authenticated key is trusted before the store is asked again (a
    revocation or a limit change applies within it); ``max_body_bytes`` caps
    request bodies (413); ``max_prompt_tokens`` caps prompts (400);
    ``request_timeout_s`` bounds a request from admission to its last token
    (504); ``default_rpm``/``default_tpm`` apply to keys without their own limits.
    ``max_prompt_chars`` caps a rendered prompt's characters before it is tokenized
    (400); ``tokenize_concurrency`` is how many requests of one tenant may be routed
    and tokenized at once (the others wait their turn, off the worker threads);
    ``refusals_stored_per_minute`` is how many refused requests (400, 404, 429 ...)
    of one key per minute are stored as inference records, with a shortened prompt
    (every refusal is counted in ``modelyard_refused_total``). ``redis_url`` shares the
    requests/min and tokens/min buckets among replicas (``SharedRateLimiter``);
    ``on_redis_down`` (``open`` or ``closed``) says what happens while it is down.
    """

    max_tokens: int = 256
    key_cache_seconds: float = 10.0
    max_body_bytes: int | None = 1_048_576
    max_prompt_tokens: int | None = None
    request_timeout_s: float | None = 120.0
    default_rpm: int | None = None
    default_tpm: int | None = None
    max_prompt_chars: int | None = 262_144
    tokenize_concurrency: int = 4
    refusals_stored_per_minute: int = 10
    redis_url: str | None = None
    on_redis_down: str = "open"

    def __post_init__(self) -> None:
        if self.on_redis_down not in ("open", "closed"):
            raise ConfigError(
                f"on_redis_down is {self.on_redis_down!r}; it must be open or closed",
                hint="open: each replica limits on its own while Redis is down; closed: 503.",
                field="on_redis_down",
            )
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        if self.refusals_stored_per_minute < 0:
            raise ConfigError(
                f"refusals_stored_per_minute is {self.refusals_stored_per_minute}; "
                "it must be 0 or more",
                field="refusals_stored_per_minute",
            )
        for name in ("max_tokens", "max_body_bytes", "max_prompt_tokens", "default_rpm",
                     "default_tpm", "max_prompt_chars", "tokenize_concurrency"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} is {value}; it must be at least 1", field=name)
        for name in ("key_cache_seconds", "request_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"{name} is {value}; it must be 0 or more", field=name)


class TenantSlots:
    """At most ``per_tenant`` requests of one tenant at once in the costly part of the
    request path (routing, rendering, tokenizing); the rest wait on the event loop, so
    one tenant cannot hold every worker thread. Use within one event loop."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        """One of ``tenant``'s slots while the block runs."""
        slot = self._slots.get(tenant)
        if slot is None:
            slot = self._slots[tenant] = asyncio.Semaphore(self.per_tenant)
        self._users[tenant] = self._users.get(tenant, 0) + 1
        try:
            async with slot:
                yield
        finally:
            self._users[tenant] -= 1
            if not self._users[tenant]:  # nobody holds or waits: forget it
                del self._users[tenant], self._slots[tenant]


__all__ = [
    "Admission",
    "RateLimiter",
    "ServerLimits",
    "TenantSlots",
    "TokenCounter",
    "check_fits",
    "count_prompt_tokens",
    "rate_limited",
]
