"""Failed console logins, counted per client address: after too many, a 429 for a while.

``LoginLimiter.check`` runs before a login's token is even looked at, so an
address over the limit learns nothing more until its oldest failure leaves the
window; a successful login does not wipe the count (a guesser holding one valid
token cannot use it to reset its budget). The address is the connection's peer as
uvicorn reports it: behind a reverse proxy on 127.0.0.1, the client address the
proxy forwards (uvicorn trusts X-Forwarded-For from 127.0.0.1 only).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from modelyard.errors import RateLimited


class LoginLimiter:
    """At most ``max_failures`` failed logins per address in ``window_s`` seconds."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        *,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures, self.window_s, self.max_addresses = max_failures, window_s, max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """RateLimited (HTTP 429 with Retry-After) while ``address`` is over the limit."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.max_failures:
                return
            retry_after = max(1, math.ceil(times[0] + self.window_s - now))
        raise RateLimited(
            f"too many failed console logins from {address}: {len(times)} in the last "
            f"{self.window_s:g} s",
            retry_after=retry_after,
            limit="requests",
            hint=f"Wait {retry_after} s, then log in with a valid token.",
        )

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)  # the address quiet the longest

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(address, None)
        return times


__all__ = ["LoginLimiter"]
