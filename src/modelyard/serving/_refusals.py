"""Refused requests: counted always, stored only as a sample.

A request refused before the engine sees it (400, 401, 403, 404, 413, 429) costs
a counter in ``modelyard_refused_total{tenant, reason}``; at most
``per_minute`` of one key's refusals per minute become inference records, and
their prompt is shortened to its first characters, its length and its SHA-256
(``shorten``), so a flood of refused requests cannot grow the store with it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

KEPT_CHARS = 256  # of a refused request's prompt, in its record
_MAX_KEYS = 10_000  # windows remembered at once; older ones are forgotten first


class RefusalSampler:
    """At most ``per_minute`` refusals per key per minute are stored (fixed windows)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # key id -> (window start, stored)

    def take(self, key_id: str) -> bool:
        """Whether this refusal of ``key_id`` should be stored (and count it if so)."""
        if self.per_minute <= 0:
            return False
        now = self._clock()
        with self._lock:
            start, stored = self._windows.get(key_id, (now, 0))
            if now - start >= 60.0:
                start, stored = now, 0
            if stored >= self.per_minute:
                return False
            self._windows[key_id] = (start, stored + 1)
            if len(self._windows) > _MAX_KEYS:
                for old in [k for k, (s, _) in self._windows.items() if now - s >= 60.0]:
                    del self._windows[old]
                while len(self._windows) > _MAX_KEYS:
                    del self._windows[next(iter(self._windows))]
            return True


def shorten(prompt: str | None) -> str | None:
    """A refused request's prompt as stored: whole when short, else its first
    ``KEPT_CHARS`` characters, its length and its SHA-256 (to recognise repeats)."""
    if prompt is None or len(prompt) <= KEPT_CHARS:
        return prompt
    digest = hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()
    return f"{prompt[:KEPT_CHARS]}… [{len(prompt)} characters, sha256 {digest}]"


__all__ = ["KEPT_CHARS", "RefusalSampler", "shorten"]
