"""Serving throughput: the server against in-process generate, batching, adapter churn, records.

One run, one tiny base, LoRA adapters with distinct random weights, greedy
decoding, one set of alpaca prompts and ``max_tokens`` fixed per run. The
server is the real app (``create_app`` on a ``TransformersEngine``, served by
``BackgroundServer`` on 127.0.0.1 in this process) called through the official
``openai`` client (``/v1/completions``, so that both sides see the same prompt
text) from a process of its own (``_client_process``: in this one, the clients'
threads shared the server's GIL and app-against-app ratios swung 10 to 20 %).
They are ratios measured side by side, not timed assertions: the script exits 0
whether or not a target is met, and non-zero only when something fails.

1. tokens/s of the server at concurrency 1 divided by tokens/s of
   ``model.generate`` in this process (the same base, adapter, prompts,
   ``max_new_tokens`` and greedy decoding), one request at a time. Target >= 0.8.
2. 8 clients at once, each on its own adapter (8 adapters), divided by the same
   requests sent one at a time. Target >= 3 (dynamic mixed-adapter batching).
3. The same 8-client load spread over 64 adapters with an adapter cache of 8
   (``max_adapters=8``: loads and evictions all along) divided by the load on a
   single adapter. Target >= 0.8 (S-LoRA's anchor is 0.95).
4. The 8-client, 8-adapter load with inference records written (the app's own
   ``RecordWriter`` into the SQLite store) divided by the same load on an app
   whose writer discards every record (``DiscardingWriter``, passed as
   ``create_app(writer=...)``; the app has no switch to turn records off, and
   needs none). Target >= 0.95, on the medians and in every round. These loads
   run side by side (``_records_rounds``): two serving processes, each one engine
   behind a records-on and a records-off app, take the same load at the same
   moment, one with records on and the other off, then swapped; a round is
   ``records_pairs`` such pairs and its ratio their geometric mean. Run one after
   the other in this process, identical loads ran 15 % apart a few seconds later
   on this 2-core machine, more than the cost being measured.
   ``--records-control`` runs both sides with records off: what the rounds
   read when there is nothing to find (the benchmark's own resolution).

Every tokens/s is the completion tokens really generated (``usage`` for the
server, new tokens before any end-of-sequence token for ``model.generate``)
divided by the wall time of the whole load. Generation stops at ``max_tokens``
or at an end-of-sequence token, as a user's would; the table says how many
requests ended early (none, with the adapters here). The loads run round-robin,
``repeats`` times after a warm-up, and each reports its median. A full garbage
collection runs before each timed load (one takes 0.3 to 0.5 s here: inside a load,
it decided that load's round).

    .venv/bin/python benchmarks/serving.py           # about 8 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/serving.py --quick   # smoke test, under a minute
    .venv/bin/python benchmarks/serving.py --json    # JSON on stdout, the table on stderr
    .venv/bin/python benchmarks/serving.py --threads 2  # torch threads (default 1)
    .venv/bin/python benchmarks/serving.py --refresh-seconds 3600  # diagnostic: router refresh
    .venv/bin/python benchmarks/serving.py --records-control  # A/A: records off on both sides

A reference without a target: the server at concurrency 1 against its own
engine called in this process (no HTTP), which splits target 1 into the
engine's decoding against ``model.generate`` and what HTTP and the app add.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _machine
import openai
import peft
import torch
import transformers
from _client_process import ClientProcess
from _preload import preload
from _records_rounds import RecordsLoad, run_rounds
from _records_rounds import summarize as summarize_records
from _server_process import DiscardingWriter, ServerSettings
from _server_process import quiet as _quiet
from _serving_report import _header, records_table, results_table, runs_table
from peft import LoraConfig, PeftModel, get_peft_model
from rich.console import Console

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base, load_base
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain
from modelyard.errors import ModelyardError
from modelyard.serving import BackgroundServer, SamplingParams, TransformersEngine, create_app
from modelyard.store import ModelVersion, Store

SERVER_TARGET = 0.8
BATCHING_TARGET = 3.0
ADAPTERS_TARGET = 0.8
RECORDS_TARGET = 0.95
CLIENTS = 8
ADAPTERS = 64
CACHE = 8
TENANT = "bench"

Say = Callable[[str], None]


class BenchmarkError(ModelyardError):
    code = "benchmark_error"


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run."""

    hidden_size: int
    layers: int
    heads: int
    vocab_size: int
    base_steps: int
    new_tokens: int  # max_tokens of every request
    single_requests: int  # requests of the concurrency-1 loads (1)
    rounds_per_client: int  # requests per client in the 8-client loads (2, 3, 4)
    records_rounds_per_client: int  # requests per client in the records loads (8, 24)
    records_pairs: int  # side-by-side pairs of records loads a round (even)
    repeats: int
    threads: int  # torch.set_num_threads
    batch_window_ms: float = 5.0  # the engine's default
    refresh_seconds: float = 2.0  # the app's router refresh (create_app's default)
    seed: int = 0
    preload: int = 0  # records written to the store before the loads (--preload)


