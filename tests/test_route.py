"""`modelyard route`: two replicas behind the router, each request where its adapter is.

The replicas are the real app (``create_app``) with an echo engine that says which
versions it holds and remembers which it answered; they write heartbeats to the
store like ``modelyard serve``. The router is the real router app, reading the same
store. Everything runs on 127.0.0.1 in this process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.errors import ShuttingDown
from modelyard.routing import AdapterAffinity, Plan, Replica, RouteOptions, create_route_app
from modelyard.serving import (
    BackgroundServer,
    PacedEchoEngine,
    SamplingParams,
    TokenStream,
    create_app,
)
from modelyard.serving._guard import send_error
from modelyard.serving._http_errors import error_of
from modelyard.store import ModelVersion, Store, utcnow
from waiting import until
from worlds import fake_world

# beats every 0.2 s: seconds of slack on a busy machine (CI once saw a live replica's beat
# late enough at 5 s that the router had none left to retry on, and answered 503)
STALE_S = 10.0


class Holding(PacedEchoEngine):
    """The echo engine (paced, for streams), saying it holds ``held``; remembers answers."""

    def __init__(self, held: Sequence[str], delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.held = list(held)
        self.answered: list[str] = []

    def loaded(self) -> list[str]:
        return list(self.held)

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.answered.append(version.ref)
        return super().stream(version, prompt, params)


@dataclass
class Server:
    engine: Holding
    app: FastAPI
    server: BackgroundServer

    @property
    def id(self) -> str:
        return str(self.app.state.agent.id)

    def kill(self) -> None:
        """Stop it as a kill would: no more answers, no more heartbeats, its row left behind.

        The beats stop first: a server stopping cleanly clears its readiness before its
        agent stops, and a beat in between would say "not ready", which a kill never says.
        """
        agent = self.app.state.agent
        agent._stop.set()
        for thread in agent._threads:
            thread.join(10)
        agent.stop = lambda: None  # the row stays, going stale
        self.server.stop()


def start_replica(store: Store, engine: Holding) -> Server:
    app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=0.2)
    server = BackgroundServer(app)
    app.state.agent.address = f"127.0.0.1:{server.port}"
    return Server(engine, app, server.start())


@dataclass
class Fleet:
    store: Store
    a: Server
    b: Server
    router: BackgroundServer
    app: FastAPI
    key: str
    limited_key: str

    def post(self, model: str, key: str | None = None, **body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.router.base_url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hello there"}],
                  "max_tokens": 8, **body},
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=30,
        )  # fmt: skip

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.router.base_url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            named = line.startswith(name + "{") or line.startswith(name + " ")
            if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def live(router: BackgroundServer) -> int:
    return int(httpx.get(f"{router.base_url}/ready", timeout=10).json()["replicas"])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store, endpoint=None, versions=4)
        for i, name in enumerate(("one", "two", "three", "four"), start=1):
            store.create_endpoint(name, model_ref=f"bot:{i}", tenant="acme")
        _, key = create_api_key(store, "acme")
        _, limited = create_api_key(store, "acme", rpm_limit=1)
        a = start_replica(store, Holding(["bot:1"], delay_s=0.05))
        b = start_replica(store, Holding(["bot:2"]))
        options = RouteOptions(refresh_s=0.1, stale_after_s=STALE_S, connect_timeout_s=1.0)
        app = create_route_app(store, options)
        router = BackgroundServer(app).start()
        try:
            until("both replicas in the router", lambda: live(router) == 2, timeout_s=15)
            yield Fleet(store, a, b, router, app, key, limited)
        finally:
            router.stop()
            for r in (a, b):
                r.server.stop()


def test_requests_go_to_the_replica_that_holds_the_endpoints_version(fleet: Fleet) -> None:
    for _ in range(5):
        one, two = fleet.post("one"), fleet.post("two")
        assert one.status_code == two.status_code == 200, (one.text, two.text)
        assert one.headers["x-modelyard-replica"] == fleet.a.id
        assert two.headers["x-modelyard-replica"] == fleet.b.id
        assert one.headers["x-modelyard-version"] == "bot:1"
    assert fleet.a.engine.answered == ["bot:1"] * 5
    assert fleet.b.engine.answered == ["bot:2"] * 5
    assert fleet.metric("modelyard_route_picks_total", reason="resident") == 10
    assert fleet.metric("modelyard_route_requests_total", replica=fleet.a.id, code="200") == 5
    # each server says what it holds, one series per cache slot
    scraped = httpx.get(f"{fleet.a.server.base_url}/metrics", timeout=10).text
    assert 'modelyard_adapter_resident{version="bot:1"} 1.0' in scraped
    assert 'modelyard_adapter_cache_hits_total{version="bot:1"}' not in scraped  # echo: no cache


def test_a_version_held_nowhere_goes_to_its_home_and_stays(fleet: Fleet) -> None:
    answers = [fleet.post("three") for _ in range(6)]
    assert {r.status_code for r in answers} == {200}
    assert len({r.headers["x-modelyard-replica"] for r in answers}) == 1  # one home
    assert fleet.metric("modelyard_route_picks_total", reason="home") >= 1
    # once it answered, the router knows the home holds it, before any heartbeat says so
    assert fleet.metric("modelyard_route_picks_total", reason="resident") >= 1


def test_a_stream_is_relayed_chunk_by_chunk(fleet: Fleet) -> None:
    words = "one two three four five six seven eight"
    body = {"model": "one", "stream": True, "max_tokens": 8, "prompt": words}
    arrivals, data = [], []
    started = time.monotonic()
    url, auth = f"{fleet.router.base_url}/v1/completions", f"Bearer {fleet.key}"
    with httpx.stream("POST", url, json=body, headers={"Authorization": auth}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
                data.append(line[6:])
    assert data[-1] == "[DONE]"
    assert len(data) >= 9  # a chunk per word, the last chunk, [DONE]
    # the replica says a word every 0.05 s: the first came well before the last
    assert arrivals[-1] - arrivals[0] >= 0.2, arrivals


def test_refusals_of_the_servers_pass_through_unchanged(fleet: Fleet) -> None:
    direct = fleet.a.server.base_url + "/v1/chat/completions"
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    for key in ("myk_not-a-key", fleet.key):  # 401, then 404 (an unknown endpoint)
        headers = {"Authorization": f"Bearer {key}"}
        routed = httpx.post(f"{fleet.router.base_url}/v1/chat/completions", json=body,
                            headers=headers, timeout=30)  # fmt: skip
        straight = httpx.post(direct, json=body, headers=headers, timeout=30)
        assert routed.status_code == straight.status_code
        assert routed.json() == straight.json()
        assert "x-modelyard-replica" not in routed.headers  # a refusal says nothing of routing
    assert routed.status_code == 404

    first, second = fleet.post("one", fleet.limited_key), fleet.post("one", fleet.limited_key)
    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) > 0
    assert second.json()["error"]["type"] == "requests"

    models = httpx.get(f"{fleet.router.base_url}/v1/models", timeout=30,
                       headers={"Authorization": f"Bearer {fleet.key}"})  # fmt: skip
    assert models.status_code == 200
    assert {m["id"] for m in models.json()["data"]} == {"one", "two", "three", "four"}


def test_a_dead_replica_is_retried_elsewhere_then_left_out(fleet: Fleet) -> None:
    assert fleet.post("one").headers["x-modelyard-replica"] == fleet.a.id
    fleet.a.kill()
    answers = [fleet.post("one") for _ in range(4)]
    assert {r.status_code for r in answers} == {200}, [(r.status_code, r.text) for r in answers]
    assert {r.headers["x-modelyard-replica"] for r in answers} == {fleet.b.id}
    # one refused connection, retried; then the replica is left out until a newer heartbeat
    assert fleet.metric("modelyard_route_failures_total", kind="connect") == 1
    assert fleet.metric("modelyard_route_picks_total", reason="retry") == 1

    until(
        "the dead replica's heartbeat to go stale",
        lambda: live(fleet.router) == 1,
        timeout_s=STALE_S + 15,
    )
    assert all(fleet.post(m).status_code == 200 for m in ("one", "two", "three"))
    assert fleet.metric("modelyard_route_failures_total", kind="connect") == 1


def test_a_draining_replica_gets_no_request_that_fails(fleet: Fleet) -> None:
    """A replica that begins draining between heartbeats answers 503 shutting_down: nothing
    ran there, so the router tries the other; then the heartbeat says it drains."""
    fleet.a.app.state.drain.begin(30)
    answers = [fleet.post("one") for _ in range(3)]
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["x-modelyard-replica"] for r in answers} == {fleet.b.id}
    assert fleet.metric("modelyard_route_failures_total", kind="draining") <= 1
    until("the drain in the heartbeat", lambda: live(fleet.router) == 1, timeout_s=15)


def test_a_connection_reset_before_any_answer_is_retried(fleet: Fleet) -> None:
    """A replica that drops the connection (killed while running the request) is retried."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    store = fleet.store
    store.heartbeat_server(
        "broken", address=f"127.0.0.1:{port}", hostname="localhost", pid=1, engine="echo",
        modelyard_version="0", started_at=utcnow(), ready=True, draining=False,
        state={"loaded": ["bot:4"]},
    )  # fmt: skip
    try:
        until("the broken replica in the router", lambda: live(fleet.router) == 3, timeout_s=15)
        answers = [fleet.post("four") for _ in range(3)]
        assert {r.status_code for r in answers} == {200}
        # tried once, then left out until a newer heartbeat (none comes)
        assert fleet.metric("modelyard_route_picks_total", reason="retry") == 1
        assert fleet.metric("modelyard_route_requests_total", replica="broken") == 0
    finally:
        listener.close()
        store.remove_server("broken")


