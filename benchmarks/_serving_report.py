"""The tables and text of ``serving.py``'s report (kept apart: the script is long enough)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table


def _verdict(met: bool | None) -> str:
    if met is None:
        return ""
    return "[green]PASS[/green]" if met else "[red]MISS[/red]"


TITLES = {
    "server_vs_generate": "tokens/s: server at concurrency 1 vs in-process model.generate",
    "batching": "tokens/s: 8 clients on 8 adapters vs the same requests one at a time",
    "adapters": "tokens/s: 8 clients on 64 adapters (cache of 8) vs on 1 adapter",
    "records": "tokens/s: inference records on vs off (8 clients, 8 adapters; two processes)",
    "server_vs_engine": "tokens/s: server at concurrency 1 vs its engine in process (no HTTP)",
}


def results_table(summary: Mapping[str, Any], repeats: int) -> Table:
    table = Table(title="Serving throughput", title_justify="left")
    table.add_column("measurement (A vs B)", justify="left")
    for name in ("A", "B", "A / B", "target", "result"):
        table.add_column(name, justify="right")
    for section, title in TITLES.items():
        s = summary.get(section)
        if s is None:
            continue
        table.add_row(
            f"{title} (median of {repeats})",
            f"{s['a_tokens_per_second']:,.0f}",
            f"{s['b_tokens_per_second']:,.0f}",
            f"{s['ratio']:.2f}x",
            "" if s["target"] is None else f">= {s['target']:.2f}x",
            _verdict(s["met"]),
        )
    return table


def runs_table(runs: Sequence[Any]) -> Table:
    table = Table(title="Loads (in the order they ran)", title_justify="left")
    columns = ("load", "repeat", "requests", "tokens", "ended early", "batches", "loads")
    for name in (*columns, "s", "tokens/s", "gc", "gc s"):
        table.add_column(name, justify="left" if name == "load" else "right")
    for r in runs:
        table.add_row(
            r.name,
            str(r.repeat),
            str(r.requests),
            f"{r.tokens:,}",
            str(r.short),
            "" if r.batches is None else str(r.batches),
            "" if r.adapter_loads is None else str(r.adapter_loads),
            f"{r.seconds:.2f}",
            f"{r.tokens_per_second:,.0f}",
            str(getattr(r, "gc_collections", "")),
            f"{getattr(r, 'gc_seconds', 0.0):.2f}",
        )
    return table


def _header(results: Mapping[str, Any], config: Any, clients: int, cache: int) -> str:
    m = results["machine"]
    return (
        f"{results['date']}: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
        f"load average {m['load_average_1m_at_start']:.1f} at the start, "
        f"{m['load_average_1m']:.1f} at the end; torch {m['torch']}, transformers "
        f"{m['transformers']}, peft {m['peft']}\n"
        f"base: hidden {config.hidden_size}, {config.layers} layers; greedy, max_tokens "
        f"{config.new_tokens}; {clients} clients x {config.rounds_per_client} requests; "
        f"adapter cache {cache}, batch window {config.batch_window_ms:g} ms, "
        f"router refresh {config.refresh_seconds:g} s; "
        f"{config.preload:,} records in the store before the loads"
    )


def records_table(records: Mapping[str, Any]) -> Table:
    """Each records round: its side-by-side pairs' ratios (on / off) and their geometric mean."""
    title = "Records rounds: on / off, two serving processes at the same moment"
    if records["control"]:
        title += " (control: records off on both sides)"
    table = Table(title=title, title_justify="left")
    for name in ("round", "pairs (in the order they ran)", "lowest", "highest", "geometric mean"):
        table.add_column(name, justify="left" if name.startswith("pairs") else "right")
    for i, (pairs, ratio) in enumerate(zip(records["pairs"], records["rounds"], strict=True)):
        table.add_row(
            str(i + 1),
            " ".join(f"{p:.3f}" for p in pairs),
            f"{min(pairs):.3f}",
            f"{max(pairs):.3f}",
            f"{ratio:.3f}x",
        )
    return table
