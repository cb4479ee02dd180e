"""Progressive delivery through real servers: shadow traffic, fallback, blue-green, zero downtime.

A tiny Llama base and LoRA adapters with random weights on the transformers and
the vllm engines (one of them tampered after registration, so it cannot load), served
on 127.0.0.1 and called through the official openai client while the
controller moves the traffic plan.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus
from modelyard.delivery import Controller, abort_rollout, start_rollout
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    Engine,
    TransformersEngine,
    VLLMEngine,
    VLLMOptions,
    create_app,
)
from modelyard.store import Store
from tinymodels import QUICK_BASE, random_adapter, tamper
from waiting import until
from worlds import fake_world, gate_metrics


@dataclass
class Yard:
    tmp: Path
    base: Path
    artifacts: ArtifactStore
    digests: list[str]  # three good adapters
    tampered: str  # its stored weights changed after it was put


@pytest.fixture(scope="module")
def yard(tmp_path_factory: pytest.TempPathFactory) -> Yard:
    tmp = tmp_path_factory.mktemp("delivery")
    base = create_tiny_base(domain_corpus(DOMAINS, 200, seed=0), tmp / "base", **QUICK_BASE).path
    artifacts = ArtifactStore(tmp / "artifacts")
    digests = [
        artifacts.put_dir(
            random_adapter(base, tmp / f"a{i}", seed=i, lora_alpha=32), kind="adapter"
        ).digest
        for i in range(3)
    ]
    tampered = artifacts.put_dir(random_adapter(base, tmp / "t", seed=7), kind="adapter").digest
    tamper(artifacts, tampered)
    return Yard(tmp, base, artifacts, digests, tampered)


def _register(store: Store, yard: Yard) -> None:
    store.register_base_model("tiny", str(yard.base), {})
    store.create_tenant("acme")
    store.create_registered_model("bot", tenant="acme")
    for digest in [*yard.digests, yard.tampered]:  # versions 1-3 good, 4 cannot load
        store.create_model_version(
            "bot", kind="adapter", artifact_digest=digest, base_model="tiny", run_id=None,
            lineage={"prompt_template": "alpaca"}, metrics=gate_metrics(True),
        )  # fmt: skip
    store.create_endpoint("support", model_ref="bot:1", tenant="acme")


@dataclass
class Load:
    """Clients sending requests until stopped (bounded by ``max_seconds``)."""

    client: openai.OpenAI
    clients: int = 3
    max_seconds: float = 120.0
    # (when the request was sent, its answer's version header): a request sent before the
    # plan changed may be answered well after it on a loaded machine, by the old plan
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                raw = self.client.completions.with_raw_response.create(
                    model="support", prompt="### Instruction:\nroute this\n\n### Response:\n",
                    max_tokens=2, temperature=0,
                )  # fmt: skip
                self.answers.append((sent, raw.headers["x-modelyard-version"]))
            except openai.APIError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def since(self, t0: float) -> Counter[str]:
        """The versions that answered the requests sent at ``t0`` or later."""
        return Counter(v for t, v in list(self.answers) if t >= t0)

    def only(self, version: str, t0: float) -> bool | NotYet:
        """True once every answer to the requests sent since ``t0``, or in the last 2 s if
        that is later, came from ``version`` (and one did); else what was seen, for the
        failure's message. The last 2 s: a server that took the new plan more than 0.5 s
        after the change (a loaded CI machine) answered a few requests with the old one,
        and a window fixed at the change would hold them for good."""
        seen = self.since(max(t0, time.monotonic() - 2.0))
        if set(seen) == {version}:
            return True
        alive = sum(t.is_alive() for t in self._threads)
        return NotYet(seen, self.failures[-3:], alive, len(self.answers))


@dataclass
class NotYet:
    """A falsy answer to ``until`` that says what the load saw instead."""

    seen: Counter[str]
    last_failures: list[str]
    clients_alive: int
    answers_in_all: int

    def __bool__(self) -> bool:
        return False


@pytest.fixture(params=["transformers", "vllm"])
def served(
    yard: Yard, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Store, openai.OpenAI]]:
    """The scenario's server on each engine: the embedded one, and vLLM servers it starts."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url) as store, Store.open(url) as controller_store:
        _register(store, yard)
        _, key = create_api_key(store, "acme")
        engine: Engine
        if request.param == "vllm":
            options = VLLMOptions(python=request.getfixturevalue("vllm_python"), kv_cache_gb=1,
                                  max_model_len=256, max_num_seqs=8)  # fmt: skip
            engine = VLLMEngine(yard.artifacts, options, store=store, log_dir=tmp_path / "logs")
            assert engine.warm(store.get_model_version("bot", 1), 240), "vLLM did not start"
        else:
            engine = TransformersEngine(yard.artifacts, batch_window_ms=2, store=store)
        app = create_app(
            store, engine, refresh_seconds=0.1, heartbeat_s=0.2,
            controller=Controller(controller_store, stale_after_s=5), controller_interval_s=0.1,
        )  # fmt: skip
        try:
            with (
                BackgroundServer(app) as server,
                openai.OpenAI(
                    base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=30
                ) as client,
            ):
                yield store, client
        finally:
            engine.close()


