"""The benchmark's HTTP clients in a process of their own (``serving.py``).

Run in the benchmark's process, the clients' threads share one GIL with the server's
event loop, its engine and its record writer: a client thread that holds it when a
response arrives delays the next request past the engine's 5-ms batch window, and
app-against-app comparisons (records on vs off) then swung 10 to 20 % either way
from round to round. Out of the process, the clients load the server as users'
processes do.

``ClientProcess`` starts ``python _client_process.py``, which reads one load a line
on stdin (JSON: the server's URL, the key, ``max_tokens`` and, per client, its
``[model, prompt]`` jobs), runs the clients at once (each sends its jobs one after
another; the clients are made before the clock starts) and writes one line back:
``{"tokens", "short", "seconds"}`` or ``{"error"}``. The process imports only the
``openai`` client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

Jobs = Sequence[Sequence[tuple[str, str]]]  # per client: (model, prompt) jobs


class ClientProcessError(RuntimeError):
    """The client process failed a load or stopped."""


class ClientProcess:
    """A running client process; ``run`` hands it one load and waits for its result."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, url: str, key: str, max_tokens: int, clients: Jobs) -> tuple[int, int, float]:
        """tokens, short (ended before ``max_tokens``), seconds of one load."""
        stdin, stdout = self._pipes()
        load = {"url": url, "key": key, "max_tokens": max_tokens, "clients": clients}
        stdin.write(json.dumps(load) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise ClientProcessError(f"the client process stopped (exit {self._proc.poll()})")
        result = json.loads(line)
        if "error" in result:
            raise ClientProcessError(result["error"])
        return int(result["tokens"]), int(result["short"]), float(result["seconds"])

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        return self._proc.stdin, self._proc.stdout

    def close(self) -> None:
        stdin, _ = self._pipes()
        stdin.close()  # end of input: the process returns
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import openai  # only in the client process

    max_tokens = int(spec["max_tokens"])
    apis = [  # each loads CA certificates (~30 ms of CPU): before the clock starts
        openai.OpenAI(base_url=spec["url"] + "/v1", api_key=spec["key"], max_retries=0,
                      timeout=120)
        for _ in spec["clients"]
    ]  # fmt: skip

    def client(api: openai.OpenAI, jobs: Sequence[Sequence[str]]) -> tuple[int, int]:
        tokens = short = 0
        for model, prompt in jobs:
            out = api.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
            )
            if out.usage is None:
                raise ClientProcessError(f"the server answered {model} without usage")
            tokens += out.usage.completion_tokens
            short += out.usage.completion_tokens < max_tokens
        return tokens, short

    try:
        with ThreadPoolExecutor(len(apis)) as pool:
            started = time.perf_counter()
            results = list(pool.map(client, apis, spec["clients"]))
            seconds = time.perf_counter() - started
    finally:
        for api in apis:
            api.close()
    return {
        "tokens": sum(t for t, _ in results),
        "short": sum(s for _, s in results),
        "seconds": seconds,
    }


def main() -> int:
    for line in sys.stdin:
        try:
            result = _load(json.loads(line))
        except Exception as exc:  # reported to the benchmark, which fails the run
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