def test_the_policy_prefers_holders_then_the_home_then_the_least_loaded() -> None:
    now = utcnow()
    a, b, c = (Replica(n, f"http://{n}", now) for n in "abc")
    policy = AdapterAffinity(max_imbalance=4)
    canary = Plan("support", (("bot:1", 90), ("bot:2", 10)))
    b.capacity = c.capacity = 2
    b.answered("bot:2")
    c.answered("bot:1")
    order, why = policy.order(canary, [a, b, c])
    assert (order[0], why) == (c, "resident")  # holds 90 of the plan's 100
    b.answered("bot:1")
    assert policy.order(canary, [a, b, c])[0][0] == b  # holds all 100
    b.inflight = 4
    order, why = policy.order(canary, [a, b, c])
    assert (order[0], why) == (c, "resident")  # b is busy: the next holder
    c.inflight = 4
    order, why = policy.order(canary, [a, b, c])
    assert (order[0], why) == (a, "least_loaded")
    b.inflight = c.inflight = 0
    home, why = policy.order(Plan("x", (("bot:9", 100),)), [a, b, c])
    assert why == "home"  # the same home whatever the order the replicas come in
    assert home[0] == policy.order(Plan("y", (("bot:9", 100),)), [c, a, b])[0][0]
    a.inflight = 1
    assert policy.order(None, [a, b, c])[1] == "least_loaded"
    assert policy.order(None, [a, b, c])[0][-1] == a


