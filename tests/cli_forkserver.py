"""A fork server for the CLI tests: ``modelyard`` commands without paying the imports each time.

A subprocess of ``python -m modelyard`` spends two seconds importing the CLI, and nine
more when its command trains or serves (torch, transformers, peft), before it does
anything; under CI's load that was most of a CLI test's time. This server imports all of
modelyard once, then forks a child for each command. The child is a process of its own, as
``python -m modelyard`` is: it gets the request's environment, working directory and
arguments, writes to its own stdout and stderr files, and exits with the code the command
chose (or a signal's). It skips only the interpreter's teardown of every imported module
(non-daemon threads are waited for, atexit functions run, stdout and stderr flushed). The
server waits for it and reports that status.

Protocol, one Unix-socket connection per command: the client sends a length-prefixed JSON
request (``args``, ``env``, ``cwd``, ``out``, ``err``); the server answers ``pid N`` when
the child has started and ``exit N`` when it has ended (N is ``subprocess``'s return code:
negative for a signal). The server ends when its parent (the test process) does.

Usage: ``python cli_forkserver.py SOCKET`` (prints ``ready`` once its imports are done).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import pkgutil
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path
from typing import Any


def _preload() -> None:
    """Import every modelyard module (and so torch, transformers and peft) once, here."""
    import modelyard

    for info in pkgutil.walk_packages(modelyard.__path__, "modelyard."):
        if info.name.endswith("__main__"):
            continue
        with contextlib.suppress(Exception):  # an optional extra not installed: left out
            importlib.import_module(info.name)


def _read_request(conn: socket.socket) -> dict[str, Any]:
    header = b""
    while len(header) < 4:
        chunk = conn.recv(4 - len(header))
        if not chunk:
            raise ConnectionError("the client went away")
        header += chunk
    (size,) = struct.unpack("!I", header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the client went away")
        body += chunk
    request: dict[str, Any] = json.loads(body)
    return request


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become ``python -m modelyard ARGS`` and exit as it would."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
    os.dup2(os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)

    # The consoles were made when the server imported them; size them as a fresh process
    # would for this environment (modelyard.cli._common's rule, Rich's default of 80).
    from modelyard.cli import _common, main

    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() else None
    _common.console.width = width if width is not None else 120
    _common.err_console.width = width if width is not None else 80
    sys.argv = [str(Path(_common.__file__).parent.parent / "__main__.py")]
    try:
        code = main(list(request["args"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    # What the interpreter does at exit, less tearing down every module it imported (about
    # two seconds with torch loaded): wait for non-daemon threads, run the atexit
    # functions, flush stdout and stderr.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code if 0 <= code <= 255 else code & 0xFF)


def serve(path: str) -> None:
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while os.getppid() == parent:
        for _key, _ in selector.select(timeout=0.05):
            conn, _addr = listener.accept()
            try:
                request = _read_request(conn)
            except (ConnectionError, ValueError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                selector.close()
                for other in waiting.values():
                    other.close()
                _run_child(request)  # exits
            waiting[pid] = conn
            with contextlib.suppress(OSError):
                conn.sendall(f"pid {pid}\n".encode())
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid not in waiting:
                continue
            conn = waiting.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {code}\n".encode())
            conn.close()
    for pid in waiting:  # the test process is gone: so are the commands it started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    _preload()
    serve(sys.argv[1])
