"""The controller's alert sender: webhook POSTs off the controller's own thread.

A rollback's alert is recorded (its state, the log) in the tick; its webhook POST, with the
webhook's timeout and retries, is handed to an ``AlertSender``: one daemon thread per
controller, started at the first alert. It sends one alert at a time in the order they
were raised, so the receiver sees them in order, and keeps each delivery in the store as
every alert delivery is kept. So a slow or hung receiver never holds up a tick, nor the
lease the tick renews.

The queue is bounded (``max_queued``): when it is full, the oldest waiting alert is
dropped, with a warning in the log and a failed delivery in the store (``dropped`` counts
them). ``close`` waits a bounded time for what is queued; what is still waiting then is
recorded as not sent, and a POST still in flight finishes on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from modelyard.store import AlertNotification, Store

log = logging.getLogger(__name__)

MAX_QUEUED = 100
"""Alerts waiting for the webhook at most, per controller."""


class Outcome(Protocol):
    """What one delivery came to (``monitoring.post_webhook``'s answer)."""

    @property
    def ok(self) -> bool: ...
    @property
    def attempts(self) -> int: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True)
class Post:
    """One alert's change of state for one webhook; ``send`` POSTs it (with its retries)."""

    alert_id: str
    rule: str
    state: str
    target: str
    at: datetime
    send: Callable[[], Outcome]


def deliver(store: Store, post: Post) -> Outcome:
    """Send ``post`` now and keep the delivery in the store."""
    d = post.send()
    if not d.ok:
        log.error("alert %s: webhook %s failed after %d tries: %s", post.rule, post.target,
                  d.attempts, d.error)  # fmt: skip
    note = AlertNotification(
        post.alert_id, post.rule, post.state, post.target, post.at, d.ok, d.attempts, d.error
    )
    store.add_alert_notification(note)
    return d


def _not_sent(store: Store, post: Post, why: str) -> None:
    log.warning("alert %s (%s) not sent to %s: %s", post.rule, post.alert_id, post.target, why)
    try:
        note = AlertNotification(
            post.alert_id, post.rule, post.state, post.target, post.at, False, 0, f"not sent: {why}"
        )
        store.add_alert_notification(note)
    except Exception:  # the store may be down: the log has it
        log.exception("could not record that alert %s was not sent", post.alert_id)


class AlertSender:
    """Sends alerts (``Post``) on a daemon thread of its own, in order, from a bounded queue."""

    def __init__(self, store: Store, *, max_queued: int = MAX_QUEUED) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.store = store
        self.max_queued = max_queued
        self.dropped = 0  # alerts dropped because the queue was full
        self._queue: deque[Post] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._generation = 0  # bumped by close: a thread of an older one ends
        self._running = False

    def submit(self, post: Post) -> None:
        """Queue ``post``; when the queue is full, the oldest waiting one is dropped."""
        dropped = []
        with self._cond:
            while len(self._queue) >= self.max_queued:
                dropped.append(self._queue.popleft())
                self.dropped += 1
            self._queue.append(post)
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._work, args=(self._generation,), name="modelyard-alerts",
                    daemon=True,
                ).start()  # fmt: skip
            self._cond.notify_all()
        for old in dropped:
            _not_sent(self.store, old, f"{self.max_queued} alerts were waiting for the "
                      "webhook (a slow or hung receiver); the oldest was dropped")  # fmt: skip

    def pending(self) -> int:
        """Alerts queued or being sent."""
        with self._cond:
            return len(self._queue) + self._in_flight

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every queued alert was sent (or failed for good)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float) -> bool:
        """Send what is queued, waiting ``timeout_s`` at most; what is left is recorded as not
        sent. The sender may be used again: a later ``submit`` starts a new thread."""
        done = self.flush(timeout_s)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._generation += 1
            self._running = False
            self._cond.notify_all()
        for post in left:
            _not_sent(self.store, post, f"the controller stopped; the webhook had not "
                      f"answered the alerts before it within {timeout_s:g} s")  # fmt: skip
        return done

    def _work(self, generation: int) -> None:
        while True:
            with self._cond:
                while not self._queue and self._generation == generation:
                    self._cond.wait()
                if self._generation != generation:
                    return
                post = self._queue.popleft()
                self._in_flight += 1
            try:
                deliver(self.store, post)
            except Exception:  # a bug or the store down: the next alert is still sent
                log.exception("the alert %s could not be delivered", post.alert_id)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()
