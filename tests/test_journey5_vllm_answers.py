"""Journey 5: the same version answers the same text on vLLM as on a laptop.

vLLM detokenizes an answer's first word with the space before it (" property"),
and may end it with a newline; the transformers engine strips an answer (as
evaluation does), so a batch job's output and its records said "property" on a
laptop and " property" with ``--engine vllm``: a join or a routing rule on the
answer broke when the job moved to the GPU node. Now the vllm engine strips the
text it streams and the answer it records alike, keeping the spaces between words.

A fake vLLM answers here (vLLM's own server on two cores would take a minute to
start): every completion is ``" property and\\n\\n"``, streamed in pieces or whole.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from batchworld import World, batch, build_world, enter, write_jsonl
from modelyard.artifacts import LocalArtifactStore
from modelyard.serving import SamplingParams, VLLMEngine, VLLMOptions

PIECES = [" ", " prop", "erty", " ", "and", "\n", "\n"]  # " property and\n\n"

FAKE_SERVER = """
import argparse, json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECES = PIECES_JSON
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, data, kind="application/json"):
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        usage = {"prompt_tokens": 3, "completion_tokens": len(PIECES)}
        if not self.path.endswith("/completions"):
            self._send(b"{}")
        elif body.get("stream"):
            events = [{"choices": [{"index": 0, "text": p, "finish_reason": None}]}
                      for p in PIECES]
            events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                           "usage": usage})
            data = "".join(f"data: {json.dumps(e)}\\n\\n" for e in events) + "data: [DONE]\\n\\n"
            self._send(data.encode(), "text/event-stream")
        else:
            answer = {"choices": [{"index": 0, "text": "".join(PIECES),
                                   "finish_reason": "stop"}], "usage": usage}
            self._send(json.dumps(answer).encode())


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
""".replace("PIECES_JSON", json.dumps(PIECES))


@pytest.fixture(scope="module")
def fake_vllm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A python whose ``vllm`` is the fake server above."""
    root = tmp_path_factory.mktemp("fake-vllm")
    package = root / "site" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    python = root / "python"
    site = root / "site"
    path = f'"{site}${{PYTHONPATH:+:$PYTHONPATH}}"'
    python.write_text(f'#!/bin/sh\nPYTHONPATH={path} exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return str(python)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("journey5-vllm"))


def test_a_vllm_batch_job_answers_and_records_the_laptops_text(
    world: World,
    fake_vllm: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = enter(world, tmp_path, monkeypatch)
    write_jsonl(
        here / "in.jsonl", [{"prompt": f"a hailstorm dented my car ({i})"} for i in range(3)]
    )
    code, out, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", "-e", "claims-router",
                           "--engine", "vllm", "--vllm-python", fake_vllm,
                           "--vllm-start-timeout-s", "120", "--json")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in (here / "out.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["property and"] * 3
    records = world.records(json.loads(out)["job_id"])
    assert sorted(r["response"] for r in records) == ["property and"] * 3


def test_a_streamed_vllm_answer_is_stripped_as_it_streams(
    world: World, fake_vllm: str, tmp_path: Path
) -> None:
    """What a streaming client sees: the pieces, together, are the whole answer."""
    with world.store() as store:
        version = store.resolve_model_ref("acme-claims@champion")
        engine = VLLMEngine(
            LocalArtifactStore(world.home / "artifacts"),
            VLLMOptions(python=fake_vllm),
            store=store,
            log_dir=tmp_path / "logs",
        )
        try:
            assert engine.warm(version, 120)
            params = SamplingParams(max_tokens=8, temperature=0)
            stream = engine.stream(version, "a hailstorm dented my car", params)
            events = list(stream)
        finally:
            engine.close()
    pieces = [event.text for event in events]
    final = events[-1].generation
    assert final is not None
    assert "".join(pieces) == final.text == "property and"
