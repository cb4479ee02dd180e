"""Live traffic beside an OpenAI batch: does a running batch slow a tenant's live requests?

One run, the echo engine, each setting served by a process of its own on 127.0.0.1
(``create_app`` + ``BackgroundServer``, ``--batch-concurrency 16``), the load from this
process (``httpx``, one client asking chat completions one after the other as tenant
``globex``, while tenant ``acme``'s batch of chat completions runs):

- **alone**: live p50/p99 with no batch;
- **busy 16**: live p50/p99 beside a batch with ``--batch-concurrency-busy 16`` (batches
  do not yield: the behaviour before the setting), and the batch's lines/s meanwhile;
- **busy 1**: the same with ``--batch-concurrency-busy 1`` (the default);
- each batch's lines/s with no live traffic.

A batch's lines/s are the lines the engine was asked (the batch of 20,000 lines runs
through every load and is cancelled after), not the lines committed: the work the
replica did for the batch.

Every load is bounded in time and count; every process started is stopped. A
measurement, not a test: it exits 0 whatever it measures.

    .venv/bin/python benchmarks/openai_batch_priority.py            # about a minute
    .venv/bin/python benchmarks/openai_batch_priority.py --seconds 3  # shorter loads
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

BATCH_LINES = 20_000
MAX_LIVE = 2_000


def _serve(home: str, busy: int, conn: Connection) -> None:
    """The child: a store, two tenants, the app with batches; stop at a word from ``conn``."""
    from modelyard.access import create_api_key
    from modelyard.artifacts import LocalArtifactStore
    from modelyard.serving import BackgroundServer, BatchSettings, EchoEngine, create_app
    from modelyard.store import Store

    class Counting(EchoEngine):
        """The echo engine, counting the batch's lines it was asked."""

        asked = 0

        def stream(self, version: Any, prompt: str, params: Any) -> Any:
            if "a batch line" in prompt:
                self.asked += 1
            return super().stream(version, prompt, params)

    with Store.open(f"sqlite:///{home}/store.db") as store:
        store.register_base_model("tiny", "/models/tiny", {})
        keys = {}
        for tenant in ("acme", "globex"):
            store.create_tenant(tenant, storage_policy="full")
            store.create_registered_model(f"{tenant}-bot", tenant=tenant)
            store.create_model_version(
                f"{tenant}-bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
                run_id=None, lineage={"prompt_template": "alpaca"}, metrics={},
            )  # fmt: skip
            store.create_endpoint(f"{tenant}-support", model_ref=f"{tenant}-bot:1", tenant=tenant)
            keys[tenant] = create_api_key(store, tenant, scopes=("infer",))[1]
        engine = Counting()
        app = create_app(
            store, engine, heartbeat_s=None, artifacts=LocalArtifactStore(Path(home) / "a"),
            batches=BatchSettings(concurrency=16, concurrency_busy=busy, poll_s=0.2),
        )  # fmt: skip
        with BackgroundServer(app) as server:
            conn.send({"url": server.base_url, "keys": keys})
            while conn.recv() == "asked":
                conn.send(engine.asked)


def _live(url: str, key: str, seconds: float) -> list[float]:
    """Chat completions one after the other for ``seconds`` (at most ``MAX_LIVE``): ms each."""
    body = {"model": "globex-support", "messages": [{"role": "user", "content": "hi there"}],
            "max_tokens": 8}  # fmt: skip
    took: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(took) < MAX_LIVE:
            start = time.perf_counter()
            client.post("/v1/chat/completions", json=body, timeout=30).raise_for_status()
            took.append((time.perf_counter() - start) * 1000)
    return took


def _pct(took: list[float], q: int) -> float:
    return statistics.quantiles(took, n=100)[q - 1] if len(took) > 1 else float("nan")


def _asked(conn: Connection) -> int:
    conn.send("asked")
    return int(conn.recv())


def _rate(conn: Connection, seconds: float) -> float:
    """The batch's lines the engine was asked a second over ``seconds`` (its commits wait
    for the record writer: the work done is what the engine saw)."""
    first, start = _asked(conn), time.monotonic()
    time.sleep(seconds)
    return (_asked(conn) - first) / (time.monotonic() - start)


def _setting(busy: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=_serve, args=(home, busy, theirs))
        child.start()
        try:
            assert mine.poll(60), "the server did not start"
            started = mine.recv()
            url, keys = started["url"], started["keys"]
            alone = _live(url, keys["globex"], seconds)
            auth = {"Authorization": f"Bearer {keys['acme']}"}
            with httpx.Client(base_url=url + "/v1", headers=auth, timeout=30) as acme:
                ask = {"model": "acme-support", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "a batch line"}]}  # fmt: skip
                line = {"method": "POST", "url": "/v1/chat/completions", "body": ask}
                data = "".join(json.dumps(line | {"custom_id": f"c{i}"}) + "\n"
                               for i in range(BATCH_LINES))  # fmt: skip
                files = {"file": ("in.jsonl", io.BytesIO(data.encode()))}
                file_id = acme.post("/files", data={"purpose": "batch"}, files=files).json()["id"]
                batch_id = acme.post("/batches", json={"input_file_id": file_id,
                                     "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"}).json()["id"]  # fmt: skip
                deadline = time.monotonic() + 30
                while _asked(mine) == 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                batch_alone = _rate(mine, seconds)
                first, start = _asked(mine), time.monotonic()
                beside = _live(url, keys["globex"], seconds)
                batch_beside = (_asked(mine) - first) / (time.monotonic() - start)
                acme.post(f"/batches/{batch_id}/cancel")
        finally:
            mine.send("stop")
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()
    return {
        "busy": busy, "alone_p50": _pct(alone, 50), "alone_p99": _pct(alone, 99),
        "beside_p50": _pct(beside, 50), "beside_p99": _pct(beside, 99), "live_n": len(beside),
        "batch_alone": batch_alone, "batch_beside": batch_beside,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="each load's length")
    args = parser.parse_args()
    rows = [_setting(busy, args.seconds) for busy in (16, 1)]
    print("batch-concurrency 16; live: one client, one request after the other (ms)")
    print(f"{'busy':>5} {'alone p50/p99':>15} {'beside p50/p99':>16} {'x p50':>6} {'x p99':>6} "
          f"{'batch lines/s alone':>20} {'beside live':>12}")  # fmt: skip
    for r in rows:
        print(
            f"{r['busy']:>5} {r['alone_p50']:>7.1f}/{r['alone_p99']:<7.1f} "
            f"{r['beside_p50']:>8.1f}/{r['beside_p99']:<7.1f} "
            f"{r['beside_p50'] / r['alone_p50']:>6.1f} {r['beside_p99'] / r['alone_p99']:>6.1f} "
            f"{r['batch_alone']:>20.0f} {r['batch_beside']:>12.0f}"
        )


if __name__ == "__main__":
    main()