@pytest.mark.slow
def test_zero_downtime_through_canary_blue_green_abort_and_rollback(
    served: tuple[Store, openai.OpenAI],
) -> None:
    store, client = served
    until("the server's heartbeat", lambda: store.list_servers(alive=True))
    with Load(client) as load:
        until("traffic", lambda: len(load.answers) >= 10)
        assert set(load.since(0)) == {"bot:1"}

        # 1. canary 1 → 2 in two steps
        start_rollout(store, "support", "bot:2", steps="50,100", bake_s=0.5, min_requests=5)
        until("the canary", lambda: not store.latest_rollout("support").active)
        canary = store.latest_rollout("support")
        assert canary.status == "succeeded", canary.reason
        t_canary = time.monotonic()
        assert [e.kind for e in canary.events] == ["started", "step", "step", "succeeded"]

        # 2. blue-green 2 → 3: loaded and smoke-tested on the server, then one switch
        until("version 2 alone", lambda: load.only("bot:2", t_canary + 0.5))
        start_rollout(store, "support", "bot:3", steps="100", bake_s=0.3, min_requests=5)
        until("the switch", lambda: not store.latest_rollout("support").active)
        bg = store.latest_rollout("support")
        assert bg.status == "succeeded" and bg.strategy == "blue_green", bg.reason
        started = bg.events[0].detail
        assert started["steps"] == [100]
        [server] = store.list_servers(alive=True)
        assert server.prepared == {} or all(p["ok"] for p in server.prepared.values())
        t_bg = time.monotonic()

        # 3. a canary aborted by an operator: the previous plan comes back
        until("version 3 alone", lambda: load.only("bot:3", t_bg + 0.5))
        start_rollout(store, "support", "bot:1", steps="50,100", bake_s=600, min_requests=5)
        t_abort = time.monotonic()
        until("the 50% step", lambda: {"bot:1", "bot:3"} <= set(load.since(t_abort)))
        abort_rollout(store, "support", "testing the abort")
        t_aborted = time.monotonic()
        until("version 3 again", lambda: load.only("bot:3", t_aborted + 0.5))

        # 4. a version that cannot load is rolled back by itself, before any request
        start_rollout(store, "support", "bot:4", steps="10,100", bake_s=1, min_requests=5)
        until("the rollback", lambda: not store.latest_rollout("support").active)
        bad = store.latest_rollout("support")
        assert bad.status == "rolled_back"
        assert bad.outcome["breach"]["kind"] == "load_failure"
        assert "do not match their manifest" in str(bad.outcome["breach"]["servers"])
        time.sleep(0.5)
    assert load.failures == []
    assert "bot:4" not in {v for _, v in load.answers}
    assert {e.subject for e in store.list_audit_events(action="rollout.rolled_back")} == {"support"}


@pytest.mark.slow
def test_requests_for_a_version_that_cannot_load_fall_back_to_the_plans_others(
    served: tuple[Store, openai.OpenAI],
) -> None:
    store, client = served
    store.set_traffic("support", {1: 50, 4: 50})  # by hand: no rollout, no preparation
    with Load(client, clients=2) as load:
        until("40 answers", lambda: len(load.answers) >= 40)
    assert load.failures == []
    assert set(load.since(0)) == {"bot:1"}
    store.set_traffic("support", {1: 100})
    time.sleep(0.5)
    records = store.list_inference_records(endpoint="support", limit=500)
    fell_back = [r for r in records if r.fallback_from == "bot:4"]
    assert fell_back and all(r.version == "bot:1" and r.status == "ok" for r in fell_back)
    [server] = store.list_servers(alive=True)
    assert "bot:4" in server.failures


@contextlib.contextmanager
def _shadowed(tmp_path: Path, plan: dict[int, int]) -> Iterator[tuple[Store, openai.OpenAI]]:
    """Endpoint ``support`` with ``plan`` and version 2 as its shadow for every request, an
    echo server, and a client of acme's."""
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        fake_world(store, template="text")
        store.set_traffic("support", plan)
        store.set_shadow("support", 2, 1.0)
        _, key = create_api_key(store, "acme")
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, heartbeat_s=None)
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
        ):
            yield store, client


def test_shadow_traffic_is_recorded_but_never_returned(tmp_path: Path) -> None:
    with _shadowed(tmp_path, {1: 100}) as (store, client):
        ids = []
        for i in range(5):
            raw = client.completions.with_raw_response.create(
                model="support", prompt=f"ticket {i}", max_tokens=4
            )
            assert raw.headers["x-modelyard-version"] == "bot:1"
            ids.append(raw.parse().id)
        until("10 records", lambda: store.count_inference_records(endpoint="support") >= 10)
        records = store.list_inference_records(endpoint="support")
    live = [r for r in records if not r.shadow]
    shadow = [r for r in records if r.shadow]
    assert sorted(r.id for r in live) == sorted(ids)
    assert {r.version for r in live} == {"bot:1"} and {r.version for r in shadow} == {"bot:2"}
    assert len(shadow) == 5 and not {r.id for r in shadow} & set(ids)
    assert sorted(r.prompt for r in shadow) == sorted(r.prompt for r in live)


def test_a_shadow_in_the_plan_too_mirrors_only_what_the_others_answered(tmp_path: Path) -> None:
    """A canary version can also be the shadow: it gets copies of the requests the others
    answered (compared on the same prompts), never a second copy of its own answers."""
    with _shadowed(tmp_path, {1: 50, 2: 50}) as (store, client):
        answered: dict[str, str] = {}
        for i in range(16):
            raw = client.completions.with_raw_response.create(
                model="support", prompt=f"ticket {i}", max_tokens=4
            )
            answered[raw.parse().id] = raw.headers["x-modelyard-version"]
        by_one = [i for i, v in answered.items() if v == "bot:1"]
        assert by_one and len(by_one) < 16  # both versions answered some
        want = 16 + len(by_one)
        until(f"{want} records", lambda: store.count_inference_records(endpoint="support") >= want)
        time.sleep(0.3)  # a wrong extra shadow record would land by now
        records = store.list_inference_records(endpoint="support", limit=100)
    shadow = [r for r in records if r.shadow]
    assert sorted(r.id for r in shadow) == sorted(f"{i}-shadow" for i in by_one)
    assert {r.version for r in shadow} == {"bot:2"}
