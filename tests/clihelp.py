"""Running the real ``modelyard`` command in a process of its own, as a user would.

Each command runs in its own process with its own environment, working directory, stdout,
stderr and exit code. By default that process is forked from a server that has already
imported modelyard, torch and transformers (``cli_forkserver.py``): a command then starts
in milliseconds instead of the two to eleven seconds its imports take, which was most of
the CLI tests' time. A fresh ``python -m modelyard`` is used instead where the fork could
differ from it: an environment variable read at import time differs from the server's
(only ``MODELYARD_*``, ``COLUMNS`` and the test's own markers may), ``fresh=True``, or
``MODELYARD_TEST_FRESH_CLI=1`` (every command, to check that both ways agree).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

FRESH_ENV = "MODELYARD_TEST_FRESH_CLI"
# Variables a forked command may see with other values than the server had at start-up:
# modelyard reads them when a command runs, never at import.
_PER_COMMAND = ("MODELYARD_", "COLUMNS", "PYTEST_CURRENT_TEST", "FAKE_VLLM_")
_SERVER = Path(__file__).with_name("cli_forkserver.py")


@dataclass
class Result:
    code: int
    out: str
    err: str


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env["COLUMNS"] = "200"
    return env


def _import_time_part(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(_PER_COMMAND)}


class _ForkServer:
    """One server per test process, started on first use, ended when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._ready: bool | None = None
        self._dir = Path()
        self._env: dict[str, str] = {}

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                return
            self._dir = Path(tempfile.mkdtemp(prefix="modelyard-cli-"))
            self._env = _base_env()
            with (self._dir / "server.log").open("w") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, str(_SERVER), str(self._dir / "socket")],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=self._env,
                    text=True,
                )
            atexit.register(self.stop)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def usable(self, env: dict[str, str]) -> bool:
        self.start()
        with self._lock:
            if self._ready is None:
                assert self._proc is not None and self._proc.stdout is not None
                self._ready = self._proc.stdout.readline().strip() == "ready"
            if not self._ready:
                return False
        return _import_time_part(env) == _import_time_part(self._env)

    def run(self, args: tuple[str, ...], env: dict[str, str], timeout: float, cwd: str) -> Result:
        work = Path(tempfile.mkdtemp(dir=self._dir))
        out, err = work / "out", work / "err"
        request = {"args": list(args), "env": env, "cwd": cwd, "out": str(out), "err": str(err)}
        body = json.dumps(request).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(self._dir / "socket"))
                conn.sendall(struct.pack("!I", len(body)) + body)
                replies = conn.makefile("r")
                pid = int(replies.readline().split()[1])
                conn.settimeout(timeout)
                try:
                    code = int(replies.readline().split()[1])
                except TimeoutError:
                    os.kill(pid, signal.SIGKILL)
                    conn.settimeout(None)
                    replies.readline()
                    raise subprocess.TimeoutExpired(
                        ["modelyard", *args], timeout, _read(out), _read(err)
                    ) from None
            return Result(code, _read(out), _read(err))
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _read(path: Path) -> str:
    with path.open(encoding="utf-8") as f:  # universal newlines, as subprocess's text=True
        return f.read()


_server = _ForkServer()


def modelyard(
    *args: str,
    home: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    fresh: bool = False,
    cwd: Path | None = None,
) -> Result:
    """``modelyard ARGS`` with ``MODELYARD_HOME`` set to ``home`` (None: unset, so the
    command looks for a home from ``cwd`` up), in ``cwd`` (default: this process's)."""
    full_env = _base_env()
    if home is not None:
        full_env["MODELYARD_HOME"] = str(home)
    full_env.update(env or {})
    where = str(cwd if cwd is not None else Path.cwd())
    if not (fresh or os.environ.get(FRESH_ENV)) and _server.usable(full_env):
        return _server.run(args, full_env, timeout, where)
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
        cwd=where,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
