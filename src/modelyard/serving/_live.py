"""Live traffic comes first: a batch's lines yield to the requests of live clients.

``LiveTraffic`` counts this replica's *live* model requests in flight: a POST to
``/v1/chat/completions``, ``/v1/completions`` or ``/v1/responses`` from a client,
not a line of an OpenAI batch (``_batch_context``). It counts from the moment the
data plane admits the request (its key authenticated, within its requests/min:
``DataPlane.enter`` begins the guard's ``LiveSlot``) until its whole response, a
stream included, is sent (the guard ends it), so requests refused before that (no
key, over a limit) never count, however many come at once. ``LineSlots`` is how many of one
batch's lines may be in flight: ``concurrency`` while the replica is idle of
live traffic, ``busy`` while a live request is in flight or ended less than
``quiet_s`` ago (so a client sending request after request does not flap the
batch between the two; a request answered 4xx after its admission, a bad body
say, leaves no quiet time). The limit applies to starting lines: those in flight
finish. Waiting wakes on a line's end or on live traffic ending, never polls.

Everything runs on the app's event loop (the guard and the batch worker), so no
locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

LIVE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


class LiveTraffic:
    """How many live (not a batch's) model requests are in flight on this replica."""

    def __init__(self) -> None:
        self.inflight = 0
        self.ended_at = -math.inf  # time.monotonic() when the last one ended
        self._idle: set[asyncio.Event] = set()  # set when none is left in flight

    def begin(self) -> None:
        self.inflight += 1

    def end(self, quiet: bool = True) -> None:
        """One ended; ``quiet``: whether batches wait ``quiet_s`` after it (not after one
        refused before it asked a model). The quiet time runs from the last quiet end,
        whichever request ends last."""
        self.inflight -= 1
        if quiet:
            self.ended_at = time.monotonic()
        if self.inflight <= 0:
            for event in self._idle:
                event.set()

    def busy_for(self, quiet_s: float) -> float:
        """Seconds before this replica counts as idle of live traffic: 0 when it is, inf
        while a live request is in flight, else what is left of ``quiet_s`` since the
        last one ended."""
        if self.inflight > 0:
            return math.inf
        return max(0.0, self.ended_at + quiet_s - time.monotonic())

    @contextlib.contextmanager
    def on_idle(self, event: asyncio.Event) -> Iterator[None]:
        """``event`` is set when the last live request in flight ends, while inside."""
        self._idle.add(event)
        try:
            yield
        finally:
            self._idle.discard(event)


@dataclass
class LiveSlot:
    """One request the guard may count as live: begun once the data plane admits it."""

    live: LiveTraffic
    begun: bool = False

    def begin(self) -> None:
        if not self.begun:
            self.begun = True
            self.live.begin()

    def end(self, quiet: bool) -> None:
        if self.begun:
            self.begun = False
            self.live.end(quiet)


SLOT: ContextVar[LiveSlot | None] = ContextVar("modelyard_live_slot", default=None)
"""The guard's slot for the request this task serves (a context variable: local to it)."""


def admitted() -> None:
    """The request this task serves was admitted: count it as live (if it is a client's
    model request; on the event loop)."""
    slot = SLOT.get()
    if slot is not None:
        slot.begin()


class LineSlots:
    """The lines of one batch in flight: at most ``concurrency``, at most ``busy`` while
    live traffic is in flight (or ended within ``quiet_s``). One task acquires; the
    lines release."""

    def __init__(self, live: LiveTraffic, concurrency: int, busy: int, quiet_s: float) -> None:
        self.live, self.concurrency, self.busy, self.quiet_s = live, concurrency, busy, quiet_s
        self.in_flight = 0
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        """Wait until one more line may start, and count it."""
        while True:
            busy_for = self.live.busy_for(self.quiet_s)
            limit = self.busy if busy_for > 0 else self.concurrency
            if self.in_flight < limit:
                self.in_flight += 1
                return
            self._changed.clear()
            # a line's end can always free a slot; live traffic's end only below concurrency
            timeout = (
                None if self.in_flight >= self.concurrency or busy_for == math.inf else busy_for
            )
            with self.live.on_idle(self._changed), contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def release(self) -> None:
        self.in_flight -= 1
        self._changed.set()


__all__ = ["LIVE_PATHS", "LineSlots", "LiveTraffic"]
