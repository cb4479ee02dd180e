"""The outermost layer of the app (pure ASGI): draining and the body-size cap.

It runs before routing and before any JSON is parsed:

- while the server drains (``Drain``), API requests are refused with 503
  (``shutting_down``, ``Connection: close``); ``/health``, ``/ready`` and
  ``/metrics`` still answer;
- a body larger than ``max_body_bytes`` is refused with 413
  (``request_too_large``): at once from its ``Content-Length``, or, for a
  chunked body, as soon as it passes the cap (the body is never parsed);
- every other request is counted in flight until its response (a whole
  stream) has been sent, which is what a drain waits for.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.errors import (
    ConfigError,
    ModelyardError,
    RequestTooLarge,
    ShuttingDown,
    status_of,
)
from modelyard.serving._http_errors import error_of
from modelyard.serving._shutdown import Drain

ALWAYS_OPEN = frozenset({"/health", "/ready", "/metrics"})


async def send_error(
    send: Send, exc: ModelyardError, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """An OpenAI error body sent straight over ASGI, with the status of ``exc``'s class."""
    status = status_of(exc)
    body = json.dumps(error_of(exc)).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in headers),
    ]
    await send(
        {"type": "http.response.start", "status": status.http_status, "headers": raw_headers}
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Drain refusals, the body cap and the in-flight count, around the whole app."""

    def __init__(self, app: ASGIApp, *, drain: Drain, max_body_bytes: int | None) -> None:
        self.app, self.drain, self.max_body_bytes = app, drain, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in ALWAYS_OPEN:
            await send_error(
                send,
                ShuttingDown("this server is shutting down and takes no new requests"),
                [("connection", "close"), ("retry-after", "1")],
            )
            return
        self.drain.inflight += 1
        try:
            checked = await self._check_body(scope, receive, send)
            if checked is not None:
                await self.app(scope, checked, send)
        finally:
            self.drain.inflight -= 1

    async def _check_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The ``receive`` to hand on, or None when a refusal has been sent."""
        cap = self.max_body_bytes
        if cap is None or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return receive
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_error(send, ConfigError("the Content-Length header is not a number"))
                return None
            if int(declared) > cap:
                await self._too_large(send, int(declared), cap)
                return None
            return receive
        # No length given (chunked): read up to the cap, then hand the body on.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([], message, receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await self._too_large(send, None, cap)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay(chunks, None, receive)

    @staticmethod
    async def _too_large(send: Send, size: int | None, cap: int) -> None:
        what = f"{size} bytes" if size is not None else f"more than {cap} bytes"
        await send_error(
            send,
            RequestTooLarge(
                f"the request body is {what}, over this server's limit of {cap} bytes "
                "(--max-body-bytes)",
                hint="Send a shorter prompt.",
            ),
            [("connection", "close")],
        )


def _replay(
    chunks: list[bytes], pending: Message | None, receive: Receive
) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that gives the buffered body first, then defers to the real one."""
    queue: list[Message] = []
    if chunks or pending is None:
        queue.append({"type": "http.request", "body": b"".join(chunks), "more_body": False})
    if pending is not None:
        queue.append(pending)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed


__all__ = ["ALWAYS_OPEN", "GuardMiddleware", "send_error"]
