"""A real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``) for tests: started
on a free port of 127.0.0.1, clustering off, its one route sending every alert at once to a
webhook receiver of the test's (``Receiver``), and ended by its pid."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from redisserver import IN_CI, end_process, free_port

BINARY = "prometheus-alertmanager"
"""Debian's name for it (upstream's is ``alertmanager``), in /usr/bin."""


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps each JSON body Alertmanager POSTs to it."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []  # each POST's, beside its body
        bodies, headers = self.bodies, self.headers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                headers.append(dict(self.headers.items()))
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(
        self, found: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """The first body ``found`` accepts, waiting for it up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for body in list(self.bodies):
                if found(body):
                    return body
            assert time.monotonic() < deadline, f"no such notification in {timeout} s: " + str(
                self.bodies
            )
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AlertmanagerServer:
    """One Alertmanager process; ``stop`` and ``start`` again on the same port (an outage,
    then recovery)."""

    def __init__(self, binary: str, workdir: Path, receiver: Receiver) -> None:
        self.binary, self.workdir, self.receiver = binary, workdir, receiver
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(
            "route:\n"
            "  receiver: test\n"
            "  group_by: [alertname, endpoint]\n"
            "  group_wait: 0s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: test\n"
            "    webhook_configs:\n"
            f"      - url: {receiver.url}\n"
            "        send_resolved: true\n"
        )

    def start(self) -> None:
        with (self.workdir / "alertmanager.log").open("ab") as logfile:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=subprocess.DEVNULL,
                stderr=logfile,
            )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            assert self.process.poll() is None, (
                "alertmanager exited at once: "
                + (self.workdir / "alertmanager.log").read_text()[-2000:]
            )
            assert time.monotonic() < deadline, "alertmanager was not ready in 20 s"
            time.sleep(0.05)

    def stop(self) -> None:
        end_process(self.process)
        self.process = None

    def alerts(self) -> list[dict[str, Any]]:
        """What ``GET /api/v2/alerts`` answers (the alerts it holds, not resolved ones)."""
        reply = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        assert reply.status_code == 200, reply.text
        alerts: list[dict[str, Any]] = reply.json()
        return alerts


@contextlib.contextmanager
def alertmanager_server(workdir: Path) -> Iterator[AlertmanagerServer]:
    """A fresh Alertmanager, its receiver at ``.receiver``. Without the binary the test is
    skipped (under CI it fails: .ci/run installs it)."""
    binary = shutil.which(BINARY) or shutil.which(BINARY, path="/usr/bin")
    if binary is None:
        reason = f"{BINARY} is not installed (apt-get install prometheus-alertmanager)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    receiver = Receiver()
    server = AlertmanagerServer(binary, workdir, receiver)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            receiver.close()
