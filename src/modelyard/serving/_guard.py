"""The outermost layer of the app (pure ASGI): draining and the body-size cap.

It runs before routing and before any JSON is parsed:

- while the server drains (``Drain``), API requests are refused with 503
  (``shutting_down``, ``Connection: close``), once their body is read (up to
  ``DRAIN_DISCARD_BYTES``, for up to ``DRAIN_DISCARD_S``; dropped): a connection
  closed with an upload's bytes still coming is reset, and the reset threw the
  503 away before the client (or the router relaying it) read it; ``/health``,
  ``/ready`` and ``/metrics`` still answer;
- a body larger than ``max_body_bytes`` is refused with 413
  (``request_too_large``): at once from its ``Content-Length``, or, for a
  chunked body, as soon as it passes the cap (the body is never parsed); a path
  with a cap of its own (``upload_caps``: a file upload, ``--max-file-bytes``) has
  that one instead, and its chunked body streams on to the app, counted, never
  held here (the app answers the 413 once it passes the cap);
- ``/metrics`` and the API docs (``/docs``, ``/redoc``, ``/openapi.json``) answer
  as ``OperatorAccess`` says: to anyone (``public``), only with
  ``Authorization: Bearer <operator token>`` (``token``; a tenant's API key never
  opens them), or not at all (``off``, 404);
- a completion whose key (already in the key cache) is over its requests/min is
  refused 429 before its body is read (``early_refusal``: the data plane's);
- every other request is counted in flight until its response (a whole
  stream) has been sent, which is what a drain waits for; a model request of a
  live client (not a batch's line) is counted in ``live`` too, which a running
  batch yields to (``_live``).

Refusals (413, an operator path without its token) are reported to ``on_refused``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.errors import (
    AuthError,
    ConfigError,
    ModelyardError,
    NotFound,
    RateLimited,
    RequestTooLarge,
    ShuttingDown,
    status_of,
)
from modelyard.serving._batch_context import CURRENT
from modelyard.serving._http_errors import error_of
from modelyard.serving._live import LIVE_PATHS, SLOT, LiveSlot, LiveTraffic
from modelyard.serving._shutdown import Drain

ALWAYS_OPEN = frozenset({"/health", "/ready", "/metrics"})
DRAIN_DISCARD_BYTES = 64 << 20
"""Most of a body a draining server reads (and drops) before it refuses the request."""
DRAIN_DISCARD_S = 10.0
"""Longest a draining server waits for a body before it refuses the request anyway."""
RATE_LIMITED = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat.completions",
    "/v1/responses": "responses",
}
METRICS_PATHS = frozenset({"/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
Access = Literal["public", "token", "off"]
ACCESS_MODES: tuple[str, ...] = get_args(Access)


@dataclass(frozen=True)
class OperatorAccess:
    """Who may read ``/metrics`` and the API docs: ``public``, ``token`` (the operator's
    bearer token, never a tenant's API key) or ``off``."""

    metrics: Access = "public"
    docs: Access = "public"
    token: str | None = None

    def __post_init__(self) -> None:
        for name in ("metrics", "docs"):
            mode = getattr(self, name)
            if mode not in ACCESS_MODES:
                raise ConfigError(
                    f"{name} access is {mode!r}; use one of {', '.join(ACCESS_MODES)}",
                    field=name,
                )
            if mode == "token" and not self.token:
                raise ConfigError(
                    f"{name} access is 'token' but no operator token is set",
                    hint="Set MODELYARD_METRICS_TOKEN (or serve --metrics-token).",
                    field=name,
                )

    def of(self, path: str) -> Access | None:
        """The access rule of ``path``; None for a path it does not govern."""
        if path in METRICS_PATHS:
            return self.metrics
        if path in DOCS_PATHS:
            return self.docs
        return None

    def allows(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header carries the operator token."""
        if not self.token or not authorization or not authorization.lower().startswith(b"bearer "):
            return False
        return hmac.compare_digest(authorization[7:].strip(), self.token.encode())


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

    def __init__(
        self,
        app: ASGIApp,
        *,
        drain: Drain,
        max_body_bytes: int | None,
        access: OperatorAccess | None = None,
        on_refused: Callable[[ModelyardError], object] | None = None,
        early_refusal: Callable[[bytes | None, str], RateLimited | None] | None = None,
        upload_caps: Mapping[str, tuple[int, str]] | None = None,
        live: LiveTraffic | None = None,
    ) -> None:
        self.app, self.drain, self.max_body_bytes = app, drain, max_body_bytes
        self.live = live
        self.upload_caps = dict(upload_caps or {})  # path -> (cap, the setting naming it)
        self.access = access or OperatorAccess()
        self.on_refused = on_refused
        self.early_refusal = early_refusal

    async def _refuse(
        self, send: Send, exc: ModelyardError, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        if self.on_refused is not None:
            self.on_refused(exc)
        await send_error(send, exc, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in ALWAYS_OPEN:
            await _drop_body(receive)
            await send_error(
                send,
                ShuttingDown("this server is shutting down and takes no new requests"),
                [("connection", "close"), ("retry-after", "1")],
            )
            return
        rule = self.access.of(scope["path"])
        if rule == "off":
            await send_error(send, NotFound(f"{scope['path']} is not served here"))
            return
        if rule == "token" and not self.access.allows(
            dict(scope.get("headers") or []).get(b"authorization")
        ):
            await self._refuse(
                send,
                AuthError(
                    f"{scope['path']} needs the operator token: send "
                    "'Authorization: Bearer <token>' (MODELYARD_METRICS_TOKEN); API keys do not "
                    "open it"
                ),
                [("www-authenticate", "Bearer")],
            )
            return
        route = RATE_LIMITED.get(scope["path"])
        if self.early_refusal is not None and route is not None and scope["method"] == "POST":
            headers = dict(scope.get("headers") or [])
            limited = self.early_refusal(headers.get(b"authorization"), route)
            if limited is not None:  # a key over its requests/min: its body is never read
                await send_error(send, limited, [("retry-after", str(limited.retry_after))])
                return
        live = (
            self.live
            if self.live is not None and scope["path"] in LIVE_PATHS and CURRENT.get() is None
            else None
        )
        self.drain.inflight += 1
        status = [0]
        slot = token = None
        if live is not None:  # counted as live once the data plane admits it (_live)
            slot = LiveSlot(live)
            token = SLOT.set(slot)
            send = _noting_status(send, status)
        try:
            checked = await self._check_body(scope, receive, send)
            if checked is not None:
                await self.app(scope, checked, send)
        finally:
            self.drain.inflight -= 1
            if slot is not None and token is not None:
                SLOT.reset(token)
                # answered 4xx after its admission (a bad body): no model asked, no quiet time
                slot.end(quiet=not 400 <= status[0] < 500)

    async def _check_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The ``receive`` to hand on, or None when a refusal has been sent."""
        cap, setting = self.upload_caps.get(scope["path"], (self.max_body_bytes, None))
        if cap is None or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return receive
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(send, ConfigError("the Content-Length header is not a number"))
                return None
            if int(declared) > cap:
                await self._too_large(send, int(declared), cap, setting)
                return None
            return receive
        if setting is not None:  # an upload, chunked: counted as it streams, never held
            return self._counted(receive, cap, setting)
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
                await self._too_large(send, None, cap, setting)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay(chunks, None, receive)

    def _counted(self, receive: Receive, cap: int, setting: str) -> Receive:
        """``receive``, raising RequestTooLarge (the app answers it 413) once the body passes
        ``cap``: an upload of up to hundreds of MB goes on to the app (which spools it to
        disk) a chunk at a time instead of being buffered here."""
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > cap:
                    refused = _too_large_error(None, cap, setting)
                    if self.on_refused is not None:
                        self.on_refused(refused)
                    raise refused
            return message

        return counted

    async def _too_large(
        self, send: Send, size: int | None, cap: int, setting: str | None = None
    ) -> None:
        await self._refuse(send, _too_large_error(size, cap, setting), [("connection", "close")])


async def _drop_body(receive: Receive) -> None:
    """Read the request's body and drop it, up to ``DRAIN_DISCARD_BYTES`` and
    ``DRAIN_DISCARD_S``: past either the refusal goes out, and the client may meet the
    closed connection instead."""
    size = 0
    try:
        async with asyncio.timeout(DRAIN_DISCARD_S):
            while size <= DRAIN_DISCARD_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                size += len(message.get("body", b""))
    except TimeoutError:
        return


def _too_large_error(size: int | None, cap: int, setting: str | None) -> RequestTooLarge:
    what = f"{size} bytes" if size is not None else f"more than {cap} bytes"
    return RequestTooLarge(
        f"the request body is {what}, over this server's limit of {cap} bytes "
        f"({setting or '--max-body-bytes'})",
        hint="Split the requests into several files, one batch each."
        if setting
        else "Send a shorter prompt.",
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


def _noting_status(send: Send, status: list[int]) -> Send:
    """``send``, keeping the response's status code in ``status[0]``."""

    async def noting(message: Message) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        await send(message)

    return noting


__all__ = [
    "ACCESS_MODES",
    "ALWAYS_OPEN",
    "Access",
    "GuardMiddleware",
    "OperatorAccess",
    "send_error",
]
