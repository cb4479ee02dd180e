"""What keeping the token usage costs the record writer: ``add_monitored_records`` (the
request journal's write) with the day's usage added in its transaction, against the same
write with that step skipped, batches alternating in one process on one store.

The store is SQLite in a temporary directory, or ``--url`` (a PostgreSQL database the
script may fill: tables as ``modelyard init`` makes them). Each batch holds ``--batch``
ended records of one tenant's two keys on one version (the writer's batches: one per
flush). Prints the median time of a batch each way and their ratio. Exits 0 whatever the
numbers.

    .venv/bin/python benchmarks/usage_write.py --batch 200 --batches 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=200, help="Records per write.")
    p.add_argument("--batches", type=int, default=300, help="Writes each way.")
    p.add_argument("--url", help="A PostgreSQL database (default: SQLite in a temp dir).")
    args = p.parse_args()

    import modelyard.store._records as records_module
    from modelyard.store import NewInferenceRecord, Store
    from worlds import two_tenant_world

    with tempfile.TemporaryDirectory() as d:
        url = args.url or f"sqlite:///{d}/usage.db"
        with Store.open(url, audit_key="5e" * 32) as store:
            two_tenant_world(store, versions=1)
            tenant = store.get_tenant("acme").id
            version = store.get_model_version("acme-bot", 1).id
            now = datetime.now(UTC)
            kept = records_module.add_usage
            times: dict[str, list[float]] = {"usage kept": [], "usage skipped": []}

            def skipped(*_: Any, **__: Any) -> None:
                return None

            for b in range(2 * args.batches):
                side = "usage kept" if b % 2 == 0 else "usage skipped"
                records_module.add_usage = kept if side == "usage kept" else skipped  # type: ignore[assignment]
                batch = [
                    (NewInferenceRecord(
                        id=f"r{b}-{i}", endpoint_name="acme-support", route="completions",
                        latency_ms=1.0, status="ok", http_status=200, tenant_id=tenant,
                        prompt="p", response="r", prompt_tokens=40, completion_tokens=20,
                        version_id=version, api_key_id="k1" if i % 2 else "k2", created_at=now,
                    ), None)
                    for i in range(args.batch)
                ]  # fmt: skip
                started = time.perf_counter()
                store.add_monitored_records(batch, server_id="bench")
                times[side].append(time.perf_counter() - started)
            records_module.add_usage = kept
    medians = {side: statistics.median(t) * 1000 for side, t in times.items()}
    for side, ms in medians.items():
        print(f"{side:14} {ms:8.3f} ms a write of {args.batch} records")
    ratio = medians["usage kept"] / medians["usage skipped"]
    per_record_us = (medians["usage kept"] - medians["usage skipped"]) * 1000 / args.batch
    print(f"ratio kept/skipped {ratio:.3f} ({per_record_us:+.2f} us a record)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