FULL = Config(
    hidden_size=128,
    layers=4,
    heads=4,
    vocab_size=1024,
    base_steps=4,
    new_tokens=48,
    single_requests=8,
    rounds_per_client=8,
    records_rounds_per_client=24,
    records_pairs=8,
    repeats=3,
    threads=1,
)
QUICK = Config(
    hidden_size=64,
    layers=2,
    heads=4,
    vocab_size=512,
    base_steps=2,
    new_tokens=12,
    single_requests=4,
    # a smoke test: every code path once, few repeats of each. 8 clients x 4: 32 of the 64
    # adapters get a request, four times the cache of 8 (loads and evictions all along)
    rounds_per_client=4,
    records_rounds_per_client=4,  # as many as the records rounds' warm-up sends
    records_pairs=2,  # the fewest: each process on each side once
    repeats=1,
    threads=1,
)


@dataclass(frozen=True)
class Load:
    """One timed load: what it generated and how long it took, end to end."""

    name: str
    repeat: int
    requests: int
    tokens: int
    seconds: float
    short: int  # requests that ended before max_tokens (end of sequence)
    batches: int | None = None  # the engine's batches (admissions into a running batch too)
    adapter_loads: int | None = None  # adapters the engine loaded into its slots
    gc_collections: int = 0  # garbage collections during the load (any generation)
    gc_seconds: float = 0.0  # the time they took, every thread stopped meanwhile

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


class GcClock:
    """Counts the garbage collections (``gc.callbacks``) and the time they take: a load's
    share says whether the collector, not the code measured, decided a round."""

    def __init__(self) -> None:
        self.collections, self.seconds = 0, 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections += 1
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


# -- the world: a base, adapters, a store, endpoints, a key -------------------------------


@dataclass
class World:
    base: Path
    adapters: list[Path]
    store: Store
    artifacts: ArtifactStore
    key: str
    prompts: list[str]
    versions: list[ModelVersion]


def make_adapters(base: Path, out: Path, count: int, seed: int) -> list[Path]:
    """``count`` LoRA adapters of one shape with distinct random weights (content is moot)."""
    model = load_base(base)[0]
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    wrapped = get_peft_model(model, config)
    lora = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for p in lora:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        paths.append(out / f"adapter-{i:02d}")
        wrapped.save_pretrained(paths[-1])
    return paths


