"""Serving on the vllm engine: tokens/s through modelyard vs the same load on the bare vLLM server.

Issue 13. The world is ``serving.py``'s (imported, not copied): one tiny
Llama-style base, LoRA adapters (r 8, all linear layers) with distinct random
weights, each a version behind its own endpoint, alpaca prompts; this benchmark
uses 8 of the adapters. One ``VLLMEngine`` (one vLLM server for the base, in its
own environment: ``--max-loras 8 --max-lora-rank 8 --max-num-seqs 16``, fp32,
1 GiB of KV cache; the engine keeps up to 8 adapters registered) serves them
behind the real app (``create_app`` with its defaults: records written, router
refresh 2 s) on ``BackgroundServer`` in this process, as ``serving.py`` does.

Both sides get the same requests through the official ``openai`` client on
``/v1/completions``: the same prompts, ``max_tokens``, temperature 0 and
concurrency.

* **modelyard**: the app, endpoint ``adapter-NN`` with the tenant's key (auth,
  routing, limits, the engine asking vLLM for the whole completion in one
  non-streamed request, as the client asked modelyard, records).
* **bare vLLM**: the engine's own vLLM server, model ``v<version id>``: the name
  the engine registered the adapter under on its first use (the warm-up sends
  every adapter through modelyard first).

Loads: concurrency 1 (12 requests one after another over the 8 adapters in
turn) and concurrency 16 (16 clients at once, client c on adapter c mod 8, 4
requests each), greedy, ``max_tokens`` 48. tokens/s is the
``usage.completion_tokens`` of the answers over the wall time of the whole
load. After a warm-up (every load once with one request per client, on both
sides) and a check that both sides answer the same text for every adapter, the
two sides alternate, load by load, for ``repeats`` rounds (8; the side that
goes first changes every round); each ratio is modelyard / bare of the
medians, and the table lists every round's. Target >= 0.9 (the platform costs
at most 10 %). Per load it also reads from /proc the CPU seconds of this
process (the clients and modelyard), of each vLLM process and of everything
else on the machine (other work: noise), to show where the time goes. The
script exits 0 whether or not the target is met, non-zero when something
fails; it stops the vLLM server (its whole process group) in every case.

    .venv/bin/python benchmarks/serving_vllm.py           # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/serving_vllm.py --quick   # smoke test, ~45 s
    .venv/bin/python benchmarks/serving_vllm.py --json    # JSON on stdout, the tables on stderr
    .venv/bin/python benchmarks/serving_vllm.py --vllm-python /path/to/vllm-env/bin/python
    taskset -c 1 .venv/bin/python benchmarks/serving_vllm.py  # all of it (vLLM too) on one core

On 2 cores the 16-client ratio swings widely from round to round (vLLM's
processes poll, and where the scheduler puts them decides a load's speed); on
one core the CPU each side costs decides it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
from _machine import finite
from _serving_report import _verdict, runs_table
from rich.console import Console
from rich.table import Table
from serving import (
    FULL,
    QUICK,
    BenchmarkError,
    Config,
    Job,
    Load,
    World,
    _median,
    _quiet,
    build_world,
    endpoint,
    machine,
    make_clients,
    run_clients,
)

from modelyard.errors import ModelyardError
from modelyard.serving import BackgroundServer, VLLMEngine, VLLMOptions, VLLMProcess, create_app

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.9
ADAPTERS = 8  # of the world's 64
CLIENTS = 16
READY_S = 300.0  # vLLM starts in 30-50 s on two idle cores

# head size 32 (vLLM's CPU attention takes no smaller); c1: requests at concurrency 1,
# rounds_per_client: requests per client at concurrency 16
VLLM_FULL = replace(FULL, single_requests=12, rounds_per_client=4, repeats=8)
VLLM_QUICK = replace(QUICK, heads=2, single_requests=8, rounds_per_client=1, repeats=2)

MY_C1, BARE_C1 = "modelyard, 1 client", "bare vLLM, 1 client"
MY_C16, BARE_C16 = f"modelyard, {CLIENTS} clients", f"bare vLLM, {CLIENTS} clients"
LOADS = (MY_C1, BARE_C1, MY_C16, BARE_C16)  # odd rounds: A B A B; even rounds: B A B A
PAIRS = {"concurrency_1": (MY_C1, BARE_C1), "concurrency_16": (MY_C16, BARE_C16)}


@dataclass(frozen=True)
class Sides:
    """Where each side's requests go and what model names they use."""

    modelyard: str
    bare: str
    key: str
    names: list[str]  # vLLM's model name of adapter i
    process: VLLMProcess


