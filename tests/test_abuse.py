"""The request path under abuse: cheap checks before costly ones, refusals counted and only
sampled into the store, unknown endpoint names answered without hammering the store, a store
outage answered 503 (and /ready 503), credentials in a URL refused and never logged, and
/metrics and the API docs closed to tenants when the operator says so.

What is timed (the other tenant's p99 under a flood, memory) is in ``benchmarks/abuse.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    OperatorAccess,
    Router,
    ServerLimits,
    create_app,
    create_metrics_app,
)
from modelyard.store import ModelVersion, Store
from worlds import fake_world, two_tenant_world


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as s:
        two_tenant_world(s, versions=1, template="text")
        yield s


def _records_settled(store: Store) -> int:
    """The number of inference records once the writer has stopped adding them."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 0.5:
        now = store.count_inference_records()
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.05)
    return last


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_refusals_are_counted_and_only_a_sample_is_stored_shortened(store: Store) -> None:
    limits = ServerLimits(
        max_body_bytes=200_000, max_prompt_chars=10_000, refusals_stored_per_minute=3
    )
    app = create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    _, limited = create_api_key(store, "acme", rpm_limit=2)
    _, flooder = create_api_key(store, "globex")
    huge = "word " * 30_000  # 150,000 characters: under the body cap, over the prompt cap
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:

        def complete(key: str, prompt: str, model: str = "acme-support") -> httpx.Response:
            return http.post(
                "/v1/completions",
                json={"model": model, "prompt": prompt, "max_tokens": 4},
                headers={"Authorization": f"Bearer {key}"},
            )

        before = _records_settled(store)
        statuses = [complete(limited, "a b").status_code for _ in range(22)]
        assert statuses == [200, 200] + [429] * 20
        too_long = [complete(flooder, huge, "globex-support") for _ in range(20)]
        assert {r.status_code for r in too_long} == {400}
        error = too_long[0].json()["error"]
        assert "10000 prompt characters (--max-prompt-chars)" in error["message"]
        assert error["param"] == "prompt"
        too_big = http.post(
            "/v1/completions",
            content=json.dumps({"model": "globex-support", "prompt": "w " * 150_000}),
            headers={"Authorization": f"Bearer {flooder}", "Content-Type": "application/json"},
        )
        assert too_big.status_code == 413
        assert "200000 bytes (--max-body-bytes)" in too_big.json()["error"]["message"]
        metrics = http.get("/metrics").text

    # 2 answered + at most 3 refusals stored per key per minute; never 40 rows
    added = _records_settled(store) - before
    assert added <= 2 + 3 + 3, added
    records = store.list_inference_records(limit=1000)
    refused = [r for r in records if r.http_status in (400, 429)]
    assert {r.http_status for r in refused} == {400, 429}
    assert all(r.prompt is None or len(r.prompt) < 400 for r in records)  # shortened
    assert not any(r.prompt and huge in r.prompt for r in records)
    assert any(r.prompt and "150000 characters, sha256" in r.prompt for r in refused)
    # every refusal is counted, by tenant and reason
    assert _metric(metrics, "modelyard_refused_total", tenant="acme", reason="rate_limit_exceeded")
    assert (
        _metric(metrics, "modelyard_refused_total", tenant="acme", reason="rate_limit_exceeded")
        == 20
    )
    assert (
        _metric(metrics, "modelyard_refused_total", tenant="globex", reason="invalid_config") == 20
    )
    assert _metric(metrics, "modelyard_refused_total", tenant="", reason="request_too_large") == 1


def test_the_prompt_is_not_tokenized_when_the_key_is_over_its_requests(store: Store) -> None:
    class Counting(EchoEngine):
        counted = 0

        def count_tokens(self, version: object, prompt: str) -> int:
            Counting.counted += 1
            return len(prompt.split())

    app = create_app(store, Counting(), refresh_seconds=60, heartbeat_s=None)
    _, key = create_api_key(store, "acme", rpm_limit=1)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "acme-support", "prompt": "a b", "max_tokens": 2}
    with BackgroundServer(app) as server:
        assert httpx.post(server.base_url + "/v1/completions", json=body, headers=auth).is_success
        for _ in range(5):
            r = httpx.post(server.base_url + "/v1/completions", json=body, headers=auth)
            assert r.status_code == 429
    assert Counting.counted == 1


