"""Near-duplicate detection on templated rows: the old MinHash LSH vs the prefix-filter index.

Rows of one 25-word template with two slots, each drawn from 300 words (what
docs/benchmarks.md measured as quadratic: a row shares a slot's value with many
others, similarity about 0.77, just under the 0.8 threshold). ``near_groups`` alone
is timed, old and new on the same rows, each in a fresh process so that its peak
memory (resident set growth over the process before the call) is its own. The old
algorithm, ``datasketch``'s MinHashLSH with 10 bands of 6 rows, the estimate screen
and exact Jaccard on the rest, is kept below as the reference; it runs up to
``--old-max`` rows (32,000) and is stopped after ``--old-timeout`` seconds, the new
one runs alone beyond (100,000). The groups are compared: the new method is exact,
the old one could miss a pair (recall about 0.95 at similarity 0.8), so a
difference is reported, not hidden. Target: 32,000 rows in under 5 s.

    .venv/bin/python benchmarks/dedup.py            # 8k, 16k, 32k old and new; 100k new
    .venv/bin/python benchmarks/dedup.py --quick    # 2k, 4k old and new; 8k new
    .venv/bin/python benchmarks/dedup.py --json out.json

Exits 0 whatever the numbers. CPU seconds are printed next to wall seconds: on a
machine shared with other work the wall time grows with the load, CPU time less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TARGET_S = 5.0
TARGET_ROWS = 32_000
TEMPLATE = (
    "please review the {a} account of this customer and confirm that the monthly "
    "invoice sent on {b} matches the agreed amount before the week ends"
)
SLOT_WORDS = [f"item{i}" for i in range(300)]


def templated(rows: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        TEMPLATE.format(a=rng.choice(SLOT_WORDS), b=rng.choice(SLOT_WORDS)) for _ in range(rows)
    ]


def old_near_groups(texts: Sequence[str], threshold: float = 0.8) -> list[list[int]]:
    """``near_groups`` before the prefix-filter index (commit e87bd3a), as it was."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH  # type: ignore[import-untyped]

    from modelyard.data._dedup import shingles

    def jaccard(a: set[bytes], b: set[bytes]) -> float:
        shared = len(a & b)
        return shared / (len(a) + len(b) - shared)

    lsh = MinHashLSH(num_perm=64, params=(10, 6))
    sketch = MinHash(num_perm=64, hashfunc=zlib.crc32)
    signatures = np.zeros((len(texts), 64), dtype=sketch.hashvalues.dtype)
    heads: dict[int, set[bytes]] = {}
    members: dict[int, list[int]] = {}
    for i, text in enumerate(texts):
        words = shingles(text)
        if not words:
            continue
        sketch.clear()
        sketch.update_batch(words)
        candidates = np.fromiter(lsh.query(sketch), dtype=np.int64)
        if candidates.size:
            estimate = (signatures[candidates] == sketch.hashvalues).mean(axis=1)
            candidates = candidates[estimate >= threshold - 0.1]
        scored = [(jaccard(words, heads[head]), -head) for head in candidates.tolist()]
        best = max((s for s in scored if s[0] >= threshold), default=None)
        if best is not None:
            members[-best[1]].append(i)
        else:
            heads[i] = words
            members[i] = [i]
            signatures[i] = sketch.hashvalues
            lsh.insert(i, sketch, check_duplication=False)
    return [group for _, group in sorted(members.items()) if len(group) > 1]


def _rss_kib() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def child(method: str, rows: int, out: Path) -> None:
    """One measurement in this (fresh) process; the result goes to ``out`` as JSON."""
    from modelyard.data._dedup import near_groups

    texts = templated(rows)
    run = old_near_groups if method == "old" else near_groups
    run(texts[:50])  # imports and first calls outside the measurement
    before = _rss_kib()
    wall, cpu = time.perf_counter(), time.process_time()
    groups = run(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out.write_text(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_mib": max(peak - before, 0) / 1024,
                "groups": groups,
            }
        )
    )


def measure(method: str, rows: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", method, "--rows", str(rows), "--out"]
        try:
            subprocess.run([*command, str(out)], check=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"timed_out": timeout}
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def _pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {(group[0], member) for group in groups for member in group[1:]}


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "skipped"
    if "timed_out" in result:
        return f"> {result['timed_out']:.0f} s (stopped)"
    return f"{result['wall_s']:6.2f} s ({result['cpu_s']:5.2f} cpu) {result['peak_mib']:6.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8_000, 16_000, 32_000, 100_000])
    parser.add_argument("--old-max", type=int, default=32_000, help="Rows above: new only.")
    parser.add_argument("--old-timeout", type=float, default=300.0, help="Seconds per old run.")
    parser.add_argument("--quick", action="store_true", help="2k, 4k, 8k rows: a smoke test.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.out)
        return
    sizes, old_max = ([2_000, 4_000, 8_000], 4_000) if args.quick else (args.sizes, args.old_max)
    load = os.getloadavg()
    print(f"Near-duplicates of templated rows (load average {load[0]:.2f}, {os.cpu_count()} CPUs)")
    print(f"{'rows':>8} | {'old (MinHash LSH)':<32} | {'new (prefix index)':<32} | speedup | same")
    results = []
    previous: dict[str, Any] | None = None
    for rows in sizes:
        old = measure("old", rows, args.old_timeout) if rows <= old_max else None
        new = measure("new", rows, 600.0)
        speedup = same = ""
        if old and "wall_s" in old and "wall_s" in new:
            speedup = f"{old['wall_s'] / new['wall_s']:.1f}x"
            missing = _pairs(new["groups"]) - _pairs(old["groups"])
            extra = _pairs(old["groups"]) - _pairs(new["groups"])
            same = "yes" if not missing and not extra else f"old -{len(missing)} +{len(extra)}"
        growth = ""
        if previous and "wall_s" in new and "wall_s" in previous["new"]:
            factor = rows / previous["rows"]
            growth = (
                f" ({new['wall_s'] / previous['new']['wall_s']:.1f}x the time"
                f" for {factor:.1f}x the rows)"
            )
        print(f"{rows:>8} | {_cell(old):<32} | {_cell(new):<32} | {speedup:>7} | {same}{growth}")
        for result in (old, new):
            if result:
                result.pop("groups", None)
        results.append({"rows": rows, "old": old, "new": new})
        previous = results[-1]
    at_target = next((r for r in results if r["rows"] == TARGET_ROWS), None)
    if at_target and "wall_s" in at_target["new"]:
        took = at_target["new"]["wall_s"]
        verdict = "PASS" if took < TARGET_S else "MISS"
        print(f"target: {TARGET_ROWS} rows under {TARGET_S:.0f} s: {took:.2f} s {verdict}")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "load_end": load[0]}, indent=2))


if __name__ == "__main__":
    main()
