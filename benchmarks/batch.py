"""Batch throughput: ``modelyard batch run`` against the same rows sent through the HTTP API.

One run, one tiny base, one LoRA adapter with random weights behind one
endpoint, greedy decoding, ``max_tokens`` fixed, the same rows on both sides
(alpaca rows, asked as an instruction and an input). Side by side, round-robin,
``repeats`` times after a warm-up, one shared ``TransformersEngine`` (the same
warm weights and batch size):

- **batch**: ``run_file_job``, the library behind ``modelyard batch run``, from
  the input JSONL to the output JSONL written (input read and checked, rows sent
  ``concurrency`` at a time through the in-process data plane, records written,
  parts committed with fsync, the output assembled);
- **HTTP**: the real app (``create_app`` served by ``BackgroundServer`` on
  127.0.0.1 in this process) called by the official ``openai`` client from
  ``concurrency`` threads pulling the same rows from one queue
  (``chat.completions.create``, the route batch rows take).

The ratio is rows/s of batch divided by rows/s of HTTP at the same
concurrency (target >= 1.0). A measurement, not a test: the script exits 0
whether or not the target is met.

    .venv/bin/python benchmarks/batch.py           # a few minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/batch.py --quick   # smoke test, under a minute
    .venv/bin/python benchmarks/batch.py --json    # JSON on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import openai
import torch
import transformers
from _machine import machine as measured_on
from rich.console import Console
from rich.table import Table

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore, LocalArtifactStore
from modelyard.base import create_tiny_base
from modelyard.batch import ColumnMapping, FileJobSpec, run_file_job
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.serving import BackgroundServer, SamplingParams, TransformersEngine, create_app
from modelyard.store import Store

TARGET = 1.0
TENANT, ENDPOINT = "bench", "bench-support"
Say = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    hidden_size: int
    layers: int
    heads: int
    vocab_size: int
    base_steps: int
    new_tokens: int
    rows: int
    concurrency: tuple[int, ...]
    repeats: int
    threads: int
    seed: int = 0


FULL = Config(128, 4, 4, 1024, 4, 24, 160, (1, 16), 3, 1)
QUICK = Config(64, 2, 4, 512, 2, 8, 48, (8,), 1, 1)


@dataclass(frozen=True)
class Load:
    side: str  # batch | http
    concurrency: int
    repeat: int
    rows: int
    tokens: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


@dataclass
class World:
    store: Store
    artifacts: ArtifactStore
    key: str
    rows: list[dict[str, str]]
    input: Path
    warm: World | None = None  # the first rows alone: the warm-up


def build_world(config: Config, work: Path, say: Say) -> World:
    say(f"building a tiny base: hidden {config.hidden_size}, {config.layers} layers")
    info = create_tiny_base(
        domain_corpus(DOMAINS, 600, seed=config.seed), work / "base",
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, layers=config.layers,
        heads=config.heads, max_positions=512, steps=config.base_steps, batch_size=8,
        seed=config.seed,
    )  # fmt: skip
    from peft import LoraConfig, get_peft_model

    from modelyard.base import load_base

    torch.manual_seed(config.seed)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_base(info.path)[0], lora).save_pretrained(work / "adapter")
    artifacts = LocalArtifactStore(work / "artifacts")
    store = Store.open(f"sqlite:///{work / 'store.db'}")
    store.register_base_model("tiny", str(info.path), {})
    store.create_tenant(TENANT, storage_policy="full")
    store.create_registered_model("bot", tenant=TENANT)
    digest = artifacts.put_dir(work / "adapter", kind="adapter").digest
    version = store.create_model_version(
        "bot", kind="adapter", artifact_digest=digest, base_model="tiny", run_id=None,
        lineage={"prompt_template": "alpaca"}, metrics={},
    )  # fmt: skip
    store.create_endpoint(ENDPOINT, model_ref=version.ref, tenant=TENANT)
    _, key = create_api_key(store, TENANT, scopes=("infer",))
    domain = [r for d in DOMAINS for r in synthetic_domain(d, config.rows, seed=config.seed)]
    rows = [{"instruction": r["instruction"], "input": r.get("input") or ""} for r in domain]
    rows = rows[: config.rows]
    path = work / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    say(f"{len(rows)} rows; endpoint {ENDPOINT} serves {version.ref}")
    warm = work / "warm.jsonl"
    warm.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    return World(store, artifacts, key, rows, path, World(store, artifacts, key, rows[:16], warm))


def messages_of(row: Mapping[str, str]) -> list[dict[str, str]]:
    """What batch sends for a row mapped as instruction and input (``ColumnMapping``)."""
    if not row["input"].strip():
        return [{"role": "user", "content": row["instruction"]}]
    return [
        {"role": "system", "content": row["instruction"]},
        {"role": "user", "content": row["input"]},
    ]


def run_batch(world: World, engine: TransformersEngine, config: Config, c: int, out: Path) -> Load:
    spec = FileJobSpec(
        input=world.input, output=out, params=SamplingParams(max_tokens=config.new_tokens,
        temperature=0), mapping=ColumnMapping(fields={"instruction": "instruction",
        "input": "input"}), endpoint=ENDPOINT, api_key=world.key, concurrency=c,
        overwrite=True,
    )  # fmt: skip
    started = time.perf_counter()
    summary = run_file_job(world.store, engine, spec)
    seconds = time.perf_counter() - started
    if summary.failed or summary.answered != len(world.rows) or not out.exists():
        raise SystemExit(f"the batch job did not answer every row: {summary.first_error}")
    return Load("batch", c, 0, summary.answered, summary.completion_tokens, seconds)


def run_http(world: World, url: str, config: Config, c: int) -> Load:
    clients = [openai.OpenAI(base_url=url + "/v1", api_key=world.key, max_retries=0, timeout=300)
               for _ in range(c)]  # fmt: skip
    todo: queue.Queue[Mapping[str, str]] = queue.Queue()
    for row in world.rows:
        todo.put(row)
    tokens = [0] * c

    def worker(i: int) -> None:
        while True:
            try:
                row = todo.get_nowait()
            except queue.Empty:
                return
            answer = clients[i].chat.completions.create(
                model=ENDPOINT, messages=messages_of(row),  # type: ignore[arg-type]
                max_tokens=config.new_tokens, temperature=0,
            )  # fmt: skip
            tokens[i] += answer.usage.completion_tokens if answer.usage else 0

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(c)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    for client in clients:
        client.close()
    return Load("http", c, 0, len(world.rows), sum(tokens), seconds)


def run_loads(world: World, config: Config, work: Path, say: Say) -> list[Load]:
    engine = TransformersEngine(
        world.artifacts, max_batch_size=max(config.concurrency), store=world.store,
        max_queue=max(256, *config.concurrency),
    )  # fmt: skip
    loads: list[Load] = []
    try:
        with BackgroundServer(create_app(world.store, engine)) as server:
            say("warm-up: both sides, 16 rows at each concurrency (not counted)")
            assert world.warm is not None
            for c in config.concurrency:
                run_batch(world.warm, engine, config, c, work / "warm-out.jsonl")
                run_http(world.warm, server.base_url, config, c)
            for repeat in range(1, config.repeats + 1):
                for c in config.concurrency:
                    for side in ("batch", "http"):
                        if side == "batch":
                            load = run_batch(world, engine, config, c, work / f"out-{c}.jsonl")
                        else:
                            load = run_http(world, server.base_url, config, c)
                        load = Load(load.side, c, repeat, load.rows, load.tokens, load.seconds)
                        loads.append(load)
                        say(f"{side:<5} concurrency {c:>2} repeat {repeat}/{config.repeats}: "
                            f"{load.rows_per_second:7.1f} rows/s, {load.tokens} tokens "
                            f"({load.seconds:.1f} s)")  # fmt: skip
    finally:
        engine.close()
    return loads


def summarize(loads: Sequence[Load], config: Config) -> dict[str, Any]:
    out = {}
    for c in config.concurrency:
        batch = statistics.median(x.rows_per_second for x in loads if (x.side, x.concurrency)
                                  == ("batch", c))  # fmt: skip
        http = statistics.median(x.rows_per_second for x in loads if (x.side, x.concurrency)
                                 == ("http", c))  # fmt: skip
        out[f"concurrency_{c}"] = {
            "batch_rows_per_second": batch,
            "http_rows_per_second": http,
            "ratio": batch / http,
            "target": TARGET,
            "met": batch / http >= TARGET,
        }
    return out


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    return measured_on(transformers, openai)


def table(summary: Mapping[str, Any], config: Config) -> Table:
    t = Table(title="Batch throughput", title_justify="left")
    for name in ("rows/s (median of repeats)", "batch", "HTTP", "batch / HTTP", "target", ""):
        t.add_column(name, justify="left" if name.startswith("rows") else "right")
    for c in config.concurrency:
        s = summary[f"concurrency_{c}"]
        t.add_row(
            f"concurrency {c}, {config.rows} rows, max_tokens {config.new_tokens}",
            f"{s['batch_rows_per_second']:.1f}", f"{s['http_rows_per_second']:.1f}",
            f"{s['ratio']:.2f}x", f">= {TARGET:.2f}x",
            "[green]PASS[/green]" if s["met"] else "[red]MISS[/red]",
        )  # fmt: skip
    return t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default 1)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.threads:
        config = Config(**{**asdict(config), "threads": args.threads})
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    console = Console(stderr=True)
    say: Say = console.print
    torch.set_num_threads(config.threads)
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelyard-batch-bench-") as tmp:
        work = Path(tmp)
        os.environ["MODELYARD_HOME"] = str(work / "home")  # nothing of the user's is touched
        world = build_world(config, work, say)
        try:
            loads = run_loads(world, config, work, say)
        finally:
            world.store.close()
    summary = summarize(loads, config)
    results = {
        "benchmark": "batch",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_at_start},
        "config": asdict(config),
        "loads": [{**asdict(x), "rows_per_second": x.rows_per_second} for x in loads],
        **summary,
        "seconds": time.perf_counter() - started,
    }
    m = results["machine"]
    console.print(
        f"{results['date']}: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load "
        f"average {load_at_start:.1f} at the start, {m['load_average_1m']:.1f} at the end"
    )
    console.print(table(summary, config))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
