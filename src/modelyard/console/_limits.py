"""Failed console logins, counted per client address: after too many, a 429 for a while.

``LoginLimiter.check`` runs before a login's token is even looked at, so an
address over the limit learns nothing more until its oldest failure leaves the
window; a successful login does not wipe the count (a guesser holding one valid
token cannot use it to reset its budget). The address is the connection's peer as
uvicorn reports it: behind a reverse proxy on 127.0.0.1, the client address the
proxy forwards (uvicorn trusts X-Forwarded-For from 127.0.0.1 only). The
addresses of one IPv6 /64 count as one (``counted_as``): a single host or network
usually holds a whole /64, and counting each of its 2^64 addresses apart would
let it guess without limit and fill the counters (here and in Redis) with keys.

With ``shared`` (``serve --redis-url``), the failures are counted in Redis, one
sorted set of failure times per address, so an address has ``max_failures`` in
all, not that many at each replica. While Redis cannot be reached, each replica
counts on its own again (and a login then fails anyway: the sessions are there).
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from modelyard.console._shared import PREFIX, SharedConsole
from modelyard.errors import RateLimited, SessionsUnavailable

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052's well-known prefix: an IPv4 client translated by NAT64 or SIIT, its address in
the last 32 bits (every such client is in one /64)."""


def counted_as(address: str) -> str:
    """What an address's failures are counted under: an IPv6 address's /64
    (``2001:db8:1:2::/64``); the IPv4 address an IPv6 one stands for (IPv4-mapped,
    translated by NAT64 or SIIT, a Teredo client's), since IPv4 clients count one by one;
    any other address (or a name that is not an address) as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip in NAT64:
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None:  # the /64 is the Teredo server's, shared by its clients
            return str(ip.teredo[1])
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """At most ``max_failures`` failed logins per address in ``window_s`` seconds."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        *,
        max_addresses: int = 100_000,
        shared: SharedConsole | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures, self.window_s, self.max_addresses = max_failures, window_s, max_addresses
        self.shared = shared
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """RateLimited (HTTP 429 with Retry-After) while ``address`` is over the limit."""
        address = counted_as(address)
        counted = self._shared_check(address) if self.shared is not None else None
        if counted is None:
            now = self._clock()
            with self._lock:
                times = self._recent(address, now)
                counted = len(times), times[0] + self.window_s - now if times else 0.0
        count, wait = counted
        if count < self.max_failures:
            return
        retry_after = max(1, math.ceil(wait))
        raise RateLimited(
            f"too many failed console logins from {address}: {count} in the last "
            f"{self.window_s:g} s",
            retry_after=retry_after,
            limit="requests",
            hint=f"Wait {retry_after} s, then log in with a valid token.",
        )

    def failed(self, address: str) -> None:
        address = counted_as(address)
        if self.shared is not None and self._shared_failed(address):
            return
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)  # the address quiet the longest

    def _shared_check(self, address: str) -> tuple[int, float] | None:
        """(failures in the window, seconds until the oldest leaves it) from Redis; None
        while Redis cannot be reached."""
        where, now = PREFIX + "failures:" + address, time.time()

        def read(client: Any) -> Any:
            pipe = client.pipeline()
            pipe.zremrangebyscore(where, "-inf", now - self.window_s)
            pipe.zrange(where, 0, 0, withscores=True)
            pipe.zcard(where)
            return pipe.execute()

        assert self.shared is not None
        try:
            _, oldest, count = self.shared.call(read)
        except SessionsUnavailable:
            return None
        return int(count), (oldest[0][1] + self.window_s - now if oldest else 0.0)

    def _shared_failed(self, address: str) -> bool:
        where, now = PREFIX + "failures:" + address, time.time()
        window_ms = max(1, int(self.window_s * 1000))

        def add(client: Any) -> None:
            pipe = client.pipeline()
            pipe.zadd(where, {f"{now:.6f}:{secrets.token_hex(4)}": now})
            pipe.pexpire(where, window_ms)
            pipe.execute()

        assert self.shared is not None
        try:
            self.shared.call(add)
        except SessionsUnavailable:
            return False
        return True

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(address, None)
        return times


__all__ = ["LoginLimiter"]
