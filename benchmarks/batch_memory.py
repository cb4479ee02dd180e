"""Batch job memory: the peak RSS of ``run_file_job`` on the echo engine, by input size.

One JSONL input per size (an id column and a 12-word prompt a row), answered by
``run_file_job`` (what ``modelyard batch run`` runs) through an endpoint on the
``EchoEngine`` into a JSONL output, records written to a SQLite store. Each job
runs in a child process of its own, which reports its peak resident set size
(``VmHWM``) after its imports and world are built (the baseline) and after the
job (the peak): the job's share is the difference.

With ``--old-src DIR`` every size also runs with ``PYTHONPATH=DIR`` (a worktree of
an earlier commit, ``git worktree add /tmp/batch_old HEAD``; its ``src``), in the
same run, the same input file, one after the other: old against new. The outputs
of both sides must be the same bytes (the record ids aside: each job has its own id).

    .venv/bin/python benchmarks/batch_memory.py --rows 100000 1000000 --old-src /tmp/batch_old/src
    .venv/bin/python benchmarks/batch_memory.py --rows 20000          # a quick look

With ``--ray ADDRESS`` (``local``: a Ray of one CPU started by each child for its
job) every size also runs on Ray (``RayJobRunner``, one actor of one CPU, the echo
engine in the actor), old and new sides alike, after the local job of the new code:
what is measured is then the driver's peak above its start (Ray connected, Ray Data
and pyarrow imported: the driver's own size), not the actor's or Ray's processes.
Every side's output must be the same bytes as the local job's.

    .venv/bin/python benchmarks/batch_memory.py --rows 100000 300000 --ray local \
        --old-src /tmp/ray_old/src --no-local

A measurement, not a test: exits 0 whatever the numbers (1 when a child fails or the
outputs differ).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WORDS = ("claim", "roof", "water", "policy", "storm", "car", "glass", "window", "deductible",
         "adjuster")  # fmt: skip
TENANT, ENDPOINT = "bench", "bench-support"


def peak_rss_mib() -> float:
    """This process's own peak resident set size so far (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no /proc/self/status: this benchmark reads VmHWM (Linux)")