def test_unknown_names_reload_the_store_at_most_once_per_interval(store: Store) -> None:
    router = Router(store, refresh_seconds=60)
    router.refresh()
    _, raw = create_api_key(store, "acme")
    from modelyard.access import authenticate

    key = authenticate(store, raw)
    time.sleep(0.25)  # past the snapshot's freshness: the first unknown name may reload
    before = router.reloads
    for name in [f"nope-{uuid.uuid4().hex}" for _ in range(50)] + ["globex-support"] * 50:
        with pytest.raises(Exception, match="does not exist or you do not have access"):
            router.route(name, key)
    assert router.reloads - before <= 1
    # a brand-new endpoint still answers at once when no unknown name reloaded lately
    fresh = Router(store, refresh_seconds=60)
    fresh.refresh()
    time.sleep(0.25)
    [version] = store.list_model_versions("acme-bot")
    store.create_endpoint("acme-new", model_ref=version.ref, tenant="acme")
    assert fresh.route("acme-new", key).endpoint.name == "acme-new"


def test_a_store_outage_answers_503_and_ready_turns_503_until_it_returns(tmp_path: Path) -> None:
    where = tmp_path / "store"
    where.mkdir()
    store = Store.open(f"sqlite:///{where / 's.db'}")
    fake_world(store)
    _, key = create_api_key(store, "acme")
    limits = ServerLimits(key_cache_seconds=0)
    app = create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "support", "prompt": "a b", "max_tokens": 2}
    try:
        with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:
            assert http.get("/ready").status_code == 200
            assert http.post("/v1/completions", json=body, headers=auth).status_code == 200
            moved = tmp_path / "away"
            where.rename(moved)  # the database cannot be reached any more
            store.close()
            r = http.post("/v1/completions", json=body, headers=auth)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
            deadline = time.monotonic() + 10
            while (ready := http.get("/ready")).status_code != 503:
                assert time.monotonic() < deadline, "/ready never turned 503"
                time.sleep(0.1)
            assert ready.json() == {"ready": False, "store": "unreachable"}  # no path, no host
            assert str(tmp_path) not in r.text
            moved.rename(where)  # back
            deadline = time.monotonic() + 10
            while http.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, "/ready never came back"
                time.sleep(0.1)
            assert http.post("/v1/completions", json=body, headers=auth).status_code == 200
    finally:
        if not where.exists() and (tmp_path / "away").exists():
            shutil.move(str(tmp_path / "away"), str(where))
        store.close()


def test_a_key_in_the_url_is_refused_and_never_logged(
    store: Store, capfd: pytest.CaptureFixture[str]
) -> None:
    _, key = create_api_key(store, "acme")
    app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None)
    with BackgroundServer(app, access_log=True) as server:  # uvicorn's access log, on stdout
        r = httpx.get(f"{server.base_url}/v1/models?api_key={key}&limit=2")
        time.sleep(0.2)  # the access line is written after the response
    assert r.status_code == 401
    assert "send 'Authorization: Bearer <key>' instead" in r.json()["error"]["message"]
    assert "'api_key'" in r.json()["error"]["message"]
    out, err = capfd.readouterr()
    assert "/v1/models?api_key=[redacted]&limit=2" in out + err
    assert key not in out + err and key.split("_")[-1] not in out + err