def build_world(config: Config, work: Path, say: Say) -> World:
    say(f"building a tiny base: hidden {config.hidden_size}, {config.layers} layers")
    info = create_tiny_base(
        domain_corpus(DOMAINS, 600, seed=config.seed),
        work / "base",
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layers=config.layers,
        heads=config.heads,
        max_positions=512,
        steps=config.base_steps,
        batch_size=8,
        seed=config.seed,
    )
    say(f"{ADAPTERS} random LoRA adapters (r 8, all linear layers), registered")
    adapters = make_adapters(info.path, work / "adapters", ADAPTERS, config.seed)
    artifacts = ArtifactStore(work / "artifacts")
    store = Store.open(f"sqlite:///{work / 'store.db'}")
    store.register_base_model("tiny", str(info.path), {})
    store.create_tenant(TENANT)
    store.create_registered_model("bot", tenant=TENANT)
    versions = []
    for i, directory in enumerate(adapters):
        version = store.create_model_version(
            "bot",
            kind="adapter",
            artifact_digest=artifacts.put_dir(directory, kind="adapter").digest,
            base_model="tiny",
            run_id=None,
            lineage={"prompt_template": "alpaca"},
            metrics={},
        )
        store.create_endpoint(endpoint(i), model_ref=version.ref, tenant=TENANT)
        versions.append(version)
    _, key = create_api_key(store, TENANT)
    rows = [r for d in DOMAINS for r in synthetic_domain(d, 4, seed=config.seed)]
    prompts = [render_prompt(r) for r in rows]
    return World(info.path, adapters, store, artifacts, key, prompts, versions)


def endpoint(i: int) -> str:
    return f"adapter-{i:02d}"


# -- the loads ------------------------------------------------------------------------------


Job = tuple[int, str]  # (adapter index, prompt)


