"""Adapter-aware routing: the adapter cache hit rate with `modelyard route` vs round-robin.

One run, one tiny base, 64 LoRA adapters (distinct random weights) each behind
its own endpoint, 2 replicas (the real app, ``create_app`` on a
``TransformersEngine`` with an adapter cache of 8, writing heartbeats to one
SQLite store) and the real router (``create_route_app``) in front of them, all
on 127.0.0.1 in this process. The same random sequence of requests over the 64
endpoints goes through the router twice, on fresh replicas each time:

- **routing**: ``--policy adapter``, each request to the replica that holds the
  endpoint's adapter, else its home (rendezvous hashing), else the least loaded;
- **round-robin**: ``--policy round-robin``, what a plain load balancer does.

The hit rate is the replicas' own count (``EngineStats.adapter_hits`` over hits
and misses; the same counters as ``modelyard_adapter_cache_hits_total``) after a
warm-up that is not counted. Two workloads: every endpoint equally likely
(uniform), and a Zipf popularity (s = 1, a few hot adapters and a long tail). The
result is the ratio routing / round-robin per workload (target > 1: the issue's
done-when). A measurement, not a test: it exits 0 whether or not a target is met.

    .venv/bin/python benchmarks/routing.py           # about 3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/routing.py --quick   # smoke test, under a minute
    .venv/bin/python benchmarks/routing.py --json    # JSON on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch
import transformers
from _machine import leave
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore, LocalArtifactStore
from modelyard.base import create_tiny_base, load_base
from modelyard.data import DOMAINS, domain_corpus
from modelyard.routing import RouteOptions, create_route_app
from modelyard.serving import BackgroundServer, EngineStats, TransformersEngine, create_app
from modelyard.store import Store

ADAPTERS = 64
REPLICAS = 2
CACHE = 8
TENANT = "bench"
WORKLOADS = ("uniform", "zipf")
POLICIES = {"routing": "adapter", "round-robin": "round-robin"}

Say = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    warmup: int  # requests sent first, not counted
    requests: int  # requests counted
    concurrency: int
    max_tokens: int
    heartbeat_s: float
    seed: int = 0


FULL = Config(warmup=256, requests=1024, concurrency=4, max_tokens=2, heartbeat_s=0.5)
# a smoke test: both policies on both workloads, few requests (hit rates, not their precision)
QUICK = Config(warmup=32, requests=96, concurrency=4, max_tokens=1, heartbeat_s=0.5)


@dataclass(frozen=True)
class Run:
    workload: str
    policy: str
    requests: int
    hits: int
    misses: int
    per_replica: tuple[int, ...]  # requests each replica answered (counted part)
    seconds: float
    errors: int

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)


@dataclass
class World:
    store: Store
    artifacts: ArtifactStore
    key: str


def build_world(work: Path, say: Say) -> World:
    say("building a tiny base (hidden 32, 2 layers)")
    info = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), work / "base", vocab_size=512,
                            hidden_size=32, layers=2, heads=2, max_positions=256, steps=2,
                            batch_size=8, seed=0)  # fmt: skip
    say(f"{ADAPTERS} random LoRA adapters (r 4), one endpoint each")
    model = load_base(info.path)[0]
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    wrapped = get_peft_model(model, config)
    lora = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    artifacts = LocalArtifactStore(work / "artifacts")
    store = Store.open(f"sqlite:///{work / 'store.db'}")
    store.register_base_model("tiny", str(info.path), {})
    store.create_tenant(TENANT)
    store.create_registered_model("bot", tenant=TENANT)
    for i in range(ADAPTERS):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in lora:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        wrapped.save_pretrained(work / "adapters" / f"{i:02d}")
        digest = artifacts.put_dir(work / "adapters" / f"{i:02d}", kind="adapter").digest
        version = store.create_model_version(
            "bot", kind="adapter", artifact_digest=digest, base_model="tiny", run_id=None,
            lineage={"prompt_template": "text"}, metrics={},
        )  # fmt: skip
        store.create_endpoint(endpoint(i), model_ref=version.ref, tenant=TENANT)
    _, key = create_api_key(store, TENANT)
    return World(store, artifacts, key)


def endpoint(i: int) -> str:
    return f"adapter-{i:02d}"


def workload(name: str, count: int, seed: int) -> list[int]:
    """``count`` adapter indices: uniform, or Zipf (s = 1) over a shuffled ranking."""
    rng = random.Random(f"{name}/{seed}")
    if name == "uniform":
        return [rng.randrange(ADAPTERS) for _ in range(count)]
    ranking = list(range(ADAPTERS))
    rng.shuffle(ranking)
    weights = [1 / (rank + 1) for rank in range(ADAPTERS)]
    return rng.choices(ranking, weights=weights, k=count)


@contextmanager
def fleet(
    world: World, policy: str, config: Config
) -> Iterator[tuple[str, list[TransformersEngine]]]:
    """Fresh replicas (cold caches) and a router with ``policy``: the router's URL."""
    with ExitStack() as stack:
        engines = []
        for _ in range(REPLICAS):
            engine = TransformersEngine(world.artifacts, max_adapters=CACHE, store=world.store,
                                        batch_window_ms=2)  # fmt: skip
            stack.callback(engine.close)
            app = create_app(world.store, engine, heartbeat_s=config.heartbeat_s,
                             refresh_seconds=5.0, export_monitoring=False)  # fmt: skip
            server = BackgroundServer(app)
            app.state.agent.address = f"127.0.0.1:{server.port}"
            stack.enter_context(server)
            engines.append(engine)
        options = RouteOptions(policy=policy, refresh_s=config.heartbeat_s / 2)  # type: ignore[arg-type]
        router = stack.enter_context(BackgroundServer(create_route_app(world.store, options)))
        deadline = time.monotonic() + 30
        while httpx.get(router.base_url + "/ready").json()["replicas"] < REPLICAS:
            if time.monotonic() > deadline:
                raise RuntimeError("the router did not see both replicas")
            time.sleep(0.05)
        yield router.base_url, engines