def test_metrics_and_docs_need_the_operator_token_and_never_an_api_key(store: Store) -> None:
    _, key = create_api_key(store, "acme")
    access = OperatorAccess(metrics="token", docs="token", token="operator-secret")
    app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None, access=access)
    closed = create_app(
        store, EchoEngine(), refresh_seconds=60, heartbeat_s=None,
        access=OperatorAccess(metrics="off", docs="off"),
    )  # fmt: skip
    operator = {"Authorization": "Bearer operator-secret"}
    tenant = {"Authorization": f"Bearer {key}"}
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            assert http.get(path).status_code == 401, path
            refused = http.get(path, headers=tenant)
            assert refused.status_code == 401, path
            assert "operator token" in refused.json()["error"]["message"]
            assert http.get(path, headers=operator).status_code == 200, path
        assert "modelyard_requests" in http.get("/metrics", headers=operator).text
        assert http.get("/ready").status_code == 200  # probes stay open
    with (
        BackgroundServer(closed) as server,
        BackgroundServer(create_metrics_app(closed, "operator-secret")) as metrics,
    ):
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(server.base_url + path).status_code == 404, path
        assert httpx.get(metrics.base_url + "/metrics").status_code == 401
        scraped = httpx.get(metrics.base_url + "/metrics", headers=operator)
        assert scraped.status_code == 200 and "modelyard_requests" in scraped.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_puts_metrics_on_their_own_port_behind_the_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    refused = modelyard("serve", "--engine", "echo", "--docs", "token", home=home)
    assert refused.code != 0 and "--docs token needs an operator token" in refused.err
    assert "Traceback" not in refused.err
    port, metrics_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(MODELYARD_HOME=str(home), MODELYARD_METRICS_TOKEN="operator-secret")
    args = ["--engine", "echo", "--port", str(port), "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", *args, "--no-controller"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(api + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        assert httpx.get(api + "/metrics").status_code == 404
        assert httpx.get(api + "/docs").status_code == 404  # --docs off by default
        assert httpx.get(metrics + "/metrics").status_code == 401
        scraped = httpx.get(
            metrics + "/metrics", headers={"Authorization": "Bearer operator-secret"}
        )
        assert scraped.status_code == 200 and "modelyard_refused_total" in scraped.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_one_tenant_cannot_hold_every_worker_thread_with_slow_prompts(store: Store) -> None:
    release = threading.Event()
    lock = threading.Lock()
    inside = {"now": 0, "most": 0}

    class SlowForAcme(EchoEngine):
        """Tokenizing an acme prompt blocks until released (a huge prompt, say)."""

        def count_tokens(self, version: ModelVersion, prompt: str) -> int:
            if version.model == "acme-bot":
                with lock:
                    inside["now"] += 1
                    inside["most"] = max(inside["most"], inside["now"])
                release.wait(30)
                with lock:
                    inside["now"] -= 1
            return len(prompt.split())

    limits = ServerLimits(tokenize_concurrency=2)
    app = create_app(store, SlowForAcme(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    _, acme = create_api_key(store, "acme")
    _, globex = create_api_key(store, "globex")

    def complete(key: str, model: str) -> int:
        body = {"model": model, "prompt": "a b", "max_tokens": 2}
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(
            base + "/v1/completions", json=body, headers=headers, timeout=60
        ).status_code

    with BackgroundServer(app) as server, ThreadPoolExecutor(8) as pool:
        base = server.base_url
        flood = [pool.submit(complete, acme, "acme-support") for _ in range(6)]
        deadline = time.monotonic() + 10
        while inside["now"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        # acme holds its 2 slots, 4 more wait; globex is answered meanwhile
        assert complete(globex, "globex-support") == 200
        assert inside["most"] == 2 and not any(f.done() for f in flood)
        release.set()
        assert [f.result() for f in flood] == [200] * 6
    assert inside["most"] == 2


def test_a_postgresql_outage_answers_503_and_ready_follows_it(postgres_url: str) -> None:
    from sqlalchemy import create_engine, make_url, text

    name = make_url(postgres_url).database
    admin = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )

    def allow(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(on).lower()}'))
            if not on:  # and cut the connections the server's pool holds
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )

    store = Store.open(postgres_url)
    fake_world(store)
    _, key = create_api_key(store, "acme")
    limits = ServerLimits(key_cache_seconds=0)
    app = create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "support", "prompt": "a b", "max_tokens": 2}
    try:
        with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:
            assert http.get("/ready").status_code == 200
            assert http.post("/v1/completions", json=body, headers=auth).status_code == 200
            allow(False)
            r = http.post("/v1/completions", json=body, headers=auth)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
            deadline = time.monotonic() + 10
            while http.get("/ready").status_code != 503:
                assert time.monotonic() < deadline, "/ready never turned 503"
                time.sleep(0.1)
            allow(True)
            deadline = time.monotonic() + 10
            while http.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, "/ready never came back"
                time.sleep(0.1)
            assert http.post("/v1/completions", json=body, headers=auth).status_code == 200
    finally:
        allow(True)
        store.close()
        admin.dispose()
