"""Journey 5, a vLLM server dying under ``serve --engine vllm``: while its supervisor
starts it again, every 503 its requests get says what happened.

Before, the restart's whole start said "not ready (starting)", exactly as a first start
does: the SRE reading the 503s (and the client reading them) could not tell a crash
from a slow first start. A small fake vLLM (an HTTP server taking seconds to get
ready) stands in for vLLM: the supervisor is the point, not the model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from modelyard.serving import VLLMOptions, VLLMProcess

FAKE_SERVER = """
import argparse, json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
time.sleep(float(os.environ.get("FAKE_VLLM_DELAY_S", "0")))  # loading its weights


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self):
        data = json.dumps({"choices": [{"text": "", "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _send

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self._send()


ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path: Path) -> str:
    """A python whose ``vllm`` is the fake above."""
    package = tmp_path / "site" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{tmp_path / "site"}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_while_a_killed_vllm_starts_again_its_problem_says_it_stopped(
    fake_vllm: str, tmp_path: Path
) -> None:
    options = VLLMOptions(python=fake_vllm, extra_env={"FAKE_VLLM_DELAY_S": "2"})
    process = VLLMProcess(options, str(tmp_path / "base"), "base", tmp_path / "vllm.log")
    process.start()
    try:
        assert process.problem in ("starting", None)  # a first start says only that
        assert process.wait_ready(60), process.problem
        process.kill()
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not (process.ready() and seen) and time.monotonic() < deadline:
            problem = process.problem
            if problem is not None and not process.ready() and problem not in seen:
                seen.append(problem)
            time.sleep(0.05)
        assert process.ready() and process.restarts == 1, seen
        # from the kill until it is ready again, every word about it names the crash
        assert seen and all("it stopped (exit -9)" in problem for problem in seen), seen
        assert seen == ["it stopped (exit -9); restarting"], seen
    finally:
        process.stop()
