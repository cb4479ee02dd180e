"""Batch on Ray: what answering a job's rows on Ray actors costs on one node, against the same
job answered in the driver's process.

The world of ``benchmarks/batch.py`` (one tiny base, one LoRA adapter with random weights
behind one endpoint, alpaca rows asked as an instruction and an input, greedy,
``max_tokens`` fixed, concurrency 16), and one Ray started once on this machine (an
existing cluster, as ``--ray ADDRESS`` finds one) with one CPU. Each job is the real
command, ``modelyard batch run``, in a process of its own (one torch thread), from its
start to the output written, cold each time:

- **local**: the command's process builds the engine, the model loaded by its first row;
- **ray**: ``--ray ADDRESS``: the command connects, one actor of one CPU is started for the
  job, builds its own engine, store connection and data plane, answers blocks of rows and
  writes their records; the command commits what comes back.

Two job sizes, round-robin, ``repeats`` times: the ratio of rows/s (ray / local) at each size,
and a straight line through each side's times (seconds = start + rows x per row) that splits
the overhead into a fixed start-up and a per-row part. A measurement, not a test: exits 0.

    .venv/bin/python benchmarks/batch_ray.py           # about 6 minutes on 2 CPU cores
    .venv/bin/python benchmarks/batch_ray.py --quick   # smoke test
    .venv/bin/python benchmarks/batch_ray.py --json    # JSON on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from batch import FULL, QUICK, Config, World, build_world, machine
from rich.console import Console
from rich.table import Table

from modelyard.batch import import_ray

ENDPOINT = "bench-support"
CONCURRENCY = 16
SIZES = {"full": (48, 160), "quick": (16, 48)}


@dataclass(frozen=True)
class Job:
    side: str  # local | ray
    rows: int
    repeat: int
    seconds: float
    tokens: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def rows_file(world: World, rows: int, work: Path) -> Path:
    """The first ``rows`` rows of the world's input (repeated when it has fewer)."""
    table = [world.rows[i % len(world.rows)] for i in range(rows)]
    path = work / f"rows-{rows}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in table))
    return path


def run_job(world: World, config: Config, work: Path, side: str, rows: int, repeat: int,
            address: str) -> Job:  # fmt: skip
    """One job through the real command, in a process of its own, as a user runs it."""
    command = [sys.executable, "-m", "modelyard", "batch", "run", str(rows_file(world, rows, work)),
               "-o", str(work / f"out-{side}.jsonl"), "-e", ENDPOINT, "--field",
               "instruction=instruction", "--field", "input=input", "--max-tokens",
               str(config.new_tokens), "--concurrency", str(CONCURRENCY), "--max-batch-size",
               str(CONCURRENCY), "--overwrite", "--json"]  # fmt: skip
    if side == "ray":
        command += ["--ray", address]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {
        "MODELYARD_HOME": str(work / "home"),
        "MODELYARD_STORE_URL": f"sqlite:///{work / 'store.db'}",
        "MODELYARD_ARTIFACTS": str(work / "artifacts"),
        "MODELYARD_API_KEY": world.key,
        "OMP_NUM_THREADS": "1",  # as each actor of one CPU (Ray sets the same)
    }
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the {side} job failed: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    if summary["failed"] or summary["answered"] != rows:
        raise SystemExit(f"the {side} job did not answer every row: {summary['first_error']}")
    return Job(side, rows, repeat, seconds, summary["completion_tokens"])


