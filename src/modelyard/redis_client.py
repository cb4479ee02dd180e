"""One Redis client for a URL, a single server's or a Redis Cluster's, told apart by asking.

A deployment names Redis by one URL (``--redis-url``) whether it runs one server or a
Redis Cluster; a plain client on a cluster node is told ``MOVED`` for most keys, so
the kind is found when Redis first answers (``INFO cluster``) and a cluster client
made for a cluster. Used by the shared rate limits and by Redis Stream consumers.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster


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


__all__ = ["connect_redis", "is_cluster"]
