"""One Redis client for a URL, a single server's or a Redis Cluster's, told apart by asking.

A deployment names Redis by one URL (``--redis-url``) whether it runs one server or a
Redis Cluster; a plain client on a cluster node is told ``MOVED`` for most keys, so
the kind is found when Redis first answers (``INFO cluster``) and a cluster client
made for a cluster. Used by the shared rate limits and by Redis Stream consumers.

``RedisLink`` is that client made when first needed, with the rule its users share
while Redis is down (the shared rate limits and budgets, the console's sessions).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError

from modelyard.errors import ConfigError


def check_redis_url(url: str, field: str = "redis_url") -> str:
    """``url`` when a Redis client can use it; ConfigError naming ``field`` (the password
    left out) otherwise: a scheme that is not Redis's, a port that is not a number."""
    shown = redacted(url)
    hint = "Give redis://host:6379/0 (rediss:// for TLS, unix:///path.sock)."
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{field} {shown!r} is not a Redis URL", hint=hint, field=field)
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(
            f"{field} {shown!r} cannot be used: {exc}", hint=hint, field=field
        ) from None
    return url


def connect_redis(url: str, *, timeout_s: float, connect_timeout_s: float, **kwargs: Any) -> Any:
    """A ``redis.Redis`` for a single server, a ``RedisCluster`` for a cluster node's URL.

    ``kwargs`` go to the plain client only (``retry=None``, say). Raises what Redis
    raises (``redis.RedisError``) when it cannot be reached; nothing is left open then.
    """
    plain = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s, **kwargs
    )
    try:
        clustered = bool(plain.info("cluster").get("cluster_enabled"))
    except BaseException:
        plain.close()
        raise
    if not clustered:
        return plain
    plain.close()
    return RedisCluster.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s
    )


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


T = TypeVar("T")


class RedisDown(Exception):
    """Redis could not be asked: it failed just now (``cause``), or is taken as down."""

    def __init__(self, cause: Exception | None = None) -> None:
        super().__init__(str(cause) if cause else "Redis is taken as down")
        self.cause = cause


class RedisLink:
    """One client for ``url``, made when Redis first answers, and the outage rule of those
    who share it: after a failure (an error of Redis, or a cluster with no node answering)
    Redis is not asked again for ``retry_s``; then one call at a time asks it, and the
    others are told at once that it is down, so an outage costs the callers one timeout a
    ``retry_s``, not one each. ``on_down(exc)`` and ``on_back()`` are called once per
    outage, when it begins and when it ends."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        retry_s: float = 1.0,
        on_down: Callable[[Exception], None] = lambda exc: None,
        on_back: Callable[[], None] = lambda: None,
    ) -> None:
        self.url, self.timeout_s, self.retry_s = url, timeout_s, retry_s
        self.on_down, self.on_back = on_down, on_back
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._lock = threading.Lock()  # the client and the scripts
        self._state = threading.Lock()  # the three below
        self._down_until = 0.0  # monotonic: Redis is not asked again before it
        self._up = True
        self._probing = False  # a call asks Redis whether it is back

    @property
    def up(self) -> bool:
        """Whether the last word from Redis was an answer."""
        return self._up

    @property
    def clustered(self) -> bool:
        """Whether Redis runs Cluster (False until it first answered)."""
        return is_cluster(self._client)

    def call(self, action: Callable[[Any], T]) -> T:
        """``action(client)``; RedisDown when Redis fails or is taken as down."""
        with self._state:
            if not self._up and (self._probing or time.monotonic() < self._down_until):
                raise RedisDown()
            probing = self._probing = not self._up
        try:
            result = action(self._connect())
        except (RedisError, RedisClusterException) as exc:
            with self._state:
                self._down_until = time.monotonic() + self.retry_s
                was_up, self._up = self._up, False
            if was_up:
                self.on_down(exc)
            raise RedisDown(exc) from None
        finally:
            if probing:
                self._probing = False
        if not self._up:
            with self._state:
                was_up, self._up = self._up, True
            if not was_up:
                self.on_back()
        return result

    def script(self, name: str, source: str) -> Any:
        """The Lua script ``source``, registered once with the client (run it in ``call``)."""
        client = self._connect()  # before the lock, which _connect takes too
        with self._lock:
            if name not in self._scripts:
                self._scripts[name] = client.register_script(source)
            return self._scripts[name]

    def _connect(self) -> Any:
        if self._client is not None:  # every call after the first: no lock
            return self._client
        client = connect_redis(
            self.url, timeout_s=self.timeout_s, connect_timeout_s=self.timeout_s, retry=None
        )
        with self._lock:
            if self._client is None:
                self._client = client
                return client
        client.close()  # another thread was first
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def redacted(url: str) -> str:
    """``url`` without its password (for logs and messages)."""
    return re.sub(r"//[^@/]*@", "//", url)


__all__ = [
    "RedisDown",
    "RedisLink",
    "check_redis_url",
    "connect_redis",
    "is_cluster",
    "redacted",
]
