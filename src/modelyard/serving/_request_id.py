"""``x-request-id`` on every answer, as OpenAI sends it (errors included).

An answer of a model already names its inference record (``cmpl-...``) in the
header, and so does its error once it was admitted (a 504: ``name_request``), or
once its refusal or failure was kept as a record (``DataPlane.enter(named=...)``);
every other answer (a 4xx refusal past the stored sample, a Files or Batches call,
a refusal of the guard) gets ``req_<hex>``, which the openai SDK exposes as
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


def name_request(request: Request, record_id: str) -> None:
    """Have this request's answer, an error included, carry ``record_id``: the inference
    record it was admitted as (a 504 after admission names the record the store keeps)."""
    request.scope.setdefault("state", {})["request_id"] = record_id


def request_id_of(request: Request) -> str:
    """The id this request's answer carries when it names no record: made when first asked
    for (the log beside a 5xx, or ``RequestIdMiddleware`` at the answer's start), kept in the
    request's scope so that both name the same one."""
    return _id_in(request.scope.setdefault("state", {}))


def _id_in(state: dict[str, object]) -> str:
    found = state.get("request_id")
    if not isinstance(found, str):  # a model's answer names its record: no id made for it
        found = state["request_id"] = new_request_id()
    return found


class RequestIdMiddleware:
    """Adds ``x-request-id`` to every HTTP answer that has none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # a route may name its record (name_request)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == HEADER for name, _ in headers):
                    rid = _id_in(state).encode()
                    message = {**message, "headers": [*headers, (HEADER, rid)]}
            await send(message)

        await self.app(scope, receive, sending)


__all__ = ["RequestIdMiddleware", "name_request", "new_request_id", "request_id_of"]