def test_the_route_command_relays_and_exits_0_on_sigterm(fleet: Fleet, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(tmp_path / "home"), "MODELYARD_STORE_URL": fleet.store.url}
    command = [sys.executable, "-m", "modelyard", "route", "--port", "0", "--refresh-s", "0.1"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as proc:
        _relay_then_drain(proc, fleet)


def _relay_then_drain(proc: subprocess.Popen[str], fleet: Fleet) -> None:
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        match = re.search(r"routing on (http://127\.0\.0\.1:\d+)", banner)
        assert match, banner
        url = match.group(1)
        until("the router to start", lambda: _ready(url), timeout_s=30)
        auth = {"Authorization": f"Bearer {fleet.key}"}
        body = {"model": "two", "prompt": "hi"}
        answer = httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=30)
        assert answer.status_code == 200
        assert answer.headers["x-modelyard-replica"] == fleet.b.id
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_router_listens_on_an_ipv6_address(tmp_path: Path) -> None:
    """Before: ``--host ::1`` was refused ("Address family for hostname not supported")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(tmp_path / "home"),
            "MODELYARD_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"}  # fmt: skip
    command = [sys.executable, "-m", "modelyard", "route", "--host", "::1", "--port", "0"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            banner = proc.stderr.readline()
            match = re.search(r"routing on (http://\[::1\]:\d+) ", banner)
            assert match, banner
            health = lambda: httpx.get(f"{match.group(1)}/health", timeout=2)  # noqa: E731
            until("the router to listen", lambda: _answers(health), timeout_s=30)
            assert health().json()["status"] == "ok"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0


def _answers(call: Callable[[], httpx.Response]) -> bool:
    try:
        return call().status_code == 200
    except httpx.TransportError:
        return False


def test_an_upload_larger_than_the_routers_body_cap_is_relayed_to_a_replica(
    tmp_path: Path,
) -> None:
    """A batch input of a few MiB goes through the router (whose cap on held bodies is
    1 MiB) as it arrives, to a replica; one over the router's --max-file-bytes (set as the
    replicas') is a 413 from its Content-Length, before its bytes are sent."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store, versions=1)
        _, key = create_api_key(store, "acme")
        artifacts = LocalArtifactStore(tmp_path / "artifacts")  # the replicas' shared one
        replicas = []
        for _ in range(2):
            app = create_app(store, Holding([]), refresh_seconds=0.2, heartbeat_s=0.2,
                             artifacts=artifacts, max_file_bytes=8 << 20)  # fmt: skip
            server = BackgroundServer(app)
            app.state.agent.address = f"127.0.0.1:{server.port}"
            replicas.append(server.start())
        router = BackgroundServer(create_route_app(store, RouteOptions(
            refresh_s=0.1, stale_after_s=STALE_S, max_body_bytes=1 << 20,
            max_file_bytes=8 << 20))).start()  # fmt: skip
        try:
            until("both replicas in the router", lambda: live(router) == 2, timeout_s=15)
            body = b"".join(b'{"custom_id": "r%07d"}\n' % i for i in range(200_000))  # 4.6 MB
            with openai.OpenAI(base_url=router.base_url + "/v1", api_key=key,
                               max_retries=0) as client:  # fmt: skip
                made = client.files.create(file=("big.jsonl", body), purpose="batch")
                assert made.bytes == len(body)
                assert client.files.content(made.id).content == body
                whole = b"x" * (8 << 20)  # the cap itself: its multipart framing is allowed
                assert client.files.create(file=("cap.jsonl", whole), purpose="batch").bytes == (
                    8 << 20
                )
                with pytest.raises(openai.APIStatusError) as refused:
                    client.files.create(file=("huge.jsonl", body * 2), purpose="batch")
            assert refused.value.status_code == 413
            assert "limit of 8388608 bytes (--max-file-bytes)" in refused.value.message

            def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it comes
                yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="c"\r\n\r\n'
                for _ in range(3):
                    yield body

            sent = {"Authorization": f"Bearer {key}",
                    "Content-Type": "multipart/form-data; boundary=b"}  # fmt: skip
            answer = httpx.post(
                router.base_url + "/v1/files", content=chunked(), headers=sent, timeout=30
            )
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["code"] == "request_too_large"
        finally:
            router.stop()
            for r in replicas:
                r.stop()


