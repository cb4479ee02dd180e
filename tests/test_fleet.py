"""A fleet, as issue 18 describes it: two `modelyard serve` replicas and one `modelyard
controller`, all separate processes, on one PostgreSQL store, with artifacts on an
S3-compatible server (moto's; MinIO is not installable here) and limits in one Redis.

- a key with a 60 requests/min limit gets about 60 accepted requests in total from the
  two replicas, not 120;
- a key with a budget is stopped by both replicas once it is spent, and the 80 % budget
  alert reaches the webhook (the controller runs the monitoring tick);
- a canary between two adapter versions (both served from S3) runs to the end while one
  replica is killed with kill -9 and started again, with zero failed requests on the
  replica that survived.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import artifacts_from_settings
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus
from modelyard.delivery import start_rollout
from modelyard.settings import load_settings
from modelyard.store import Store
from redisserver import redis_server
from tinymodels import QUICK_BASE, random_adapter
from worlds import gate_metrics

pytestmark = pytest.mark.slow


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Fleet:
    env: dict[str, str]
    home: Path
    store: Store
    redis_url: str
    replicas: list[Replica] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(fleet: Fleet, name: str, port: int | None = None) -> Replica:
    port = port or _free_port()
    log = fleet.home / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", "--engine", "transformers",
             "--port", str(port), "--no-controller", "--heartbeat-s", "0.5",
             "--refresh-seconds", "0.5", "--redis-url", fleet.redis_url,
             "--max-tokens-cap", "8"],
            env=fleet.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Replica(proc, f"http://127.0.0.1:{port}", log)


def _ready(replica: Replica, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert replica.proc.poll() is None, f"serve exited:\n{replica.output()}"
        try:
            if httpx.get(replica.url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"serve was not ready in {timeout} s:\n{replica.output()}")


def _complete(url: str, key: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        url + "/v1/completions",
        json={"model": "acme-support", "prompt": "printer on floor 3 is jammed",
              "max_tokens": 1, "temperature": 0},
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )  # fmt: skip


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def fleet(
    postgres_url: str, s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Fleet]:
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.setenv("MODELYARD_STORE_URL", postgres_url)
    monkeypatch.setenv("MODELYARD_ARTIFACTS", s3_url)
    from modelyard.cli import main

    assert main(["init"]) == 0  # the home, its audit key, the schema, the bucket checked
    root = tmp_path / "models"
    base = create_tiny_base(domain_corpus(DOMAINS, 120, seed=0), root / "base", **QUICK_BASE).path
    artifacts = artifacts_from_settings(load_settings())  # the S3 store
    with redis_server(tmp_path) as redis_srv, Store.open(postgres_url) as store:
        store.register_base_model("tiny", str(base), {})
        store.create_tenant("acme")
        store.create_registered_model("acme-bot", tenant="acme")
        for seed in (1, 2):  # into the bucket; gates passed, so a canary may start
            adapter = random_adapter(base, root / f"a{seed}", seed=seed)
            store.create_model_version(
                "acme-bot", kind="adapter", base_model="tiny", run_id=None,
                artifact_digest=artifacts.put_dir(adapter, kind="adapter").digest,
                lineage={"prompt_template": "alpaca"}, metrics=gate_metrics(True),
            )  # fmt: skip
        store.create_endpoint("acme-support", model_ref="acme-bot:1", tenant="acme")
        env = dict(os.environ)  # the home, the store, the bucket, boto3's settings
        fleet = Fleet(env, home, store, redis_srv.url)
        try:
            yield fleet
        finally:
            for proc in [r.proc for r in fleet.replicas] + fleet.others:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)


def test_two_replicas_share_limits_and_budgets_and_survive_a_kill_during_a_canary(
    fleet: Fleet,
) -> None:
    store = fleet.store
    one, two = _serve(fleet, "one"), _serve(fleet, "two")
    fleet.replicas += [one, two]
    _ready(one)
    _ready(two)
    urls = [one.url, two.url]

    # -- 60 requests a minute in total, not 60 each ------------------------------------
    _, limited = create_api_key(store, "acme", rpm_limit=60)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: _complete(urls[i % 2], limited).status_code,
                                 range(100)))  # fmt: skip
    elapsed = time.monotonic() - started
    accepted = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    assert 60 <= accepted <= 60 + math.ceil(elapsed) + 1, (accepted, elapsed)  # 1 a second

    # -- a budget both replicas stop at; the 80 % alert first --------------------------
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    (fleet.home / "alerts.yml").write_text(json.dumps({
        "notify": {"webhook": {"url": f"http://127.0.0.1:{hook.server_port}/hook"}},
        "rules": [{"name": "budget-80", "metric": "budget_used", "comparison": ">=",
                   "threshold": 0.8}],
    }))  # fmt: skip
    with (fleet.home / "controller.log").open("ab") as log:
        controller = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "controller", "--interval", "0.2"],
            env=fleet.env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    fleet.others.append(controller)
    try:
        budgeted, budgeted_key = create_api_key(store, "acme")
        store.set_token_price("tiny", input_per_1k=10.0, output_per_1k=10.0)
        first = _complete(one.url, budgeted_key)
        assert first.status_code == 200
        cost = (first.json()["usage"]["total_tokens"]) * 10.0 / 1000
        store.set_budget("acme", "day", cost * 5, key_id=budgeted.id)  # five requests' worth
        time.sleep(11)  # servers read budgets at most every 10 s
        answered = 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = _complete(urls[answered % 2], budgeted_key)
            if r.status_code == 429:
                break
            assert r.status_code == 200, r.text
            answered += 1
            time.sleep(0.3)  # the replicas' totals are charged just after each answer
        assert 5 <= answered <= 6, answered
        for url in urls:  # both replicas now refuse the key: the total is shared
            refused = _complete(url, budgeted_key)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "insufficient_quota"
        deadline = time.monotonic() + 60  # the controller's monitoring tick: every 15 s
        while not _Hook.received and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [m["status"] for m in _Hook.received][:1] == ["firing"], _Hook.received
        assert _Hook.received[0]["alert"]["labels"]["key"] == budgeted.id
    finally:
        hook.shutdown()
        hook.server_close()

    # -- a canary while replica one is killed and started again ------------------------
    _, key = create_api_key(store, "acme")
    failures: list[str] = []
    answers: list[str] = []
    stop = threading.Event()

    def traffic() -> None:  # on the replica that survives, bounded in time
        end = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < end:
            r = _complete(two.url, key)
            if r.status_code == 200:
                answers.append(r.headers["x-modelyard-version"])
            else:
                failures.append(f"{r.status_code} {r.text[:200]}")
            time.sleep(0.05)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        start_rollout(store, "acme-support", "acme-bot:2", steps="50,100", bake_s=2,
                      min_requests=5)  # fmt: skip
        deadline = time.monotonic() + 60  # the first step (50 %) applied: mid-canary
        while not _weights(store).get(2) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _weights(store) == {1: 50, 2: 50}, store.latest_rollout("acme-support")
        one.proc.send_signal(signal.SIGKILL)
        one.proc.wait(10)
        port = int(one.url.rsplit(":", 1)[1])
        again = _serve(fleet, "one-again", port)
        fleet.replicas.append(again)
        _ready(again)
        deadline = time.monotonic() + 150
        while store.latest_rollout("acme-support").active and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        sender.join(60)
    rollout = store.latest_rollout("acme-support")
    assert rollout.status == "succeeded", (rollout.status, rollout.reason)
    assert _weights(store) == {2: 100}
    assert failures == [], failures[:5]
    assert "acme-bot:2" in answers and len(answers) >= 10
    assert _complete(again.url, key).headers["x-modelyard-version"] == "acme-bot:2"


def _weights(store: Store) -> dict[int, int]:
    return {r.version: r.weight for r in store.get_endpoint("acme-support").routes if r.weight}
