"""Which versions failed to load on this server (fallbacks, heartbeats), and whether its
store can be reached (``/ready``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from modelyard.errors import ModelyardError
from modelyard.serving._types import AdapterEvent, EngineError
from modelyard.store import ModelVersion

log = logging.getLogger(__name__)


class LoadHealth:
    """Which versions failed to load on this server lately (an engine observer).

    The router sends their requests to the other versions of the plan (a
    fallback) until a load succeeds or ``ttl_s`` passes; heartbeats report them
    so the rollout controller treats them as a breach.
    """

    def __init__(self, ttl_s: float = 30.0) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[float, str]] = {}  # ref -> (monotonic time, why)

    def adapter_event(self, event: AdapterEvent, version: str) -> None:
        with self._lock:
            if event == "load_failure":
                previous = self._failed.get(version)
                why = previous[1] if previous else "failed to load"
                self._failed[version] = (time.monotonic(), why)
            elif event == "load":
                self._failed.pop(version, None)

    def batch_ran(self, size: int) -> None:
        """Engine observer hook (batches are of no interest here)."""

    def failed(self, ref: str, why: str) -> None:
        with self._lock:
            self._failed[ref] = (time.monotonic(), why)

    def failures(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            for ref in [r for r, (t, _) in self._failed.items() if now - t > self._ttl_s]:
                del self._failed[ref]
            return {ref: why for ref, (_, why) in self._failed.items()}

    def is_failed(self, ref: str) -> bool:
        """Checked on every request: one lookup, no copy."""
        with self._lock:
            entry = self._failed.get(ref)
        return entry is not None and time.monotonic() - entry[0] <= self._ttl_s


class StoreProbe:
    """Whether the store answers, asked at most once per ``ttl_s`` (``/ready`` is polled
    often; a probe already running is not waited for: its last answer stands)."""

    def __init__(self, check: Callable[[], object], ttl_s: float = 1.5) -> None:
        self._check, self._ttl_s = check, ttl_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        """None while the store answers, else why it does not (one line)."""
        if time.monotonic() - self._checked_at < self._ttl_s:
            return self._problem
        if not self._lock.acquire(blocking=False):
            return self._problem
        try:
            try:
                self._check()
                self._problem = None
            except ModelyardError as exc:
                if self._problem is None:
                    log.error("store probe failed: %s", exc.one_line())
                self._problem = exc.one_line()
            self._checked_at = time.monotonic()
        finally:
            self._lock.release()
        return self._problem


def load_failure_of(exc: ModelyardError, version: ModelVersion) -> bool:
    """Whether ``exc`` says ``version`` could not be loaded (the engine names it)."""
    return isinstance(exc, EngineError) and exc.context.get("version") == version.ref
