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


def child(input_path: Path, output: Path, work: Path) -> int:
    """Build a store and run one job; print one JSON line (``--child``)."""
    import modelyard
    from modelyard.access import create_api_key
    from modelyard.batch import FileJobSpec, run_file_job
    from modelyard.serving import EchoEngine, SamplingParams
    from modelyard.store import Store

    os.environ["MODELYARD_HOME"] = str(work / "home")
    with Store.open(f"sqlite:///{work / 'store.db'}") as store:
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
        summary = run_file_job(store, EchoEngine(), spec)
        seconds = time.perf_counter() - started
        records = store.count_inference_records(job_id=summary.job_id)
    print(json.dumps({
        "modelyard": str(Path(modelyard.__file__).parent),
        "rows": summary.rows, "answered": summary.answered, "failed": summary.failed,
        "records": records, "seconds": round(seconds, 1),
        "rows_per_second": round(summary.answered / seconds, 1),
        "baseline_mib": round(baseline, 1), "peak_mib": round(peak_rss_mib(), 1),
        "job_id": summary.job_id,
    }))  # fmt: skip
    return 0


def _normalized_digest(path: Path, job_id: str) -> str:
    """The output's sha256 with the job's id taken out of its record ids."""
    digest = hashlib.sha256()
    pattern = re.compile(re.escape(job_id).encode())
    with path.open("rb") as fh:
        for line in fh:
            digest.update(pattern.sub(b"JOB", line))
    return digest.hexdigest()


def run_side(side: str, src: str | None, input_path: Path, tmp: Path, timeout: int) -> Any:
    work = tmp / f"{side}-{input_path.stem}"
    work.mkdir()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    command = [sys.executable, __file__, "--child", str(input_path), str(work / "out.jsonl"),
               str(work)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"the {side} job failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["side"] = side
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
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per job at most")
    parser.add_argument("--json", action="store_true", help="the results as JSON on stdout")
    parser.add_argument("--child", nargs=3, metavar=("INPUT", "OUTPUT", "WORK"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.child:
        return child(*(Path(p) for p in args.child))
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
            for side, src in sides:
                result = run_side(side, src, input_path, tmp, args.timeout)
                result["input_mib"] = round(mib, 1)
                results.append(result)
                print(f"{side:<3} {rows:>9,} rows ({mib:6.1f} MiB in): peak "
                      f"{result['peak_mib']:7.1f} MiB, baseline {result['baseline_mib']:6.1f}, "
                      f"job {result['job_mib']:7.1f} MiB; {result['seconds']:7.1f} s, "
                      f"{result['rows_per_second']:7.1f} rows/s  [{result['modelyard']}]",
                      file=sys.stderr)  # fmt: skip
            digests = {r["output_sha256"] for r in results if r["rows"] == rows}
            if len(digests) > 1:
                same = False
                print(f"the outputs of {rows} rows differ between old and new", file=sys.stderr)
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
