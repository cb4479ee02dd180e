"""Graceful shutdown: on SIGTERM a server drains before it exits.

``Drain`` is the state shared by the app and the server loop. When a drain
begins, ``/ready`` answers 503 (load balancers stop sending), new API requests
get 503 (``shutting_down``, ``Connection: close``), and the requests already in
flight (streams included) run to their end; the server exits once none is left
or the grace period is over, whichever comes first.

The state is touched from the event loop and from a signal handler on the same
thread, so it uses plain attributes and no locks (a signal handler must never
wait for a lock its own thread holds).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Drain:
    """Whether the server is draining, and how many HTTP requests are in flight."""

    def __init__(self) -> None:
        self.inflight = 0
        self._deadline: float | None = None
        self._on_begin: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the drain begins (e.g. mark the server not ready)."""
        self._on_begin.append(callback)

    def begin(self, grace_s: float) -> None:
        """Stop taking new requests; let the in-flight ones finish within ``grace_s``."""
        if self._deadline is not None:
            return
        self._deadline = time.monotonic() + grace_s
        for callback in self._on_begin:
            callback()

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    def done(self) -> bool:
        """True once draining and no request is left, or the grace period is over."""
        if self._deadline is None:
            return False
        return self.inflight <= 0 or time.monotonic() >= self._deadline


__all__ = ["Drain"]