REFUSAL = ShuttingDown("this server is shutting down and takes no new requests")


class DrainingReplica:
    """A replica that began draining after its heartbeat (pure ASGI): it reads the whole
    body, then answers as a draining server does (its guard's 503 ``shutting_down``, with
    ``Retry-After``); ``bodies`` is the size of each body it read."""

    def __init__(self) -> None:
        self.bodies: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        self.bodies.append(size)
        await send_error(send, REFUSAL, [("connection", "close"), ("retry-after", "1")])


def test_an_upload_to_a_replica_that_began_draining_gets_its_503(tmp_path: Path) -> None:
    """Both replicas began draining since their heartbeat: the one tried reads the whole
    upload, then answers 503 shutting_down. The upload cannot go to another replica (its
    bytes were read from the client), so the client gets that 503 with its Retry-After,
    which the SDKs retry, not a 502 saying the replica broke off; the replica is left
    out of the retries, as one that drains is. (A replica that closes the connection
    before reading the body leaves no answer to relay: that is the 502.)"""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fakes, servers = [DrainingReplica(), DrainingReplica()], []
        for i, fake in enumerate(fakes):
            app = FastAPI()
            app.mount("/", fake)
            servers.append(BackgroundServer(app).start())
            store.heartbeat_server(
                f"draining-{i}", address=f"127.0.0.1:{servers[-1].port}", hostname="localhost",
                pid=os.getpid(), engine="echo", modelyard_version="0", started_at=utcnow(),
                ready=True, draining=False, state={"loaded": []},
            )  # fmt: skip
        router = BackgroundServer(create_route_app(store, RouteOptions(
            refresh_s=0.1, stale_after_s=60))).start()  # fmt: skip
        try:
            until("both replicas in the router", lambda: live(router) == 2, timeout_s=15)
            # larger than the sockets' buffers: the replica reads it all before it answers
            body = b"".join(b'{"custom_id": "r%07d"}\n' % i for i in range(100_000))
            with openai.OpenAI(base_url=router.base_url + "/v1", api_key="myk_any",
                               max_retries=0) as client:  # fmt: skip
                for attempt in (1, 2):
                    with pytest.raises(openai.APIStatusError) as refused:
                        client.files.create(file=("input.jsonl", body), purpose="batch")
                    error = refused.value
                    assert error.status_code == 503, (attempt, error.message)
                    assert error.code == "shutting_down"
                    assert error.response.json() == error_of(REFUSAL)  # as the replica said
                    assert error.response.headers.get("retry-after") == "1"
                    sent = int(error.response.request.headers["content-length"])
                    # one replica read the whole upload; the retry went to the other one
                    assert sorted(len(f.bodies) for f in fakes) == [attempt - 1, 1]
                    assert {b for f in fakes for b in f.bodies} == {sent}
                # both are left out until a newer heartbeat: no replica to send it to
                with pytest.raises(openai.APIStatusError) as refused:
                    client.files.create(file=("input.jsonl", body), purpose="batch")
            assert (refused.value.status_code, refused.value.code) == (503, "no_replica")
            assert [len(f.bodies) for f in fakes] == [1, 1]
        finally:
            router.stop()
            for server in servers:
                server.stop()
