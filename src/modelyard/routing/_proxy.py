"""Relaying one API request to a replica (pure ASGI, no parsing beyond ``model``).

The body is read once, up to ``max_body_bytes`` (413 past it, as a server
answers), but a file upload's (``POST /v1/files``), which is relayed as it arrives
to one replica; ``model`` is read from it to find the endpoint's plan; the policy
orders the replicas; the request goes to the first one with its headers as sent
(the key included: the router authenticates nothing, the server does). The
answer comes back as it arrives, status, headers (``Retry-After`` …) and body
byte for byte, so a stream is relayed chunk by chunk; a successful answer also
carries ``x-modelyard-replica``, the server that answered.

A request is tried on another replica only while nothing came back: a refused
connection, a connection reset before any answer (a replica killed while it ran
the request: its record there is closed as failed by the request journal), or a
503 ``shutting_down`` (a replica that began draining since its heartbeat); the
replica is then left out until a heartbeat newer than the failure. Once an
answer's status is relayed, a replica that breaks off ends the client's
connection. A client that goes away cancels the request to the replica.

An upload whose first bytes went out cannot go to another replica (they were read
from the client, not held). A draining replica that read it and answered 503
``shutting_down`` has its answer relayed as it came, ``Retry-After`` included (the
SDKs send it again, and the replica is left out of the retry); one that closed the
connection without an answer (before reading the whole body) leaves nothing to
relay: that is the router's 502 ``upstream_error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import httpx
from starlette.types import Message, Receive, Scope, Send

from modelyard.routing._metrics import RouteMetrics
from modelyard.routing._options import RouteOptions
from modelyard.routing._policy import Plan, Policy, Reason
from modelyard.routing._replicas import Replica, Replicas
from modelyard.routing._server import Drain
from modelyard.uploads import FORM_OVERHEAD

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}  # httpx sets both
RESPONSE_DROP = HOP_BY_HOP | {"date", "server"}  # uvicorn sets both
# uploads: relayed as they arrive (a batch's input may be 200 MiB), not read whole first
STREAMED_PATHS = frozenset({"/v1/files"})
PEEK_BYTES = 65_536  # of a 503, to tell a draining replica (retried) from other refusals
# Nothing came back: the request may go to another replica.
NO_ANSWER = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
             httpx.ReadError, httpx.WriteError)  # fmt: skip


class View(Protocol):
    """What the proxy reads of the fleet: the replicas and the endpoints' plans."""

    replicas: Replicas
    plans: dict[str, Plan]


class TooLarge(Exception):
    """The body passed ``max_body_bytes``."""


class ClientGone(Exception):
    """The client went away before its body was read."""


