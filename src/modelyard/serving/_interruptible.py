"""An HTTP transport whose blocking request another thread can cut short.

A non-streamed request to a vLLM server blocks its thread until the whole
answer is ready; when the client leaves or the request times out, vLLM must stop
generating for it, and it does when the connection closes. ``InterruptibleTransport``
is httpx's plain HTTP/1.1 transport (httpcore's connection pool, pooled
keep-alive connections) over sockets that record, on the sending thread, which
socket a request went out on. ``interruptible(interrupt)`` marks the requests a
thread sends in its block; ``Interrupt.fire()``, from any thread, shuts that
socket: the blocked read returns at once (httpx raises ``ReadError``), the
connection leaves the pool, and the server sees its client gone.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator

import httpcore
import httpx

_HTTPCORE_ERRORS = (
    httpcore.ConnectionNotAvailable,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    httpcore.ProtocolError,
    httpcore.TimeoutException,
    httpcore.NetworkError,
)
# under uvicorn's default 5 s (and well under the 75 s the vllm engine gives its servers), so
# a pooled connection is not closed by the server while a request is sent on it
KEEPALIVE_S = 4.0
_sending = threading.local()  # .interrupt: the Interrupt of the request this thread sends


class Interrupt:
    """Cuts short the request sent in an ``interruptible`` block (``fire``, any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.fired = False

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the request is being written to (shut at once if fired already)."""
        with self._lock:
            self._sock = sock
            if self.fired:
                _shut(sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            _shut(self._sock)


@contextlib.contextmanager
def interruptible(interrupt: Interrupt) -> Iterator[None]:
    """The requests this thread sends in the block (on an ``InterruptibleTransport``) are
    cut short by ``interrupt.fire()``; after it, ``fire`` touches nothing."""
    _sending.interrupt = interrupt
    try:
        yield
    finally:
        _sending.interrupt = None
        interrupt.detach()


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)


class _Stream(httpcore.NetworkStream):
    """httpcore's socket stream, telling the sending thread's ``Interrupt`` its socket."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        interrupt: Interrupt | None = getattr(_sending, "interrupt", None)
        if interrupt is not None:
            interrupt.attach(self._inner.get_extra_info("socket"))
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _mapped(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """httpx's exception of the same name (``ReadError``, ``ReadTimeout``, ...)."""
    kind = getattr(httpx, type(exc).__name__, None)
    if not (isinstance(kind, type) and issubclass(kind, httpx.TransportError)):
        kind = httpx.TransportError
    return kind(str(exc), request=request)


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream, self._request = stream, request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except _HTTPCORE_ERRORS as exc:
            raise _mapped(exc, self._request) from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class InterruptibleTransport(httpx.BaseTransport):
    """Plain HTTP/1.1 with pooled connections, whose requests an ``Interrupt`` can cut short
    (see the module doc). For a server on this machine: no proxy, no client certificate."""

    def __init__(self, max_connections: int) -> None:
        self._pool = httpcore.ConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_S,
            network_backend=_Backend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core)
        except _HTTPCORE_ERRORS as exc:
            raise _mapped(exc, request) from exc
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


__all__ = ["Interrupt", "InterruptibleTransport", "interruptible"]