def in_process(world: World, config: Config, jobs: Sequence[Job]) -> tuple[int, int, float]:
    """``model.generate`` on the base with adapter 0, one request at a time: tokens, short, s."""
    model, tokenizer = load_base(world.base)
    model = PeftModel.from_pretrained(model, world.adapters[0]).eval()
    eos = {model.generation_config.eos_token_id, tokenizer.eos_token_id} - {None}
    encoded = [tokenizer(prompt, return_tensors="pt") for _, prompt in jobs]
    tokens = short = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for inputs in encoded:
            out = model.generate(
                **inputs,
                max_new_tokens=config.new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[0, inputs["input_ids"].shape[1] :].tolist()
            # up to the end of sequence, which counts, as the server counts it
            count = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            tokens += count
            short += count < config.new_tokens
    return tokens, short, time.perf_counter() - started


def engine_direct(
    engine: TransformersEngine, world: World, config: Config, jobs: Sequence[Job]
) -> tuple[int, int, float]:
    """The server's engine called in this process (no HTTP), one request at a time."""
    params = SamplingParams(max_tokens=config.new_tokens, temperature=0)
    tokens = short = 0
    started = time.perf_counter()
    for adapter, prompt in jobs:
        generation = engine.generate(world.versions[adapter], prompt, params)
        tokens += generation.completion_tokens
        short += generation.completion_tokens < config.new_tokens
    return tokens, short, time.perf_counter() - started


def make_clients(url: str, key: str, count: int) -> list[openai.OpenAI]:
    """``count`` clients of the server at ``url``. Each loads CA certificates (~30 ms of CPU),
    so they are made before a load's clock starts."""
    return [
        openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        for _ in range(count)
    ]


def run_clients(
    apis: Sequence[openai.OpenAI],
    config: Config,
    clients: Sequence[Sequence[Job]],
    model: Callable[[int], str] = endpoint,
) -> tuple[int, int, float]:
    """Client i sends its jobs one after another through ``apis[i]``; the clients run at once:
    tokens, short, s. ``model`` names adapter i's model (default: its endpoint)."""

    def client(api: openai.OpenAI, jobs: Sequence[Job]) -> tuple[int, int]:
        tokens = short = 0
        for adapter, prompt in jobs:
            out = api.completions.create(
                model=model(adapter),
                prompt=prompt,
                max_tokens=config.new_tokens,
                temperature=0,
            )
            if out.usage is None:
                raise BenchmarkError(f"the server answered {model(adapter)} without usage")
            tokens += out.usage.completion_tokens
            short += out.usage.completion_tokens < config.new_tokens
        return tokens, short

    with ThreadPoolExecutor(len(clients)) as pool:
        started = time.perf_counter()
        results = list(pool.map(client, apis, clients))
        seconds = time.perf_counter() - started
    return sum(t for t, _ in results), sum(s for _, s in results), seconds


def through_server(
    runner: ClientProcess, url: str, key: str, config: Config, clients: Sequence[Sequence[Job]]
) -> tuple[int, int, float]:
    """Each client sends its jobs one after another; the clients run at once, in the client
    process (``_client_process``): tokens, short, s."""
    jobs = [[(endpoint(adapter), prompt) for adapter, prompt in c] for c in clients]
    return runner.run(url, key, config.new_tokens, jobs)


@contextmanager
def servers(world: World, config: Config) -> Iterator[tuple[str, str, TransformersEngine]]:
    """One engine (adapter cache of 8) behind two apps: records on (the default), records off."""
    engine = TransformersEngine(
        world.artifacts,
        max_adapters=CACHE,
        max_batch_size=CLIENTS,
        batch_window_ms=config.batch_window_ms,
        store=world.store,
    )
    with ExitStack() as stack:
        stack.callback(engine.close)
        off_writer = DiscardingWriter(world.store)
        stack.callback(off_writer.close)
        refresh = config.refresh_seconds
        on = stack.enter_context(
            BackgroundServer(create_app(world.store, engine, refresh_seconds=refresh))
        )
        off = stack.enter_context(
            BackgroundServer(
                create_app(world.store, engine, writer=off_writer, refresh_seconds=refresh)
            )
        )
        yield on.base_url, off.base_url, engine


SERVER_C1, INPROC_C1 = "server, 1 client, adapter 0", "model.generate, adapter 0"
SEQ8, CONC8 = "server, 8 adapters, one at a time", "server, 8 clients on 8 adapters"
SINGLE, MANY = "server, 8 clients on 1 adapter", "server, 8 clients on 64 adapters"
LOADS = (INPROC_C1, SERVER_C1, SEQ8, CONC8, SINGLE, MANY)  # records on and off: below
ENGINE_C1 = "engine in process (no HTTP), adapter 0"  # a reference, not one of the loads
SETTLE = "settle: 8 clients on 8 adapters, records off, not counted"
# One repeat, in order. Before the 8-client load of the batching ratio, that load once
# untimed, on the records-off app: the records-on app's first 8-client load right after
# the one-at-a-time load (which runs on it too) ran in about twice the engine's batches
# (24 to 30 against 13 to 15: the clients out of step) and about 17 % slower than its
# second, in every repeat; with the records-off load first, neither was slow (2026-12-05;
# the cause is not found: no backlog, the writer keeps up with those 10 requests a second).
ORDER = (INPROC_C1, SERVER_C1, SEQ8, SETTLE, CONC8, SINGLE, MANY, ENGINE_C1)


def plan(world: World, config: Config) -> dict[str, list[list[Job]]]:
    """Every load as a list of clients, each a list of (adapter, prompt) jobs."""
    p = world.prompts

    def prompt(i: int) -> str:
        return p[i % len(p)]

    single = [[(0, prompt(i)) for i in range(config.single_requests)]]
    per = config.rounds_per_client
    # client c, round r: the same prompt in every 8-client load
    eight = [[(c, prompt(c * per + r)) for r in range(per)] for c in range(CLIENTS)]
    spread = [
        [((r * CLIENTS + c) % ADAPTERS, prompt(c * per + r)) for r in range(per)]
        for c in range(CLIENTS)
    ]
    one = [[(0, prompt(c * per + r)) for r in range(per)] for c in range(CLIENTS)]
    # the 8-client jobs sent one at a time, in the order they would interleave
    sequential = [[job for r in range(per) for job in (eight[c][r] for c in range(CLIENTS))]]
    return {
        INPROC_C1: single,
        SERVER_C1: single,
        SEQ8: sequential,
        CONC8: eight,
        SINGLE: one,
        MANY: spread,
    }


def records_jobs(world: World, config: Config) -> list[list[tuple[str, str]]]:
    """The records loads' clients: client c on adapter c, ``records_rounds_per_client``
    prompts each, as (endpoint, prompt) jobs."""
    p, longer = world.prompts, config.records_rounds_per_client
    return [
        [(endpoint(c), p[(c * longer + r) % len(p)]) for r in range(longer)] for c in range(CLIENTS)
    ]


def run_records(world: World, config: Config, say: Say, control: bool) -> list[RecordsLoad]:
    """Records on vs off, ``repeats`` rounds of ``records_pairs`` side-by-side pairs on two
    serving processes (``_records_rounds``) on this world's store and artifacts."""
    settings = ServerSettings(
        store_url=world.store.url,
        artifacts=str(world.artifacts.root),
        max_adapters=CACHE,
        max_batch_size=CLIENTS,
        batch_window_ms=config.batch_window_ms,
        refresh_seconds=config.refresh_seconds,
        threads=config.threads,
    )
    return run_rounds(
        settings,
        world.key,
        config.new_tokens,
        records_jobs(world, config),
        rounds=config.repeats,
        pairs=config.records_pairs,
        say=say,
        control=control,
    )


def run_loads(world: World, config: Config, say: Say) -> tuple[list[Load], list[Load]]:
    """The loads, round-robin; and the engine called in process (a reference for the table)."""
    loads = plan(world, config)
    runs: list[Load] = []
    direct: list[Load] = []
    with servers(world, config) as (on, off, engine), ClientProcess() as runner:
        say("warm-up: every load once with one request per client (not counted)")
        in_process(world, config, loads[INPROC_C1][0][:1])
        engine_direct(engine, world, config, loads[SERVER_C1][0][:1])
        for name in LOADS[1:]:
            through_server(runner, on, world.key, config, [c[:1] for c in loads[name]])
        for repeat in range(1, config.repeats + 1):
            for name in ORDER:
                if name == SETTLE:
                    through_server(runner, off, world.key, config, loads[CONC8])
                    continue
                clients = loads[SERVER_C1 if name == ENGINE_C1 else name]
                gc.collect()  # a full collection (0.3 to 0.5 s here) not inside a timed load
                before = engine.stats()
                with GcClock() as collector:
                    if name == INPROC_C1:
                        tokens, short, seconds = in_process(world, config, clients[0])
                    elif name == ENGINE_C1:
                        tokens, short, seconds = engine_direct(engine, world, config, clients[0])
                    else:
                        tokens, short, seconds = through_server(
                            runner, on, world.key, config, clients
                        )
                after = engine.stats()
                load = Load(name, repeat, sum(map(len, clients)), tokens, seconds, short)
                load = replace(
                    load, gc_collections=collector.collections, gc_seconds=collector.seconds
                )
                if name != INPROC_C1:
                    load = replace(
                        load,
                        batches=after.batches - before.batches,
                        adapter_loads=after.adapter_loads - before.adapter_loads,
                    )
                (direct if name == ENGINE_C1 else runs).append(load)
                say(
                    f"{name:<46} repeat {repeat}/{config.repeats}: "
                    f"{load.tokens_per_second:8,.0f} tokens/s ({seconds:.1f} s)"
                )
    return runs, direct


# -- report ---------------------------------------------------------------------------------


def _median(runs: Sequence[Load], name: str) -> float:
    return statistics.median(r.tokens_per_second for r in runs if r.name == name)


def summarize(
    runs: Sequence[Load],
    direct: Sequence[Load] = (),
    records: Sequence[RecordsLoad] = (),
    control: bool = False,
) -> dict[str, Any]:
    every = [*runs, *direct]

    def ratio(a: str, b: str, target: float | None) -> dict[str, Any]:
        """The medians of loads ``a`` and ``b`` and their ratio."""
        value = _median(every, a) / _median(every, b)
        return {
            "a": a,
            "b": b,
            "a_tokens_per_second": _median(every, a),
            "b_tokens_per_second": _median(every, b),
            "ratio": value,
            "target": target,
            "met": None if target is None else value >= target,
        }

    summary = {
        "server_vs_generate": ratio(SERVER_C1, INPROC_C1, SERVER_TARGET),
        "batching": ratio(CONC8, SEQ8, BATCHING_TARGET),
        "adapters": ratio(MANY, SINGLE, ADAPTERS_TARGET),
    }
    if records:  # issue 19: side by side, two serving processes
        summary["records"] = summarize_records(records, RECORDS_TARGET, control)
    if direct:  # no target: how much of the server's time is HTTP and the app
        summary["server_vs_engine"] = ratio(SERVER_C1, ENGINE_C1, None)
    return summary


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    return _machine.machine(transformers, peft, openai)


def benchmark(
    config: Config, work: Path, say: Say, control: bool = False
) -> tuple[dict[str, Any], list[Load]]:
    """The results (JSON-ready) and every load but the records rounds', the engine-in-process
    reference last. ``control``: the records rounds with records off on both sides."""
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(config.threads)
    say(f"torch threads: {torch.get_num_threads()}")
    os.environ["MODELYARD_HOME"] = str(work / "home")  # nothing of the user's is touched
    world = build_world(config, work, say)
    preloaded = None
    try:
        if config.preload:
            endpoints = [endpoint(i) for i in range(len(world.versions))]
            preloaded = preload(world.store, TENANT, world.versions, endpoints, config.preload)
            say(f"preloaded {config.preload:,} sealed records in {preloaded['seconds']:.1f} s")
        runs, direct = run_loads(world, config, say)
        records = run_records(world, config, say, control)
    finally:
        world.store.close()
    results = {
        "benchmark": "serving",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_at_start},
        "config": asdict(config),
        "preload": preloaded,
        "loads": [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in runs],
        "engine_in_process": [
            {**asdict(r), "tokens_per_second": r.tokens_per_second} for r in direct
        ],
        "records_loads": [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in records],
        **summarize(runs, direct, records, control),
        "seconds": time.perf_counter() - started,
    }
    return results, [*runs, *direct]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default 1: the other core serves HTTP)"
    )
    parser.add_argument(
        "--preload",
        type=int,
        default=0,
        metavar="N",
        help="write N sealed records to the store before the loads (issue 19: 100000)",
    )
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        help="the app's router refresh interval (default 2, the server's; a diagnostic knob)",
    )
    parser.add_argument(
        "--records-control",
        action="store_true",
        help="records off on both sides of the records rounds: the rounds' own resolution",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.preload < 0:
        parser.error("--preload must be 0 or more")
    if args.refresh_seconds is not None and not args.refresh_seconds > 0:
        parser.error("--refresh-seconds must be more than 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _quiet()
    err = Console(stderr=True)
    if not err.is_terminal:
        err.width = 120  # not the 80 columns Rich assumes for pipes and files
    config = QUICK if args.quick else FULL
    if args.threads is not None:
        config = replace(config, threads=args.threads)
    if args.refresh_seconds is not None:
        config = replace(config, refresh_seconds=args.refresh_seconds)
    if args.preload:
        config = replace(config, preload=args.preload)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-bench-serving-") as tmp:
            say = lambda m: err.print(f"[dim]{m}[/dim]")  # noqa: E731
            results, runs = benchmark(config, Path(tmp), say, args.records_control)
    except ModelyardError as exc:
        err.print(f"error: {exc.one_line()}", markup=False, highlight=False)
        return 1
    out = err if args.json else Console()
    if not out.is_terminal:
        out.width = 120
    out.print(_header(results, config, CLIENTS, CACHE), highlight=False)
    out.print(runs_table(runs))
    out.print(records_table(results["records"]))
    out.print(results_table(results, config.repeats))
    rounds = results["records"]["rounds"]
    out.print(
        ("control, records off on both sides" if args.records_control else "records on vs off")
        + ", round by round: "
        + ", ".join(f"{r:.3f}x" for r in rounds)
        + f" (>= {RECORDS_TARGET:.2f}x in every round: "
        + ("yes" if results["records"]["met_every_round"] else "no")
        + ")",
        highlight=False,
    )
    if args.json:
        print(json.dumps(_machine.finite(results), indent=2))
    return 0


if __name__ == "__main__":
    _machine.leave(main())  # sys.exit(main()), without 2 s of collections at the exit