def plan(world: World, config: Config) -> dict[str, list[list[Job]]]:
    p = world.prompts
    c1 = [[(i % ADAPTERS, p[i % len(p)]) for i in range(config.single_requests)]]
    per = config.rounds_per_client
    c16 = [[(c % ADAPTERS, p[(c * per + r) % len(p)]) for r in range(per)] for c in range(CLIENTS)]
    return {MY_C1: c1, BARE_C1: c1, MY_C16: c16, BARE_C16: c16}


@contextmanager
def sides(world: World, config: Config, work: Path, python: str, say: Any) -> Iterator[Sides]:
    """The engine's vLLM server (ready) behind the app; both stopped on the way out."""
    options = VLLMOptions(python=python, kv_cache_gb=1, max_model_len=512, max_num_seqs=CLIENTS,
                          max_loras=ADAPTERS, max_lora_rank=8)  # fmt: skip
    engine = VLLMEngine(world.artifacts, options, store=world.store, log_dir=work / "logs",
                        max_adapters=ADAPTERS)  # fmt: skip
    with ExitStack() as stack:
        stack.callback(engine.close)  # SIGTERM, then SIGKILL to vLLM's process group
        started = time.perf_counter()
        engine.start_for(world.store)
        if not engine.warm(world.versions[0], READY_S):
            logs = "".join(p.read_text()[-2000:] for p in (work / "logs").glob("*.log"))
            raise BenchmarkError(f"vLLM was not ready within {READY_S:g} s:\n{logs}")
        process = engine.process(world.versions[0])
        say(f"vLLM ready in {time.perf_counter() - started:.0f} s (pid {process.pid})")
        app = stack.enter_context(
            BackgroundServer(
                create_app(world.store, engine, refresh_seconds=config.refresh_seconds)
            )
        )
        names = [f"v{v.id}" for v in world.versions[:ADAPTERS]]
        yield Sides(app.base_url, process.url, world.key, names, process)


def send(
    s: Sides, name: str, config: Config, clients: Sequence[Sequence[Job]]
) -> tuple[int, int, float, dict[str, float]]:
    """One load on one side: tokens, short, seconds and the CPU seconds each process used."""
    mine = name.startswith("modelyard")
    apis = make_clients(s.modelyard if mine else s.bare, s.key if mine else "none", len(clients))
    try:
        before = cpu_seconds(s.process.pid)
        tokens, short, seconds = run_clients(
            apis, config, clients, endpoint if mine else s.names.__getitem__
        )
        return tokens, short, seconds, _used(before, cpu_seconds(s.process.pid))
    finally:
        for api in apis:
            api.close()


def same_answers(s: Sides, world: World, config: Config) -> None:
    """Every adapter answers the same prompt with the same text on both sides (same work)."""
    mine = openai.OpenAI(base_url=s.modelyard + "/v1", api_key=s.key, max_retries=0, timeout=60)
    bare = openai.OpenAI(base_url=s.bare + "/v1", api_key="none", max_retries=0, timeout=60)
    for i, name in enumerate(s.names):
        prompt = world.prompts[i % len(world.prompts)]
        a, b = (
            client.completions.create(
                model=model, prompt=prompt, max_tokens=config.new_tokens, temperature=0
            )
            .choices[0]
            .text
            for client, model in ((mine, endpoint(i)), (bare, name))
        )
        if a.split() != b.split():
            raise BenchmarkError(f"adapter {i}: modelyard answered {a!r}, vLLM ({name}) {b!r}")


# -- CPU time per process -------------------------------------------------------------------


MACHINE, OTHER = "machine", "other processes"


def cpu_seconds(group: int | None) -> dict[str, float]:
    """CPU seconds so far of this process, of each process in vLLM's process group and of the
    whole machine (busy time of every core, from /proc/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    with Path("/proc/stat").open() as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    found: dict[str, float] = {MACHINE: (sum(ticks[:8]) - ticks[3] - ticks[4]) / tick}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        fields = text[text.rindex(")") + 2 :].split()  # fields[0] is the state (field 3)
        if pid == os.getpid():
            label = "this process (clients, modelyard)"
        elif group is not None and int(fields[2]) == group:
            label = "vLLM API server" if pid == group else _vllm_role(stat.parent)
        else:
            continue
        found[label] = found.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def _vllm_role(proc: Path) -> str:
    """vLLM names its processes ``VLLM::EngineCore``, ``VLLM::Worker`` (their command line)."""
    try:
        title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        title = ""
    return f"vLLM {title.removeprefix('VLLM::')}" if title.startswith("VLLM::") else "vLLM other"


def _used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds of each between two readings; what the machine did besides: other work."""
    used = {k: after[k] - before[k] for k in after if k in before}
    machine = used.pop(MACHINE)
    return {**used, OTHER: max(0.0, machine - sum(used.values()))}


