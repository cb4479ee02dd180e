"""A real Redis (Debian's ``redis-server``) for tests: started on a free port of 127.0.0.1,
with nothing saved to disk, and ended by its pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def end_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``process`` (a server a test started), SIGKILL after 10 s; wait for it."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on a port of its own; ``stop`` and ``start`` again on
    the same port (an outage, then recovery)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                *extra,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert self.process.poll() is None, "redis-server exited at once"
                    assert time.monotonic() < deadline, "redis-server did not answer in 20 s"
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        end_process(self.process)
        self.process = None

    def client(self) -> redis.Redis:
        """A client of this server, closed (its connections with it) when the server ends."""
        client = redis.Redis.from_url(self.url)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        while self._clients:
            self._clients.pop().close()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server``. Without the binary the test is skipped (under CI it fails:
    .ci/run installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    server = RedisServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        try:
            server.close_clients()
        finally:
            server.stop()


@contextlib.contextmanager
def redis_cluster(workdir: Path, nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` masters (the slots split among them, no replicas), on
    free ports of 127.0.0.1; yields the URL of its first node, as a deployment names one."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        reason = "redis-server or redis-cli is not installed (apt-get install redis-server)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    servers = []
    try:
        for i in range(nodes):
            node_dir = workdir / f"cluster-{i}"
            node_dir.mkdir()
            server = RedisServer(binary, node_dir)
            servers.append(server)
            bus = str(free_port())  # not port + 10000, which may be past 65535
            server.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-port", bus)  # fmt: skip
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        for server in servers:  # every node agrees the cluster is whole
            client = server.client()
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "the Redis Cluster did not come up in 30 s"
                time.sleep(0.1)
        yield servers[0].url.removesuffix("/0")
    finally:
        for server in servers:
            try:
                server.close_clients()
            finally:
                server.stop()