def send(url: str, key: str, jobs: Sequence[int], config: Config) -> int:
    """Send every job through the router, ``concurrency`` at a time; returns the errors."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:

        def one(i: int) -> bool:
            body = {"model": endpoint(i), "prompt": "route this request", "max_tokens":
                    config.max_tokens, "temperature": 0}  # fmt: skip
            return c.post("/v1/completions", json=body).status_code == 200

        with ThreadPoolExecutor(config.concurrency) as pool:
            return sum(not ok for ok in pool.map(one, jobs))


def run(world: World, name: str, policy: str, config: Config, jobs: list[int]) -> Run:
    with fleet(world, POLICIES[policy], config) as (url, engines):
        errors = send(url, world.key, jobs[: config.warmup], config)
        before = [e.stats() for e in engines]
        started = time.perf_counter()
        errors += send(url, world.key, jobs[config.warmup :], config)
        seconds = time.perf_counter() - started
        after = [e.stats() for e in engines]
    hits = sum(a.adapter_hits - b.adapter_hits for a, b in zip(after, before, strict=True))
    misses = sum(a.adapter_misses - b.adapter_misses for a, b in zip(after, before, strict=True))
    return Run(name, policy, config.requests, hits, misses, tuple(served(a, b) for a, b in
               zip(after, before, strict=True)), seconds, errors)  # fmt: skip


def served(after: EngineStats, before: EngineStats) -> int:
    return (after.adapter_hits + after.adapter_misses) - (
        before.adapter_hits + before.adapter_misses
    )


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in WORKLOADS:
        by = {r.policy: r for r in runs if r.workload == name}
        routed, plain = by["routing"].hit_rate, by["round-robin"].hit_rate
        ratio = routed / plain if plain else float("inf")
        out[name] = {"routing": routed, "round_robin": plain, "ratio": ratio, "met": ratio > 1}
    return out


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0],
        "torch": torch.__version__, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def table(runs: Sequence[Run], summary: dict[str, Any]) -> Table:
    t = Table(title=f"Adapter cache hit rate: {ADAPTERS} adapters, {REPLICAS} replicas, "
              f"cache {CACHE} each")  # fmt: skip
    for column in ("workload", "policy", "requests", "hits", "misses", "hit rate",
                   "per replica", "req/s", "errors"):  # fmt: skip
        t.add_column(column)
    for r in runs:
        t.add_row(r.workload, r.policy, str(r.requests), str(r.hits), str(r.misses),
                  f"{r.hit_rate:.3f}", "/".join(map(str, r.per_replica)),
                  f"{r.requests / r.seconds:.1f}", str(r.errors))  # fmt: skip
    for name, s in summary.items():
        verdict = "PASS" if s["met"] else "MISS"
        t.add_row(name, "ratio", "", "", "", f"{s['ratio']:.2f}x", "target > 1", "", verdict)
    return t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests: a smoke test")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    console = Console(stderr=args.json, width=120)
    err = Console(stderr=True, width=120)
    runs = []
    with tempfile.TemporaryDirectory(prefix="modelyard-routing-") as tmp:
        world = build_world(Path(tmp), lambda m: err.print(f"[dim]{m}[/dim]"))
        try:
            for name in WORKLOADS:
                jobs = workload(name, config.warmup + config.requests, config.seed)
                for policy in POLICIES:
                    err.print(f"[dim]{name}: {policy}[/dim]")
                    runs.append(run(world, name, policy, config, jobs))
        finally:
            world.store.close()
    summary = summarize(runs)
    console.print(table(runs, summary))
    info = machine()
    console.print(f"machine: {info['processor']}, {info['cpus']} CPUs, torch threads: "
                  f"{info['torch_threads']}, load average {info['load_average']}")  # fmt: skip
    if args.json:
        rows = [asdict(r) | {"hit_rate": r.hit_rate} for r in runs]
        print(json.dumps({"config": asdict(config), "machine": info, "summary": summary,
                          "runs": rows}))  # fmt: skip
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    leave(main())  # sys.exit(main()), without 2 s of collections at the exit
