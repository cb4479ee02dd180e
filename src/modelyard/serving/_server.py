"""Running the app: in the foreground (``modelyard serve``) or on a background thread.

In the foreground, SIGTERM drains the server before it exits (``DrainingServer``).
Either way, credentials sent in a query string (``?api_key=...``) never reach the
access log: ``RedactQuery`` masks their values in uvicorn's access lines.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

import uvicorn
from fastapi import FastAPI

from modelyard.serving._auth import CREDENTIAL_PARAMS
from modelyard.serving._shutdown import Drain
from modelyard.sockets import bind_socket, url_host

log = logging.getLogger(__name__)


_CREDENTIAL_VALUE = re.compile(
    r"([?&](?:" + "|".join(re.escape(p) for p in sorted(CREDENTIAL_PARAMS)) + r")=)[^&#\s]*",
    re.IGNORECASE,
)


def redact_query(target: str) -> str:
    """``target`` (a path with its query) with the values of credential parameters masked."""
    return _CREDENTIAL_VALUE.sub(r"\1[redacted]", target) if "?" in target else target


class RedactQuery(logging.Filter):
    """Masks credentials in the query strings of uvicorn's access lines (whose third
    argument is the path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def quiet_credentials() -> None:
    """Install ``RedactQuery`` on uvicorn's access logger (once; after uvicorn configured
    its logging, which keeps a logger's filters)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())


class DrainingServer(uvicorn.Server):
    """uvicorn, draining on SIGTERM/SIGINT before it stops (see ``_shutdown``).

    The first signal begins the drain (``/ready`` 503, new requests 503, in-flight
    ones go on); the server stops when none is left or ``grace_s`` has passed,
    and the process then exits normally (status 0). A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain | None, grace_s: float) -> None:
        super().__init__(config)
        self.drain, self.grace_s = drain, grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain is None:
            super().handle_exit(sig, frame)
        elif self.drain.draining or self.should_exit:
            log.warning("second signal: stopping now")
            self.should_exit = self.force_exit = True
        else:
            log.warning("draining: no new requests; waiting for %d in flight", self.drain.inflight)
            self.drain.begin(self.grace_s)

    async def on_tick(self, counter: int) -> bool:
        if self.drain is not None and self.drain.done() and not self.should_exit:
            log.warning("drained (%d requests left); stopping", self.drain.inflight)
            self.should_exit = True
        return await super().on_tick(counter)


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    shutdown_grace_s: float = 30.0,
    on_bound: Callable[[int], None] | None = None,
    tls: tuple[str, str] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (up to ``shutdown_grace_s``) and return.

    ``on_bound`` gets the port once the socket is bound (the CLI's banner); ``tls``
    (certificate file, key file) serves HTTPS.
    """
    sock = bind_socket(host, port)
    if on_bound is not None:
        on_bound(int(sock.getsockname()[1]))
    cert, key = tls or (None, None)
    config = uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=5, ssl_certfile=cert, ssl_keyfile=key
    )
    quiet_credentials()
    # What is loaded by now (torch, transformers, the app) lives as long as the server: out
    # of the collector's full passes, which walk that heap for 0.3-0.5 s each (measured in
    # benchmarks/serving.py's process) and would stall every request in flight meanwhile.
    gc.collect()
    gc.freeze()
    drain: Drain | None = getattr(app.state, "drain", None)
    DrainingServer(config, drain, shutdown_grace_s).run(sockets=[sock])


class BackgroundServer:
    """The app on 127.0.0.1 in a thread of this process (quickstart, tests, the metrics
    listener of ``serve --metrics-port``); ``access_log`` logs each request (uvicorn.access)."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, access_log: bool = False
    ) -> None:
        self._sock = bind_socket(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        # Without an access log, uvicorn's logging config stays out: it would reconfigure
        # the whole process's logging (closing every handler) at each start.
        config = uvicorn.Config(
            app,
            log_level="info" if access_log else "warning",
            lifespan="on",
            access_log=access_log,
            log_config=uvicorn.config.LOGGING_CONFIG if access_log else None,
        )
        quiet_credentials()
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