def write_input(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            words = " ".join(rng.choice(WORDS) for _ in range(12))
            fh.write(json.dumps({"id": f"T-{i:07d}", "prompt": f"ticket {i}: {words}"}) + "\n")


def child(input_path: Path, output: Path, work: Path, ray: str | None = None) -> int:
    """Build a store and run one job (on Ray at ``ray``: one actor of one CPU); print one
    JSON line (``--child``)."""
    import contextlib

    import modelyard
    from modelyard.access import create_api_key
    from modelyard.batch import FileJobSpec, JobRunner, RunnerFactory, run_file_job
    from modelyard.serving import EchoEngine, SamplingParams
    from modelyard.store import Store

    os.environ["MODELYARD_HOME"] = str(work / "home")
    os.environ["MODELYARD_STORE_URL"] = f"sqlite:///{work / 'store.db'}"  # the actor's too
    runner: RunnerFactory = JobRunner
    cluster: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if ray is not None:
        runner, cluster = _ray_runner(ray)
    with Store.open(f"sqlite:///{work / 'store.db'}") as store, cluster:
        store.register_base_model("tiny", "/models/tiny", {})
        store.create_tenant(TENANT, storage_policy="full")
        store.create_registered_model("bot", tenant=TENANT)
        version = store.create_model_version(
            "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
            lineage={"prompt_template": "text"}, metrics={},
        )  # fmt: skip
        store.create_endpoint(ENDPOINT, model_ref=version.ref, tenant=TENANT)
        _, key = create_api_key(store, TENANT, scopes=("infer",))
        spec = FileJobSpec(
            input=input_path, output=output, params=SamplingParams(max_tokens=8),
            id_columns=("id",), endpoint=ENDPOINT, api_key=key, concurrency=32,
        )  # fmt: skip
        baseline = peak_rss_mib()
        started = time.perf_counter()
        summary = run_file_job(store, EchoEngine(), spec, runner=runner)
        seconds = time.perf_counter() - started
        records = store.count_inference_records(job_id=summary.job_id)
    print(json.dumps({
        "modelyard": str(Path(modelyard.__file__).parent),
        "rows": summary.rows, "answered": summary.answered, "failed": summary.failed,
        "records": records, "seconds": round(seconds, 1),
        "rows_per_second": round(summary.answered / seconds, 1),
        "baseline_mib": round(baseline, 1), "peak_mib": round(peak_rss_mib(), 1),
        "job_id": summary.job_id, "ray": ray,
    }))  # fmt: skip
    return 0


def _ray_runner(address: str) -> tuple[Any, Any]:
    """A runner of one Ray actor of one CPU (the echo engine), and Ray connected for the
    job; Ray Data and pyarrow imported before the baseline is read (the driver's own)."""
    import functools

    import pyarrow  # noqa: F401
    import ray.data  # noqa: F401

    from modelyard.batch import EngineSpec, RayJobRunner, RayOptions, WorkerSpec, ray_cluster
    from modelyard.serving import ServerLimits
    from modelyard.settings import Settings

    options = RayOptions(address, actors=1, cpus=1.0)
    limits = ServerLimits(max_tokens=256)
    worker = WorkerSpec.of(Settings(), actor="bench", engine=EngineSpec("echo"), limits=limits)
    runner = functools.partial(RayJobRunner, options=options, worker=worker)
    return runner, ray_cluster(options, store_dialect="sqlite")


def _normalized_digest(path: Path, job_id: str) -> str:
    """The output's sha256 with the job's id taken out of its record ids."""
    digest = hashlib.sha256()
    pattern = re.compile(re.escape(job_id).encode())
    with path.open("rb") as fh:
        for line in fh:
            digest.update(pattern.sub(b"JOB", line))
    return digest.hexdigest()


def run_side(
    side: str, src: str | None, input_path: Path, tmp: Path, timeout: int, ray: str | None = None
) -> Any:
    work = tmp / f"{side}-{'ray-' if ray else ''}{input_path.stem}"
    work.mkdir()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    command = [sys.executable, __file__, "--child", str(input_path), str(work / "out.jsonl"),
               str(work), *(["--child-ray", ray] if ray else [])]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"the {side} job failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["side"] = f"{side} ray" if ray else side
    result["job_mib"] = round(result["peak_mib"] - result["baseline_mib"], 1)
    result["output_sha256"] = _normalized_digest(work / "out.jsonl", result["job_id"])
    for path in sorted(work.rglob("*"), reverse=True):  # the store and output are large
        path.unlink() if path.is_file() else path.rmdir()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--old-src", help="the src directory of the code to compare with")
    parser.add_argument(
        "--sides",
        choices=("both", "old", "new"),
        default="both",
        help="with --old-src: run only one side (a long size on its own)",
    )
    parser.add_argument(
        "--ray", metavar="ADDRESS", help="also run each side on Ray there (local: a Ray per job)"
    )
    parser.add_argument(
        "--no-local", action="store_true", help="with --ray: only the Ray jobs, no local ones"
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per job at most")
    parser.add_argument("--json", action="store_true", help="the results as JSON on stdout")
    parser.add_argument("--child", nargs=3, metavar=("INPUT", "OUTPUT", "WORK"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--child-ray", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*(Path(p) for p in args.child), ray=args.child_ray)
    load_at_start = os.getloadavg()[0]
    results = []
    same = True
    with tempfile.TemporaryDirectory(prefix="modelyard-batch-memory-") as name:
        tmp = Path(name)
        for rows in args.rows:
            input_path = tmp / f"in-{rows}.jsonl"
            write_input(input_path, rows)
            mib = input_path.stat().st_size / (1 << 20)
            sides = [("old", args.old_src)] if args.old_src else []
            sides.append(("new", None))
            sides = [s for s in sides if args.sides in ("both", s[0])]
            runs = [] if args.ray and args.no_local else [(s, src, None) for s, src in sides]
            if args.ray:
                runs += [(s, src, args.ray) for s, src in sides]
            for side, src, ray in runs:
                result = run_side(side, src, input_path, tmp, args.timeout, ray)
                result["input_mib"] = round(mib, 1)
                results.append(result)
                print(f"{result['side']:<7} {rows:>9,} rows ({mib:6.1f} MiB in): peak "
                      f"{result['peak_mib']:7.1f} MiB, baseline {result['baseline_mib']:6.1f}, "
                      f"job {result['job_mib']:7.1f} MiB; {result['seconds']:7.1f} s, "
                      f"{result['rows_per_second']:7.1f} rows/s  [{result['modelyard']}]",
                      file=sys.stderr)  # fmt: skip
            digests = {r["output_sha256"] for r in results if r["rows"] == rows}
            if len(digests) > 1:
                same = False
                print(f"the outputs of {rows} rows differ between the sides", file=sys.stderr)
            input_path.unlink()
    load = os.getloadavg()
    print(
        f"{datetime.now(UTC).isoformat(timespec='seconds')}: {os.cpu_count()} CPUs, load "
        f"average {load_at_start:.2f} at the start, {load[0]:.2f} at the end",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps({"benchmark": "batch_memory", "results": results,
                          "load_average_1m": [load_at_start, load[0]]}, indent=2))  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
