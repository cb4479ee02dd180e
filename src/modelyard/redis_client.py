"""One Redis client for a URL, a single server's or a Redis Cluster's, told apart by asking.

A deployment names Redis by one URL (``--redis-url``) whether it runs one server or a
Redis Cluster; a plain client on a cluster node is told ``MOVED`` for most keys, so
the kind is found when Redis first answers (``INFO cluster``) and a cluster client
made for a cluster. Used by the shared rate limits and by Redis Stream consumers.
"""

from __future__ import annotations

import re
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.connection import parse_url

from modelyard.errors import ConfigError


def check_redis_url(url: str, field: str = "redis_url") -> str:
    """``url`` when a Redis client can use it; ConfigError naming ``field`` (the password
    left out) otherwise: a scheme that is not Redis's, a port that is not a number."""
    shown = re.sub(r"//[^@/]*@", "//", url)
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


__all__ = ["check_redis_url", "connect_redis", "is_cluster"]
