"""``x-request-id`` on every answer, as OpenAI sends it (errors included).

An answer of a model already names its inference record (``cmpl-...``) in the
header; every other answer (a 4xx refusal, a 5xx, a Files or Batches call, a
refusal of the guard) gets ``req_<hex>``, which the openai SDK exposes as
``exc.request_id`` and the server's log names beside a 5xx, so that a developer
can quote it to the operator.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def request_id_of(request: Request) -> str:
    """The id this request's answer carries when it names no record (``RequestIdMiddleware``
    sets it; a fresh one outside it)."""
    found = request.scope.get("state", {}).get("request_id")
    return found if isinstance(found, str) else new_request_id()


class RequestIdMiddleware:
    """Adds ``x-request-id`` to every HTTP answer that has none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == HEADER for name, _ in headers):
                    message = {**message, "headers": [*headers, (HEADER, rid.encode())]}
            await send(message)

        await self.app(scope, receive, sending)


__all__ = ["RequestIdMiddleware", "new_request_id", "request_id_of"]