# -- the run --------------------------------------------------------------------------------


def run_loads(
    world: World, config: Config, work: Path, python: str, say: Any
) -> tuple[list[Load], dict[str, list[dict[str, float]]], str]:
    loads = plan(world, config)
    runs: list[Load] = []
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in LOADS}
    with sides(world, config, work, python, say) as s:
        version = httpx.get(s.bare + "/version", timeout=10).json().get("version", "?")
        say("warm-up: every load once with one request per client, both sides (not counted)")
        for name in LOADS:  # modelyard first: it registers the adapters in vLLM
            send(s, name, config, [c[:1] for c in loads[name]])
        same_answers(s, world, config)
        say(f"both sides answer the same text on each of the {ADAPTERS} adapters")
        for repeat in range(1, config.repeats + 1):
            # whichever side goes second may pay for what the first left behind (records
            # still being written, say): the first side changes every round
            for name in LOADS if repeat % 2 else (BARE_C1, MY_C1, BARE_C16, MY_C16):
                tokens, short, seconds, used = send(s, name, config, loads[name])
                cpu[name].append(used)
                load = Load(name, repeat, sum(map(len, loads[name])), tokens, seconds, short)
                runs.append(load)
                say(
                    f"{name:<22} repeat {repeat}/{config.repeats}: "
                    f"{load.tokens_per_second:8,.0f} tokens/s ({seconds:.1f} s; other "
                    f"processes kept {used[OTHER] / seconds:.2f} cores busy)"
                )
    return runs, cpu, version


def summarize(runs: Sequence[Load]) -> dict[str, Any]:
    out = {}
    for section, (a, b) in PAIRS.items():
        mine, bare = _median(runs, a), _median(runs, b)
        rounds = [
            x.tokens_per_second / y.tokens_per_second
            for x, y in zip(
                (r for r in runs if r.name == a), (r for r in runs if r.name == b), strict=True
            )
        ]
        out[section] = {"a": a, "b": b, "a_tokens_per_second": mine, "b_tokens_per_second": bare,
                        "ratio": mine / bare, "round_ratios": rounds, "target": TARGET,
                        "met": mine / bare >= TARGET}  # fmt: skip
    return out


def cpu_per_token(
    runs: Sequence[Load], cpu: Mapping[str, Sequence[Mapping[str, float]]]
) -> dict[str, dict[str, float]]:
    """Per load: the median CPU milliseconds per completion token of each process."""
    out: dict[str, dict[str, float]] = {}
    for name, samples in cpu.items():
        tokens = [r.tokens for r in runs if r.name == name]
        labels = sorted({k for s in samples for k in s})
        out[name] = {
            k: statistics.median(
                1000 * s.get(k, 0.0) / t for s, t in zip(samples, tokens, strict=True)
            )
            for k in labels
        }
    return out


def results_table(summary: Mapping[str, Any], repeats: int) -> Table:
    table = Table(title="Serving on the vllm engine", title_justify="left")
    table.add_column("measurement (A vs B)", justify="left")
    for name in ("A", "B", "A / B", "rounds", "target", "result"):
        table.add_column(name, justify="right")
    for section, clients in (("concurrency_1", 1), ("concurrency_16", CLIENTS)):
        s = summary[section]
        table.add_row(
            f"tokens/s: modelyard vs bare vLLM, {clients} client{'s' * (clients > 1)} "
            f"(median of {repeats})",
            f"{s['a_tokens_per_second']:,.0f}",
            f"{s['b_tokens_per_second']:,.0f}",
            f"{s['ratio']:.2f}x",
            ", ".join(f"{r:.2f}" for r in s["round_ratios"]),
            f">= {s['target']:.2f}x",
            _verdict(s["met"]),
        )
    return table


