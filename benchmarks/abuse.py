"""Abuse: one tenant floods the server, another sends normal traffic; what does the other see?

The server is the real app (``create_app`` on the ``EchoEngine``, default
``ServerLimits``: 1 MiB bodies, 262,144 prompt characters, 4 tokenizing
requests per tenant, 10 refusals stored per key per minute), served by
``BackgroundServer`` on 127.0.0.1 in a child process of its own, the flood in
another (so neither client shares an interpreter with the server or with the
other), over a SQLite store in a temporary directory. On a machine of 2 CPUs
or more the server runs alone on CPU 0 and both clients on the others, the
flood at the lowest priority (``nice 19``): in production the attacker's
client does not run on the server's or the victim's CPU, and on two shared
cores the flood's own client (not the server) was what delayed the good
tenant. ``--no-pin`` lets them share. Tenant ``good`` sends one small completion at a time,
all along; tenant ``bad`` (a key limited to 60 requests/min) floods with
``--flooders`` threads in two phases:

1. ``large``: 1 MB prompts (``"word " * 200000``, refused 400 for their
   characters, or 429 once the key is over its minute) mixed with small
   over-limit requests;
2. ``small``: small over-limit requests only (429).

Printed side by side: the good tenant's median and p99 latency in the
baseline (no flood) and in each phase, with the p99 ratio to the baseline
(target <= 2); the refused requests of the flood and the rows they added to
``inference_records`` (target: at most 10 per key per minute, i.e. a counter,
not a row, per refusal); the server's RSS before and after (target: bounded,
no growth with the flood's size). Bounded in time (``--seconds`` per phase)
and in count (``--max-requests`` per phase). Ratios, not timed assertions: it
exits 0 whether or not a target is met.

    .venv/bin/python benchmarks/abuse.py            # about 50 s
    .venv/bin/python benchmarks/abuse.py --quick    # smoke test, about 10 s
    .venv/bin/python benchmarks/abuse.py --json     # JSON on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from modelyard.access import create_api_key
from modelyard.store import Store

BIG_PROMPT = "word " * 200_000  # 1,000,000 characters


def _world(url: str) -> tuple[str, str]:
    """Two tenants, each with an endpoint; returns (good key, bad key)."""
    with Store.open(url) as store:
        store.register_base_model("tiny", "/models/tiny", {})
        for tenant in ("good", "bad"):
            store.create_tenant(tenant, storage_policy="full")
            store.create_registered_model(f"{tenant}-bot", tenant=tenant)
            version = store.create_model_version(
                f"{tenant}-bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
                run_id=None, lineage={"prompt_template": "text"}, metrics={},
            )  # fmt: skip
            store.create_endpoint(f"{tenant}-support", model_ref=version.ref, tenant=tenant)
        _, good = create_api_key(store, "good")
        _, bad = create_api_key(store, "bad", rpm_limit=60)
    return good, bad


def _pin(cpus: set[int] | None) -> None:
    """Keep this process on ``cpus`` (``--pin``); nothing when None."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def _serve(url: str, port: Any, stop: Any, cpus: set[int] | None = None) -> None:
    """The child process: the app on 127.0.0.1 until ``stop`` is set."""
    _pin(cpus)
    from modelyard.serving import BackgroundServer, EchoEngine, create_app

    with Store.open(url) as store:
        app = create_app(store, EchoEngine(), refresh_seconds=2.0, heartbeat_s=None)
        with BackgroundServer(app) as server:
            port.value = server.port
            stop.wait()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Phase:
    name: str
    good_requests: int
    good_p50_ms: float
    good_p99_ms: float
    p99_ratio: float | None
    flood_statuses: dict[str, int]
    rows_added: int  # by the flood's refused requests (its answered ones not counted)
    refused: int
    rss_mb_after: float


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _flood(
    base: str, bad: str, kind: str, flooders: int, cap: int, stop: Any, out: Any,
    cpus: set[int] | None = None,
) -> None:  # fmt: skip
    """A child process of its own: ``flooders`` threads send ``kind`` traffic until ``stop``;
    their statuses go to ``out`` (a queue) as one dict. Pinned (``cpus``), it also runs at
    the lowest priority: the good tenant's client shares its CPU and must not wait for it."""
    _pin(cpus)
    if cpus:
        os.nice(19)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    sent = [0]
    big_body = json.dumps({"model": "bad-support", "prompt": BIG_PROMPT, "max_tokens": 8})
    small_body = json.dumps({"model": "bad-support", "prompt": "a b c", "max_tokens": 8})

    def flood(i: int) -> None:
        headers = {"Authorization": f"Bearer {bad}", "Content-Type": "application/json"}
        with httpx.Client(base_url=base, timeout=60) as http:
            n = 0
            while not stop.is_set():
                with lock:
                    if sent[0] >= cap:
                        return
                    sent[0] += 1
                body = big_body if kind == "large" and (n + i) % 2 == 0 else small_body
                n += 1
                try:
                    status = http.post("/v1/completions", content=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(flooders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(statuses))


def _run_phase(
    base: str,
    good: str,
    bad: str,
    kind: str,
    seconds: float,
    flooders: int,
    cap: int,
    cpus: set[int] | None = None,
) -> tuple[list[float], Counter[int]]:
    """The good tenant's latencies (s) while a flooding process sends ``kind`` traffic (none
    when ``kind`` is empty). Three processes: the server, the flood, the good tenant (here)."""
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    child = None
    if kind:
        child = ctx.Process(target=_flood, args=(base, bad, kind, flooders, cap, stop, out, cpus))
        child.start()
        time.sleep(1.0)  # the flood is running before the good tenant's requests start
    latencies: list[float] = []
    body = {"model": "good-support", "prompt": "how do I reset my password", "max_tokens": 8}
    with httpx.Client(base_url=base, timeout=60) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(latencies) < cap:
            started = time.perf_counter()
            r = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {good}"})
            latencies.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise SystemExit(f"the good tenant got {r.status_code}: {r.text[:200]}")
    statuses: Counter[int] = Counter()
    if child is not None:
        stop.set()
        statuses.update(out.get(timeout=120))
        child.join(30)
    return latencies, statuses


def _rows(url: str) -> int:
    with Store.open(url, migrate=False) as store:
        return store.count_inference_records()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per flood phase")
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    parser.add_argument("--flooders", type=int, default=6)
    parser.add_argument("--max-requests", type=int, default=20_000, help="per phase, per side")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the three processes share every CPU (by default the server runs alone on "
        "CPU 0, the clients on the others, the flood at the lowest priority)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.baseline_seconds, args.flooders = 3.0, 2.0, 3
    out = sys.stderr if args.json else sys.stdout

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/abuse.db"
        good, bad = _world(url)
        ctx = multiprocessing.get_context("spawn")
        port, stop = ctx.Value("i", 0), ctx.Event()
        cpus = os.sched_getaffinity(0)
        server_cpus = {min(cpus)} if args.pin and len(cpus) > 1 else None
        client_cpus = cpus - server_cpus if server_cpus else None
        child = ctx.Process(target=_serve, args=(url, port, stop, server_cpus))
        child.start()
        _pin(client_cpus)
        try:
            deadline = time.monotonic() + 60
            while port.value == 0:
                if not child.is_alive() or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            base = f"http://127.0.0.1:{port.value}"
            assert child.pid is not None
            _run_phase(base, good, bad, "", 1.0, 0, args.max_requests)  # warm-up
            rss_before = _rss_mb(child.pid)
            phases: list[Phase] = []
            baseline_p99 = None
            for name, kind, seconds in (
                ("baseline", "", args.baseline_seconds),
                ("large", "large", args.seconds),
                ("small", "small", args.seconds),
            ):
                time.sleep(1.0)  # the writer drains the previous phase
                rows_before = _rows(url)
                latencies, statuses = _run_phase(
                    base, good, bad, kind, seconds, args.flooders, args.max_requests, client_cpus
                )
                time.sleep(1.5)
                good_rows = len(latencies)
                p99 = _p(latencies, 0.99) * 1000
                if baseline_p99 is None:
                    baseline_p99 = p99
                refused = sum(n for s, n in statuses.items() if s != 200)
                phases.append(
                    Phase(
                        name,
                        good_rows,
                        statistics.median(latencies) * 1000,
                        p99,
                        None if kind == "" else p99 / baseline_p99,
                        {str(s): n for s, n in sorted(statuses.items())},
                        _rows(url) - rows_before - good_rows - statuses[200],
                        refused,
                        _rss_mb(child.pid),
                    )
                )
            metrics = httpx.get(base + "/metrics").text
        finally:
            stop.set()
            child.join(30)
    refused_counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("modelyard_refused_total{") and 'tenant="bad"' in line
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f"; {args.flooders} flooders, {args.seconds:g} s per phase"
        + (
            f"; server on CPU {sorted(server_cpus)}, clients on {sorted(client_cpus or ())}"
            if server_cpus
            else "; no pinning"
        ),
        file=out,
    )
    print(
        f"server RSS: {rss_before:.0f} MB before, {phases[-1].rss_mb_after:.0f} MB after", file=out
    )
    header = (
        f"{'phase':<9}{'good reqs':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99/base':>10}"
        f"{'refused':>9}{'rows+':>7}  flood statuses"
    )
    print(header, file=out)
    for p in phases:
        ratio = "" if p.p99_ratio is None else f"{p.p99_ratio:.2f}"
        print(
            f"{p.name:<9}{p.good_requests:>10}{p.good_p50_ms:>9.1f}{p.good_p99_ms:>9.1f}"
            f"{ratio:>10}{p.refused:>9}{p.rows_added:>7}  {p.flood_statuses}",
            file=out,
        )
    print(
        f"refusals counted in modelyard_refused_total (tenant bad): {refused_counted:.0f}", file=out
    )
    if args.json:
        print(
            json.dumps(
                {
                    "rss_mb_before": rss_before,
                    "phases": [asdict(p) for p in phases],
                    "refused_counted": refused_counted,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
