"""A serving process for ``serving.py``'s records rounds: one engine, two apps.

The records on vs off comparison runs on two of these processes at once (see
``_records_rounds``). Each is what the benchmark's own process serves for the other
loads: one ``TransformersEngine`` on the benchmark's store and artifacts, behind two
apps on 127.0.0.1, one with the app's own ``RecordWriter`` (records on, the default)
and one whose writer discards every record (``DiscardingWriter``: records off).

``ServerProcess`` starts ``python _server_process.py`` with its settings (JSON, one
argument); the process writes one line, ``{"on": url, "off": url}``, once both apps
answer, then reads commands a line each on stdin and answers each with a line:
``collect`` (a full garbage collection, so that none falls inside a timed load:
``{"seconds": s}``). End of input stops the apps, the engine and the store.
"""

from __future__ import annotations

import contextlib
import gc
import json
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import IO, Any

from modelyard.monitoring import RecordWriter
from modelyard.store import NewInferenceRecord


class ServerProcessError(RuntimeError):
    """A serving process failed to start or stopped."""


class DiscardingWriter(RecordWriter):
    """Drops every record unwritten, and every ``running`` journal row: records off."""

    def submit(self, record: NewInferenceRecord, *more: Any, **named: Any) -> None:
        return None

    def started(self, record: NewInferenceRecord) -> None:
        return None


@dataclass(frozen=True)
class ServerSettings:
    """What a serving process needs: where the store and artifacts are, the engine's sizes."""

    store_url: str
    artifacts: str
    max_adapters: int
    max_batch_size: int
    batch_window_ms: float
    refresh_seconds: float
    threads: int  # torch.set_num_threads


class ServerProcess:
    """A running serving process; ``urls`` are its two apps', records ``on`` and ``off``."""

    def __init__(self, settings: ServerSettings, start_timeout: float = 300) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(asdict(settings))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.urls: dict[str, str] = self._answer(start_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def collect(self) -> float:
        """A full garbage collection in the process; the seconds it took."""
        stdin, _ = self._pipes()
        stdin.write("collect\n")
        stdin.flush()
        answer = self._answer(60)
        if "error" in answer:
            raise ServerProcessError(answer["error"])
        return float(answer["seconds"])

    def _answer(self, timeout: float) -> dict[str, Any]:
        _, stdout = self._pipes()
        # one line per command, read whole: nothing is left in the pipe's buffer between
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise ServerProcessError(f"the serving process did not answer in {timeout:g} s")
        line = stdout.readline()
        if not line:
            raise ServerProcessError(
                f"the serving process stopped (exit {self._proc.poll()}); its errors are above"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        return self._proc.stdin, self._proc.stdout

    def close(self) -> None:
        stdin, _ = self._pipes()
        with contextlib.suppress(BrokenPipeError):
            stdin.close()  # end of input: the process stops its apps and returns
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(settings: ServerSettings) -> int:
    import torch  # only in the serving process, after the arguments parsed

    from modelyard.artifacts import ArtifactStore
    from modelyard.serving import BackgroundServer, TransformersEngine, create_app
    from modelyard.store import Store

    quiet()
    torch.set_num_threads(settings.threads)
    store = Store.open(settings.store_url)
    engine = TransformersEngine(
        ArtifactStore(settings.artifacts),
        max_adapters=settings.max_adapters,
        max_batch_size=settings.max_batch_size,
        batch_window_ms=settings.batch_window_ms,
        store=store,
    )
    off_writer = DiscardingWriter(store)
    refresh = settings.refresh_seconds
    try:
        with (
            BackgroundServer(create_app(store, engine, refresh_seconds=refresh)) as on,
            BackgroundServer(
                create_app(store, engine, writer=off_writer, refresh_seconds=refresh)
            ) as off,
        ):
            _say({"on": on.base_url, "off": off.base_url})
            for line in sys.stdin:
                if line.strip() == "collect":
                    started = time.perf_counter()
                    gc.collect()
                    _say({"seconds": time.perf_counter() - started})
                else:
                    _say({"error": f"unknown command {line.strip()!r}"})
    finally:
        engine.close()
        off_writer.close()
        store.close()
    return 0


def quiet() -> None:
    """No library warnings or progress bars on the benchmark's output (this process's and
    ``serving.py``'s)."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|transformers|peft)\.")


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    code = _serve(ServerSettings(**json.loads(sys.argv[1])))
    gc.freeze()  # no 2 s of collections at the exit: see _machine.leave
    sys.exit(code)