def fit(jobs: Sequence[Job]) -> tuple[float, float]:
    """(start-up seconds, seconds per row) of a least-squares line through the jobs."""
    xs = [float(j.rows) for j in jobs]
    ys = [j.seconds for j in jobs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - slope * mx, slope


def summarize(jobs: Sequence[Job], sizes: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rows in sizes:
        local = statistics.median(j.rows_per_second for j in jobs if (j.side, j.rows) ==
                                  ("local", rows))  # fmt: skip
        ray = statistics.median(j.rows_per_second for j in jobs if (j.side, j.rows) ==
                                ("ray", rows))  # fmt: skip
        out[f"rows_{rows}"] = {"local_rows_per_second": local, "ray_rows_per_second": ray,
                               "ratio": ray / local}  # fmt: skip
    for side in ("local", "ray"):
        start, per_row = fit([j for j in jobs if j.side == side])
        out[f"{side}_line"] = {"start_s": start, "per_row_s": per_row}
    out["startup_overhead_s"] = out["ray_line"]["start_s"] - out["local_line"]["start_s"]
    out["per_row_ratio"] = out["ray_line"]["per_row_s"] / out["local_line"]["per_row_s"]
    return out


def table(summary: Mapping[str, Any], sizes: Sequence[int], config: Config) -> Table:
    t = Table(title="Batch on Ray, one node", title_justify="left")
    for name in ("job (median of repeats)", "local rows/s", "ray rows/s", "ray / local"):
        t.add_column(name, justify="left" if name.startswith("job") else "right")
    for rows in sizes:
        s = summary[f"rows_{rows}"]
        t.add_row(f"{rows} rows, concurrency {CONCURRENCY}, max_tokens {config.new_tokens}",
                  f"{s['local_rows_per_second']:.1f}", f"{s['ray_rows_per_second']:.1f}",
                  f"{s['ratio']:.2f}x")  # fmt: skip
    local, ray = summary["local_line"], summary["ray_line"]
    t.add_row("start-up (s), from the fitted line", f"{local['start_s']:.1f}",
              f"{ray['start_s']:.1f}", f"+{summary['startup_overhead_s']:.1f} s")  # fmt: skip
    t.add_row("ms per row, from the fitted line", f"{local['per_row_s'] * 1000:.0f}",
              f"{ray['per_row_s'] * 1000:.0f}", f"{summary['per_row_ratio']:.2f}x")  # fmt: skip
    return t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeats", type=int, help="jobs per side and size (default 3, quick 1)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    sizes = SIZES["quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.quick else 3)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    console = Console(stderr=True)
    torch.set_num_threads(1)  # building the world; each job runs one thread too
    ray = import_ray()
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    jobs: list[Job] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-batch-ray-bench-") as tmp:
        work = Path(tmp)
        os.environ["MODELYARD_HOME"] = str(work / "home")  # nothing of the user's is touched
        world = build_world(config, work, console.print)
        world.store.close()  # the jobs open it, as the command does
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the "cluster"
        address = ray.get_runtime_context().gcs_address
        try:
            console.print("warm-up: one small job per side (not counted)")
            for side in ("local", "ray"):
                run_job(world, config, work, side, 8, 0, address)
            for repeat in range(1, repeats + 1):
                for rows in sizes:
                    for side in ("local", "ray"):
                        job = run_job(world, config, work, side, rows, repeat, address)
                        jobs.append(job)
                        console.print(
                            f"{side:<5} {rows:>3} rows, repeat {repeat}/{repeats}: "
                            f"{job.rows_per_second:6.1f} rows/s ({job.seconds:.1f} s)"
                        )
        finally:
            ray.shutdown()
    summary = summarize(jobs, sizes)
    results = {
        "benchmark": "batch_ray",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "ray": ray.__version__, "load_average_1m_at_start": load_at_start},
        "config": asdict(config) | {"sizes": list(sizes), "repeats": repeats},
        "jobs": [{**asdict(j), "rows_per_second": j.rows_per_second} for j in jobs],
        **summary,
        "seconds": time.perf_counter() - started,
    }
    m = results["machine"]
    console.print(
        f"{results['date']}: {m['cpu_count']} CPUs, Ray {m['ray']}, load average "
        f"{load_at_start:.1f} at the start, {m['load_average_1m']:.1f} at the end"
    )
    console.print(table(summary, sizes, config))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