class Proxy:
    """The ASGI app that relays ``/v1/...`` requests to replicas."""

    def __init__(
        self,
        view: View,
        policy: Policy,
        metrics: RouteMetrics,
        options: RouteOptions,
        drain: Drain,
    ) -> None:
        self.view, self.policy = view, policy
        self.metrics, self.options, self.drain = metrics, options, drain
        self.client: httpx.AsyncClient | None = None

    def open(self) -> None:
        o = self.options
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(o.read_timeout_s, connect=o.connect_timeout_s,
                                  pool=o.connect_timeout_s),
            # idle connections end before uvicorn's keep-alive (5 s) closes them under us
            limits=httpx.Limits(max_connections=o.max_connections,
                                max_keepalive_connections=min(o.max_connections, 256),
                                keepalive_expiry=4.0),
            follow_redirects=False,
            trust_env=False,
        )  # fmt: skip

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.drain.draining:
            await error(send, 503, "the router is shutting down", "shutting_down",
                        {"connection": "close", "retry-after": "1"})  # fmt: skip
            return
        self.drain.inflight += 1
        try:
            await self._relay(scope, receive, send)
        finally:
            self.drain.inflight -= 1

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST" and scope["path"] in STREAMED_PATHS:
            await self._relay_upload(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.options.max_body_bytes)
        except TooLarge:
            await error(send, 413, f"the request body is larger than "
                        f"{self.options.max_body_bytes} bytes", "request_too_large")  # fmt: skip
            return
        except ClientGone:
            return
        model = model_of(body) if scope["method"] == "POST" else None
        plan = self.view.plans.get(model) if model else None
        order, reason = self.policy.order(plan, self.view.replicas.usable())
        work = asyncio.ensure_future(self._forward(scope, body, order, reason, send))
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if not task.done():
                    task.cancel()  # the client left: the replica's request is cancelled
        if work.done() and not work.cancelled():
            await work  # its answer is sent; an error in it is raised here
            return
        try:
            await work
        except (asyncio.CancelledError, Exception) as exc:  # nobody is left to tell
            log.debug("a request whose client left ended with %r", exc)

    async def _relay_upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A file upload: its body relayed as it arrives, never held here, to the first
        replica that takes the connection (no model to route by), up to ``max_file_bytes``
        (413 from its ``Content-Length``, or once a chunked body passes it: a replica that
        refused it mid-body could not be heard). Once its first bytes are sent it cannot
        go to another replica: a replica's answer then is relayed (a draining one's 503
        too), and a replica lost without one is a 502."""
        limit = self.options.max_file_bytes + FORM_OVERHEAD  # the file, as the replicas allow
        started = [False]

        async def body() -> AsyncIterator[bytes]:
            started[0] = True  # being read: it cannot be read again for another replica
            async for chunk in body_chunks(receive, limit):
                yield chunk

        order, reason = self.policy.order(None, self.view.replicas.usable())
        try:
            if too_large(scope, limit):
                raise TooLarge
            await self._forward(scope, body(), order, reason, send, sent=lambda: started[0])
        except TooLarge:
            await error(send, 413, "the file is larger than this router's limit of "
                        f"{self.options.max_file_bytes} bytes (--max-file-bytes)",
                        "request_too_large", {"connection": "close"})  # fmt: skip
        except ClientGone:
            return

    async def _forward(
        self,
        scope: Scope,
        body: bytes | AsyncIterator[bytes],
        order: Sequence[Replica],
        reason: Reason,
        send: Send,
        sent: Callable[[], bool] | None = None,
    ) -> None:
        """``body`` to the first replica of ``order`` that answers; ``sent``: whether a
        streamed body has begun (it cannot be sent again)."""
        tries = order[: self.options.max_attempts]
        for attempt, replica in enumerate(tries):
            self.metrics.picks.labels("retry" if attempt else reason).inc()
            last = attempt + 1 == len(tries)
            if await self._try(scope, body, replica, send, last=last, sent=sent):
                return
            if sent is not None and sent():
                self.metrics.failures.labels("upload").inc()
                await error(send, 502, f"replica {replica.id} broke off while the upload "
                            "was sent: send it again", "upstream_error")  # fmt: skip
                return
        self.metrics.failures.labels("no_replica").inc()
        await error(send, 503, "no serving replica could take the request", "no_replica",
                    {"retry-after": "1"})  # fmt: skip

    async def _try(
        self,
        scope: Scope,
        body: bytes | AsyncIterator[bytes],
        replica: Replica,
        send: Send,
        *,
        last: bool,
        sent: Callable[[], bool] | None = None,
    ) -> bool:
        """Relay the request to ``replica``; False when another replica may take it: after
        no answer, or a draining replica's 503 when this is not the ``last`` to try and no
        byte of a streamed body has gone (``sent``). A 503 ``shutting_down`` to an upload
        whose bytes went out is relayed (they cannot be sent again); the replica is left
        out all the same."""
        assert self.client is not None, "the proxy is not open"
        replica.inflight += 1
        try:
            try:
                request = upstream_request(self.client, scope, body, replica)
                upstream = await self.client.send(request, stream=True)
            except NO_ANSWER as exc:
                self.view.replicas.failed(replica)
                self.metrics.failures.labels("connect").inc()
                log.warning("replica %s (%s): %s", replica.id, replica.url, type(exc).__name__)
                return False
            except httpx.TimeoutException:
                self.metrics.failures.labels("timeout").inc()
                await error(send, 504, "the serving replica did not answer in time", "timeout")
                return True
            try:
                raw = upstream.aiter_raw()
                head = b""
                if upstream.status_code == 503:
                    head = await peek(raw, PEEK_BYTES)
                    if b'"shutting_down"' in head:
                        self.view.replicas.failed(replica)
                        self.metrics.failures.labels("draining").inc()
                        if not last and not (sent is not None and sent()):
                            return False
                await self._answer(upstream, raw, head, replica, send)
            finally:
                await upstream.aclose()
            return True
        finally:
            replica.inflight -= 1

    async def _answer(
        self,
        upstream: httpx.Response,
        raw: AsyncIterator[bytes],
        head: bytes,
        replica: Replica,
        send: Send,
    ) -> None:
        self.metrics.requests.labels(replica.id, str(upstream.status_code)).inc()
        version = upstream.headers.get("x-modelyard-version")
        if version and upstream.status_code < 300:
            replica.answered(version)
        headers = [(k.lower(), v) for k, v in upstream.headers.raw
                   if k.decode("latin-1").lower() not in RESPONSE_DROP]  # fmt: skip
        if upstream.status_code < 400:  # a refusal must not say where a name is routed (see
            # docs/security.md: another tenant's endpoint and a missing one answer alike)
            headers.append((b"x-modelyard-replica", replica.id.encode("latin-1")))
        await send({"type": "http.response.start", "status": upstream.status_code,
                    "headers": headers})  # fmt: skip
        if head:
            await send({"type": "http.response.body", "body": head, "more_body": True})
        try:
            async for chunk in raw:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (httpx.TransportError, httpx.StreamError) as exc:
            self.metrics.failures.labels("upstream").inc()
            raise ConnectionAbortedError(
                f"replica {replica.id} broke off its answer: {type(exc).__name__}"
            ) from exc
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def upstream_request(
    client: httpx.AsyncClient, scope: Scope, body: bytes | AsyncIterator[bytes], replica: Replica
) -> httpx.Request:
    """``scope``'s request to ``replica``. A streamed body keeps the client's
    ``Content-Length`` (httpx sends it chunked otherwise), so the replica can refuse one too
    large before reading it."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    url = replica.url + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    drop = REQUEST_DROP if isinstance(body, bytes) else REQUEST_DROP - {"content-length"}
    headers = [(k, v) for k, v in scope["headers"]
               if k.decode("latin-1").lower() not in drop]  # fmt: skip
    return client.build_request(scope["method"], url, headers=headers, content=body)


def too_large(scope: Scope, limit: int) -> bool:
    """Whether the request says its body is larger than ``limit`` (``Content-Length``)."""
    return any(
        name.lower() == b"content-length" and value.isdigit() and int(value) > limit
        for name, value in scope["headers"]
    )


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body; ``TooLarge`` as soon as it passes ``limit`` (or says it will)."""
    if too_large(scope, limit):
        raise TooLarge
    return b"".join([chunk async for chunk in body_chunks(receive, limit)])


async def body_chunks(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; ``TooLarge`` as soon as they pass ``limit``,
    ``ClientGone`` when the client leaves first."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def model_of(body: bytes) -> str | None:
    """The ``model`` of a JSON body, if it has one (anything else: the server's to refuse)."""
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


async def peek(raw: AsyncIterator[bytes], limit: int) -> bytes:
    """Up to about ``limit`` first bytes of ``raw`` (the rest stays in it)."""
    parts, size = [], 0
    async for chunk in raw:
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)


async def disconnected(receive: Receive) -> None:
    """Returns when the client goes away (the body has been read already)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def error(
    send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> None:
    """An answer of the router's own, in OpenAI's error body (as a server's)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps(
        {"error": {"message": message, "type": kind, "code": code, "param": None}}
    ).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
