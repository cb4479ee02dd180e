"""A real NATS server (Debian's ``nats-server``) for tests: started on a free port of
127.0.0.1, with JetStream keeping its streams in a directory of the test's, and ended by
its pid."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest

from redisserver import IN_CI, end_process, free_port

_T = TypeVar("_T")


class NatsServer:
    """One ``nats-server`` process (JetStream on unless ``jetstream=False``)."""

    def __init__(self, binary: str, workdir: Path, jetstream: bool = True) -> None:
        self.binary, self.workdir, self.jetstream = binary, workdir, jetstream
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        js = ["-js", "-sd", str(self.workdir / "jetstream")] if self.jetstream else []
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), *js],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            assert self.process.poll() is None, "nats-server exited at once"
            assert time.monotonic() < deadline, "nats-server did not answer in 20 s"
            time.sleep(0.05)

    def stop(self) -> None:
        end_process(self.process)
        self.process = None

    def js(self, work: Callable[[Any], Coroutine[Any, Any, _T]]) -> _T:
        """``work(jetstream)`` on a connection of its own (a producer, or a reader of
        answers)."""

        async def main() -> _T:
            nc = await nats.connect(self.url)
            try:
                return await work(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())


@contextlib.contextmanager
def nats_server(workdir: Path, jetstream: bool = True) -> Iterator[NatsServer]:
    """A fresh ``nats-server``. Without the binary the test is skipped (under CI it fails:
    .ci/run installs it)."""
    binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if binary is None:
        reason = "nats-server is not installed (Debian package nats-server)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    server = NatsServer(binary, workdir, jetstream)
    server.start()
    try:
        yield server
    finally:
        server.stop()
