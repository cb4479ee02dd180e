"""Running the router: uvicorn, draining on SIGTERM, without the serving stack.

The router must stay a thin process: it imports no engine (no torch), so it
starts in about a second and holds tens of MB, not the GBs of a replica. So it
has its own small drain rather than ``modelyard.serving``'s (which would import
the engines): on the first SIGTERM or SIGINT, ``/ready`` turns 503 and new
requests get 503 ``shutting_down``; the process exits once the requests in
flight have ended or ``grace_s`` has passed. A second signal stops at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from modelyard.sockets import bind_socket

log = logging.getLogger(__name__)


class Drain:
    """Whether the router is draining, and how many requests are in flight."""

    def __init__(self) -> None:
        self.inflight = 0
        self._deadline: float | None = None

    def begin(self, grace_s: float) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + grace_s

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    def done(self) -> bool:
        if self._deadline is None:
            return False
        return self.inflight <= 0 or time.monotonic() >= self._deadline


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain, self.grace_s = drain, grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self.should_exit:
            self.should_exit = self.force_exit = True
        else:
            log.warning("draining: no new requests; waiting for %d in flight", self.drain.inflight)
            self.drain.begin(self.grace_s)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.done() and not self.should_exit:
            self.should_exit = True
        return await super().on_tick(counter)


def run_router(
    app: FastAPI,
    host: str,
    port: int,
    *,
    shutdown_grace_s: float = 30.0,
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` (``create_route_app``) until SIGTERM, then drain and return."""
    sock = bind_socket(host, port)
    if on_bound is not None:
        on_bound(int(sock.getsockname()[1]))
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    _DrainingServer(config, app.state.drain, shutdown_grace_s).run(sockets=[sock])