def other_cores(
    runs: Sequence[Load], cpu: Mapping[str, Sequence[Mapping[str, float]]]
) -> dict[str, float]:
    """Per load: the median number of cores other processes kept busy meanwhile (noise)."""
    out = {}
    for name, samples in cpu.items():
        seconds = [r.seconds for r in runs if r.name == name]
        out[name] = statistics.median(s[OTHER] / t for s, t in zip(samples, seconds, strict=True))
    return out


def cpu_table(per_token: Mapping[str, Mapping[str, float]], other: Mapping[str, float]) -> Table:
    table = Table(title="CPU ms per completion token (median)", title_justify="left")
    labels = sorted({k for v in per_token.values() for k, ms in v.items() if ms and k != OTHER})
    table.add_column("load", justify="left")
    for label in (*labels, OTHER, "other: cores busy"):
        table.add_column(label, justify="right")
    for name, row in per_token.items():
        cells = (f"{row.get(k, 0.0):.2f}" for k in (*labels, OTHER))
        table.add_row(name, *cells, f"{other[name]:.2f}")
    return table


def benchmark(config: Config, work: Path, python: str, say: Any) -> dict[str, Any]:
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    os.environ["MODELYARD_HOME"] = str(work / "home")  # nothing of the user's is touched
    world = build_world(config, work, say)
    try:
        runs, cpu, version = run_loads(world, config, work, python, say)
    finally:
        world.store.close()
    return {
        "benchmark": "serving_vllm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "vllm": version,
        },
        "config": asdict(config),
        "loads": [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in runs],
        "cpu_seconds": cpu,
        "cpu_ms_per_token": cpu_per_token(runs, cpu),
        "other_processes_cores": other_cores(runs, cpu),
        **summarize(runs),
        "seconds": time.perf_counter() - started,
        "_runs": runs,
    }


def _header(results: Mapping[str, Any], config: Config) -> str:
    m = results["machine"]
    start, end = m["load_average_at_start"], m["load_average_at_end"]
    return (
        f"{results['date']}: {m['cpu_count']} CPUs, vLLM {m['vllm']}, load average "
        f"{'/'.join(f'{x:.1f}' for x in start)} (1/5/15 min) at the start, "
        f"{'/'.join(f'{x:.1f}' for x in end)} at the end; {results['seconds']:.0f} s\n"
        f"base: hidden {config.hidden_size}, {config.layers} layers, {config.heads} heads; "
        f"greedy, max_tokens {config.new_tokens}; {ADAPTERS} adapters; concurrency 1: "
        f"{config.single_requests} requests; concurrency {CLIENTS}: {CLIENTS} clients x "
        f"{config.rounds_per_client} requests; router refresh {config.refresh_seconds:g} s"
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--vllm-python",
        default=os.environ.get("MODELYARD_VLLM_PYTHON") or str(ROOT / ".venv-vllm/bin/python"),
        help="the python of vLLM's environment (default $MODELYARD_VLLM_PYTHON or "
        ".venv-vllm/bin/python, which `make vllm` builds)",
    )
    parser.add_argument("--repeats", type=int, help="rounds of the loads (default 8, quick 2)")
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        help="the app's router refresh interval (default 2, the server's; a diagnostic knob)",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.refresh_seconds is not None and not args.refresh_seconds > 0:
        parser.error("--refresh-seconds must be more than 0")
    return args


def _stop_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C: vLLM is stopped on the way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _quiet()
    _stop_on_sigterm()
    err = Console(stderr=True)
    if not err.is_terminal:
        err.width = 120
    config = VLLM_QUICK if args.quick else VLLM_FULL
    if args.repeats is not None:
        config = replace(config, repeats=args.repeats)
    if args.refresh_seconds is not None:
        config = replace(config, refresh_seconds=args.refresh_seconds)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-bench-vllm-") as tmp:
            results = benchmark(
                config, Path(tmp), args.vllm_python, lambda m: err.print(f"[dim]{m}[/dim]")
            )
    except ModelyardError as exc:
        err.print(f"error: {exc.one_line()}", markup=False, highlight=False)
        return 1
    runs = results.pop("_runs")
    out = err if args.json else Console()
    if not out.is_terminal:
        out.width = 120
    out.print(_header(results, config), highlight=False)
    out.print(runs_table(runs))
    out.print(cpu_table(results["cpu_ms_per_token"], results["other_processes_cores"]))
    out.print(results_table(results, config.repeats))
    if args.json:
        print(json.dumps(finite(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
