"""Waiting in tests for what happens in another thread or process: records written
asynchronously, a server's heartbeat, a rollout's next step."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(
    what: str, check: Callable[[], T | None], timeout_s: float = 60.0, every_s: float = 0.05
) -> T:
    """``check()``'s first truthy value, looking every ``every_s`` seconds (at least once,
    and once more at the deadline). After ``timeout_s`` seconds it fails with an
    AssertionError that names ``what`` never happened, and the last value ``check`` gave.

    The default timeout is generous: it costs time only when the test fails anyway, and a
    loaded CI machine is slow. ``check`` may act (tick a controller, send a request): it
    runs once per look, so ``every_s`` paces it."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = check()
        if seen:
            return seen
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout_s:g} s waiting for {what} (last seen: {_short(seen)})"
            )
        time.sleep(max(0.0, min(every_s, deadline - time.monotonic())))


def _short(value: object, most: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most] + f"... ({len(text)} characters)"
