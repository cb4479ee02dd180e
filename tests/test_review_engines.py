"""What an infrastructure owner runs into on the engines' side: ``serve`` options that an
engine would not read or that vLLM would refuse only when it starts (and then be restarted
forever), and the vllm engine's bounds. A fake ``vllm`` package (its OpenAI server answers
/health, the warm-up and completions, holding each completion a moment) stands in for vLLM
where the point is modelyard's side, so these run without vLLM's environment."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from clihelp import modelyard
from modelyard.artifacts import ArtifactStore
from modelyard.errors import EngineOverloaded, ModelyardError
from modelyard.serving import SamplingParams, TokenStream, VLLMEngine, VLLMOptions
from modelyard.store import ModelVersion, Store

# vllm.entrypoints.openai.api_server, faked: a completion whose prompt is "N S" (other than
# the warm-up) waits until N requests were in flight at once or S seconds passed, then
# answers with the most it saw in flight at once; one for an adapter it does not hold (never
# loaded, or unloaded) is a 404, as vLLM answers.
FAKE_SERVER = """
import argparse, json, os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

time.sleep(float(os.environ.get("FAKE_VLLM_DELAY_S", "0")))  # loading the weights

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--served-model-name")
args, _ = parser.parse_known_args()
lock, state = threading.Condition(), {"now": 0, "most": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/v1/load_lora_adapter" and os.environ.get("FAKE_VLLM_REFUSE_LORA"):
            with lock:
                state["loads"] = state.get("loads", 0) + 1
                data = json.dumps({"error": {"message": f"rank too big (load {state['loads']})"}})
            self.send_response(400)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())
            return
        if self.path == "/v1/load_lora_adapter":
            with lock:
                state.setdefault("loras", set()).add(body["lora_name"])
        if self.path == "/v1/unload_lora_adapter":
            with lock:
                state.setdefault("loras", set()).discard(body["lora_name"])
        if self.path == "/v1/completions" and body["model"] not in (
            args.served_model_name, *state.get("loras", ())
        ):  # as vLLM answers a model it does not hold
            data = json.dumps({"error": {"message": f"The model `{body['model']}` does not "
                                                   "exist.", "code": 404}}).encode()
            self.send_response(404)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if self.path == "/v1/completions" and body["prompt"] != "ok":
            wanted, hold = body["prompt"].split()
            wanted, deadline = int(wanted), time.monotonic() + float(hold)
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
                lock.notify_all()
                while state["most"] < wanted and time.monotonic() < deadline:
                    lock.wait(deadline - time.monotonic())
                state["now"] -= 1
                most = state["most"]
            self._send({"choices": [{"text": str(most), "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
            return
        self._send({"choices": [{"text": "", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def fake_vllm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A python whose ``vllm`` is the fake above."""
    root = tmp_path_factory.mktemp("fake-vllm")
    package = root / "site" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    python = root / "python"
    site = root / "site"
    path = f'"{site}${{PYTHONPATH:+:$PYTHONPATH}}"'  # before any PYTHONPATH given
    python.write_text(f'#!/bin/sh\nPYTHONPATH={path} exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return str(python)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    assert modelyard("init", home=home).code == 0
    return home


Refused = Callable[..., str]


@pytest.fixture
def refused(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Refused:
    """``modelyard serve ARGS`` in this process (a subprocess costs seconds of imports
    each): its stderr, asserted to be one refusal, exit 2. Past its checks it would build an
    engine or an app, or listen: each of those fails the test instead."""
    from modelyard import serving
    from modelyard.cli import main

    def past_the_checks(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serve went past its checks")

    for name in ("run_server", "create_app", "VLLMEngine", "TransformersEngine"):
        monkeypatch.setattr(serving, name, past_the_checks)
    monkeypatch.setenv("MODELYARD_HOME", str(home))

    def run(*args: str) -> str:
        capsys.readouterr()
        code = main(["serve", "--no-controller", "--port", "0", *args])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (code, err)
        assert "serving" not in err, err  # refused before it listened
        return err

    return run


def test_a_python_without_vllm_is_refused_at_start(refused: Refused) -> None:
    """Before: serve started, and every request got 503 while vLLM failed to start, forever."""
    err = refused("--engine", "vllm", "--vllm-python", sys.executable)
    assert f"the interpreter {sys.executable} has no vllm package" in err, err
    assert "make vllm" in err, err


def test_vllm_options_vllm_would_refuse_are_refused_at_start(
    refused: Refused, fake_vllm: str
) -> None:
    vllm = ("--engine", "vllm", "--vllm-python", fake_vllm)
    err = refused(*vllm, "--dtype", "fp8")
    assert "--dtype 'fp8' is not one vLLM takes here: use auto, float32, bfloat16" in err, err
    err = refused(*vllm, "--vllm-max-loras", "4", "--vllm-max-cpu-loras", "2")
    assert "--vllm-max-cpu-loras 2 is below --vllm-max-loras 4" in err, err
    err = refused(*vllm, "--vllm-max-loras", "32", "--max-adapters", "8")
    assert "--max-adapters 8 is below --vllm-max-loras 32" in err, err
    err = refused(*vllm, "--max-loras", "32", "--max-adapters", "8")  # journey 5's spelling
    assert "--max-adapters 8 is below --vllm-max-loras 32" in err, err


@pytest.mark.parametrize(
    "option", ["--refresh-seconds", "--heartbeat-s", "--controller-interval-s"]
)
def test_a_period_serve_could_never_keep_is_refused(refused: Refused, option: str) -> None:
    """inf or 1e12 passed, and the thread that waits that long overflowed (or never woke)."""
    err = refused("--engine", "echo", option, "inf")
    assert f"Invalid value for '{option}'" in err and "3600" in err, err


def test_without_vllm_python_the_environment_make_vllm_built_here_is_used(
    refused: Refused, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journey 5 runs `make vllm`, then `modelyard serve --engine vllm` with no --vllm-python:
    ./.venv-vllm/bin/python is taken (here a python without vllm, so it stops at that check);
    without one, the refusal says how to build it or name another."""
    monkeypatch.delenv("MODELYARD_VLLM_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    err = refused("--engine", "vllm")
    assert "there is no .venv-vllm/bin/python here" in err and "make vllm" in err, err
    made = tmp_path / ".venv-vllm" / "bin"
    made.mkdir(parents=True)
    (made / "python").symlink_to(sys.executable)
    err = refused("--engine", "vllm")
    assert f"the interpreter {made / 'python'} has no vllm package" in err, err


@pytest.mark.parametrize(
    ("engine", "option", "readers"),
    [
        ("vllm", "--device=cuda:1", "transformers"),
        ("vllm", "--host-cache-mb=64", "transformers"),
        ("vllm", "--max-batch-size=8", "transformers"),
        ("echo", "--dtype=bfloat16", "transformers or vllm"),
        ("echo", "--max-adapters=4", "transformers or vllm"),
        ("transformers", "--vllm-max-loras=8", "vllm"),
        ("transformers", "--vllm-python=/opt/vllm/bin/python", "vllm"),
        ("transformers", "--echo-delay-ms=5", "echo"),
    ],
)
def test_an_option_the_engine_would_not_read_is_refused(
    refused: Refused, fake_vllm: str, engine: str, option: str, readers: str
) -> None:
    """Before: accepted and ignored (``--device cuda:1`` with vLLM, ``--vllm-max-loras``
    with the transformers engine)."""
    python = ("--vllm-python", fake_vllm) if engine == "vllm" else ()
    err = refused("--engine", engine, *python, option)
    flag = option.split("=")[0]
    assert f"{flag} is read only by --engine {readers}, not by --engine {engine}" in err, err


def test_an_environment_variable_for_another_engine_is_not_refused(home: Path) -> None:
    """MODELYARD_VLLM_PYTHON may be set for every run: the echo engine serves beside it
    (up to the port, taken here, so that it stops there)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        env = {"MODELYARD_VLLM_PYTHON": "/opt/vllm/bin/python"}
        r = modelyard("serve", "--engine", "echo", "--no-controller", "--port", port, home=home,
                      env=env, timeout=120)  # fmt: skip
    assert "read only by" not in r.err and f"cannot listen on 127.0.0.1:{port}" in r.err, r.err


@dataclass
class Served:
    engine: VLLMEngine
    version: ModelVersion


@pytest.fixture
def served(fake_vllm: str, tmp_path: Path) -> Iterator[Served]:
    """A version with full weights on the fake vLLM (the request count goes as the prompt)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    artifacts = ArtifactStore(tmp_path / "artifacts")
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.register_base_model("fake", str(weights), {})
        store.create_registered_model("bot")
        version = store.create_model_version(
            "bot", kind="full", artifact_digest=artifacts.put_dir(weights, kind="full").digest,
            base_model="fake", run_id=None, lineage={"prompt_template": "text"}, metrics={},
        )  # fmt: skip
        engine = VLLMEngine(artifacts, VLLMOptions(python=fake_vllm), store=store,
                            log_dir=tmp_path / "logs")  # fmt: skip
        try:
            yield Served(engine, version)
        finally:
            engine.close()


def _text(stream: TokenStream) -> str:
    try:
        return stream.result().text
    except ModelyardError as exc:
        return exc.one_line()


def test_vllm_gets_as_many_requests_at_once_as_it_batches(served: Served) -> None:
    """Before: 64 worker threads sent at most 64 requests to vLLM at once, whatever
    --vllm-max-num-seqs (vLLM's own default: 256), so its batches never filled past 64."""
    engine, version = served.engine, served.version
    try:
        assert engine.warm(version, 120)
        clients = 100
        greedy = SamplingParams(max_tokens=1, temperature=0)
        streams = [engine.answer(version, f"{clients} 30", greedy) for _ in range(clients)]
        assert {_text(s) for s in streams} == {str(clients)}
    finally:
        engine.close()


def test_requests_beyond_the_queue_are_refused_at_once(fake_vllm: str, served: Served) -> None:
    """--max-queue bounds what waits for vLLM, as on the transformers engine: beyond it a
    503 ``overloaded`` at once (before: an unbounded queue of threads' work)."""
    engine, version = served.engine, served.version
    engine.close()
    options = VLLMOptions(python=fake_vllm, max_num_seqs=2)
    engine = VLLMEngine(engine.artifacts, options, store=engine.store, max_queue=3,
                        log_dir=engine.log_dir)  # fmt: skip
    try:
        assert engine.warm(version, 120)
        greedy = SamplingParams(max_tokens=1, temperature=0)
        held = [engine.answer(version, "99 1", greedy) for _ in range(5)]  # 2 sent, 3 wait
        started = time.monotonic()
        with pytest.raises(EngineOverloaded, match=r"3 requests are waiting for vLLM"):
            engine.answer(version, "99 1", greedy)
        assert time.monotonic() - started < 1
        assert all(_text(s) == "2" for s in held)  # each answered once the first ones ended
        assert _text(engine.answer(version, "1 1", greedy)) == "2"  # room again
    finally:
        engine.close()


def _two_adapters(
    fake_vllm: str, served: Served, tmp_path: Path
) -> tuple[VLLMEngine, ModelVersion, ModelVersion]:
    """Two adapter versions on ``served``'s base, and an engine that registers one at a
    time with the fake vLLM (``max_adapters=1``)."""
    store, artifacts = served.engine.store, served.engine.artifacts
    assert store is not None
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    digest = artifacts.put_dir(adapter, kind="adapter").digest
    a, b = (
        store.create_model_version("bot", kind="adapter", artifact_digest=digest,
                                   base_model="fake", run_id=None,
                                   lineage={"prompt_template": "text"}, metrics={})
        for _ in range(2)
    )  # fmt: skip
    engine = VLLMEngine(artifacts, VLLMOptions(python=fake_vllm), store=store, max_adapters=1,
                        log_dir=tmp_path / "logs")  # fmt: skip
    return engine, a, b


def test_adapter_cache_events_are_counted_on_the_vllm_engine(
    fake_vllm: str, served: Served, tmp_path: Path
) -> None:
    """``modelyard_adapter_cache_hits_total`` and the other adapter counters (the hit rate
    docs/serving.md computes) count the adapters registered with vLLM; before, they stayed
    absent on the vllm engine."""
    engine, a, b = _two_adapters(fake_vllm, served, tmp_path)
    seen: list[tuple[str, str]] = []

    class Observer:
        def adapter_event(self, event: str, version: str) -> None:
            seen.append((event, version))

        def batch_ran(self, size: int) -> None:
            pass

    engine.add_observer(Observer())
    try:
        assert engine.warm(a, 120)
        greedy = SamplingParams(max_tokens=1, temperature=0)
        for version in (a, a, b, a):
            assert _text(engine.answer(version, "1 1", greedy)) == "1"
        assert seen == [("miss", a.ref), ("load", a.ref), ("hit", a.ref),
                        ("miss", b.ref), ("load", b.ref), ("eviction", a.ref),
                        ("miss", a.ref), ("load", a.ref), ("eviction", b.ref)]  # fmt: skip
        stats = engine.stats()
        assert (stats.adapter_hits, stats.adapter_misses, stats.adapter_loads,
                stats.adapter_evictions) == (1, 3, 3, 2)  # fmt: skip
        assert engine.loaded() == [a.ref]
    finally:
        engine.close()


def test_an_adapter_in_use_is_not_unloaded_under_its_request(
    fake_vllm: str, served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a request registered its adapter, and another request's load evicted and
    unloaded it before the first reached vLLM, which then answered 404 (a 502 to the client).
    An adapter in use now stays registered until its requests end, then is evicted."""
    engine, a, b = _two_adapters(fake_vllm, served, tmp_path)
    registered, go_on = threading.Event(), threading.Event()
    real_model_name = engine._model_name

    def slow_for_a(server: Any, version: ModelVersion) -> str:
        name = real_model_name(server, version)
        if version.id == a.id:  # a's request is between its registration and vLLM
            registered.set()
            go_on.wait(30)
        return name

    monkeypatch.setattr(engine, "_model_name", slow_for_a)
    try:
        assert engine.warm(a, 120)
        greedy = SamplingParams(max_tokens=1, temperature=0)
        first = engine.answer(a, "1 1", greedy)
        assert registered.wait(30)
        assert _text(engine.answer(b, "1 1", greedy)) == "1"  # loads b: a must stay
        go_on.set()
        assert _text(first) == "1"
        # b's request ended first, while a's held a: b, idle, went back out (to capacity)
        assert engine.loaded() == [a.ref] and engine.stats().adapter_evictions == 1
    finally:
        go_on.set()
        engine.close()


def test_a_slow_start_is_waited_for_up_to_the_start_timeout(fake_vllm: str, served: Served) -> None:
    """A large model takes minutes to load: vLLM is waited for up to --vllm-start-timeout-s
    (before: a fixed 300 s, after which it was killed and started again, forever). A server
    not ready in time says why it is being restarted (before: "it stopped (exit None)")."""
    base = served.engine
    slow = {"FAKE_VLLM_DELAY_S": "3"}
    for timeout_s, ready in ((1.0, False), (20.0, True)):
        options = VLLMOptions(python=fake_vllm, start_timeout_s=timeout_s, extra_env=slow)
        engine = VLLMEngine(base.artifacts, options, store=base.store,
                            log_dir=base.log_dir)  # fmt: skip
        try:
            assert engine.warm(served.version, 2.5 if not ready else 30) is ready
            if not ready:
                process = engine.process(served.version)
                deadline = time.monotonic() + 10
                while "restarting" not in str(process.problem) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert process.problem == (
                    "it was not ready within 1 s (--vllm-start-timeout-s); restarting"
                )
        finally:
            engine.close()


def test_whether_vllm_runs_on_a_gpu_is_asked_of_vllms_own_torch(
    fake_vllm: str, tmp_path: Path
) -> None:
    """Before: modelyard's torch decided it, so a CPU build of torch here (``make``) started
    a CUDA vLLM in float32 and eager mode (no CUDA graphs) on a GPU machine."""
    cuda = tmp_path / "cuda-site" / "torch"
    cuda.mkdir(parents=True)
    (cuda / "__init__.py").write_text(
        "class cuda:\n    @staticmethod\n    def is_available():\n        return True\n"
    )
    gpu_python = tmp_path / "python"
    gpu_python.write_text(f'#!/bin/sh\nPYTHONPATH="{cuda.parent}" exec "{fake_vllm}" "$@"\n')
    gpu_python.chmod(0o755)
    on_gpu = VLLMOptions(python=str(gpu_python)).command("/models/base", "base", 8001)
    assert "--enforce-eager" not in on_gpu
    assert on_gpu[on_gpu.index("--dtype") + 1] == "auto"
    on_cpu = VLLMOptions(python=fake_vllm).command("/models/base", "base", 8001)  # CPU torch
    assert "--enforce-eager" in on_cpu and on_cpu[on_cpu.index("--dtype") + 1] == "float32"


def _processes_under(path: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``path`` (the fake vLLM serves a model there)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and any(
                str(path) in part for part in process.info["cmdline"] or ()
            ):
                found.append(process)
    return found


@pytest.mark.parametrize("stop_while_waiting", [False, True])
def test_serve_listens_once_its_vllm_servers_are_ready(
    fake_vllm: str, tmp_path: Path, stop_while_waiting: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: serve listened at once and /ready said 200 while vLLM was still loading, so
    a load balancer sent it requests that got 503. Now it waits; a SIGTERM meanwhile stops
    it and its vLLM servers (none is left running)."""
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    monkeypatch.setenv("MODELYARD_HOME", str(home))  # its audit key
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.register_base_model("fake", str(weights), {})
        store.create_tenant("acme")
        store.create_registered_model("bot", tenant="acme")
        digest = ArtifactStore(home / "artifacts").put_dir(weights, kind="full").digest
        version = store.create_model_version(
            "bot", kind="full", artifact_digest=digest, base_model="fake", run_id=None,
            lineage={"prompt_template": "text"}, metrics={},
        )  # fmt: skip
        store.create_endpoint("acme-support", model_ref=version.ref, tenant="acme")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(home), "FAKE_VLLM_DELAY_S": "4"}
    command = [sys.executable, "-m", "modelyard", "serve", "--engine", "vllm", "--port", "0",
               "--vllm-python", fake_vllm, "--no-controller"]  # fmt: skip
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "waiting for 1 vLLM server(s) to start" in line, line
            waited = time.monotonic()
            if stop_while_waiting:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                assert proc.returncode != 0
            else:
                line = proc.stderr.readline()
                assert time.monotonic() - waited > 2, line  # vLLM took 4 s to load
                match = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
                assert match, line
                url = match.group(1)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    with contextlib.suppress(httpx.TransportError):
                        ready = httpx.get(f"{url}/ready", timeout=2)
                        break
                    time.sleep(0.1)
                assert ready.status_code == 200, ready.text
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    deadline = time.monotonic() + 15
    while _processes_under(home / "artifacts") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_under(home / "artifacts")


def test_an_adapter_vllm_refused_fails_its_requests_at_once_for_a_while(
    fake_vllm: str, served: Served, tmp_path: Path
) -> None:
    """Before: every request of an adapter vLLM refuses hashed its files and asked vLLM
    again; now, as on the transformers engine, it fails at once for 10 s."""
    store, artifacts = served.engine.store, served.engine.artifacts
    assert store is not None
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    digest = artifacts.put_dir(adapter, kind="adapter").digest
    bad = store.create_model_version("bot", kind="adapter", artifact_digest=digest,
                                     base_model="fake", run_id=None,
                                     lineage={"prompt_template": "text"}, metrics={})  # fmt: skip
    options = VLLMOptions(python=fake_vllm, extra_env={"FAKE_VLLM_REFUSE_LORA": "1"})
    engine = VLLMEngine(artifacts, options, store=store, log_dir=tmp_path / "logs")
    try:
        assert engine.warm(bad, 120)
        greedy = SamplingParams(max_tokens=1, temperature=0)
        said = [_text(engine.answer(bad, "1 1", greedy)) for _ in range(3)]
        assert all(f"vLLM refused the adapter of {bad.ref} (400)" in s for s in said), said
        assert all("(load 1)" in s for s in said), said  # vLLM was asked once
        assert engine.stats().adapter_load_failures == 1
    finally:
        engine.close()


def test_serve_listens_on_an_ipv6_address(tmp_path: Path) -> None:
    """Before: ``serve --host ::1`` was refused ("Address family not supported", with a hint
    to pick another --port), as ``route`` was; both bind through ``modelyard.sockets``."""
    from modelyard.serving import BackgroundServer, EchoEngine, create_app

    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None)
        with BackgroundServer(app, host="::1") as server:
            assert server.base_url.startswith("http://[::1]:")
            assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
