"""Journey 4 (the SRE): `rollout compare` on an endpoint with a day of busy traffic.

`rollout compare ENDPOINT` reads every record of the endpoint by default; the latency
intervals must not hold hundreds of copies of that sample (the bootstrap did: 2.4 GB
for 200,000 records), and the interval must still hold the percentile it brackets.
"""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.delivery import compare_versions
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

RECORDS = 8_000  # per version: above the bootstrap's limit


def _answered(store: Store, number: int, latencies: Any, start: datetime, step_s: int) -> None:
    """Answered requests of bot:NUMBER on `support`, one per latency, ``step_s`` apart."""
    tenant = store.get_tenant("acme").id
    version = store.get_model_version("bot", number).id
    store.add_inference_records(
        NewInferenceRecord(
            id=f"r{number}-{i}",
            endpoint_name="support",
            route="chat.completions",
            latency_ms=float(ms),
            status="ok",
            http_status=200,
            tenant_id=tenant,
            version_id=version,
            prompt="Q?",
            response="A.",
            created_at=start + timedelta(seconds=i * step_s),
        )
        for i, ms in enumerate(latencies)
    )


def _busy_day(store: Store) -> list[float]:
    """A day of answered requests of bot:1 and bot:2 on `support`; bot:1's latencies."""
    fake_world(store)
    store.set_traffic("support", {1: 50, 2: 50})
    rng = np.random.default_rng(7)
    start = datetime.now(UTC) - timedelta(hours=23)
    latencies = {1: rng.lognormal(3.0, 0.5, RECORDS), 2: rng.lognormal(3.1, 0.5, RECORDS)}
    for number, values in latencies.items():
        _answered(store, number, values, start, step_s=4)
    return [float(v) for v in latencies[1]]


def test_compare_of_a_busy_endpoint_keeps_memory_bounded(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        latencies = _busy_day(store)
        tracemalloc.start()
        try:
            report = compare_versions(store, "support", datetime.now(UTC) - timedelta(days=1))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # reading the rows takes about 37 MiB; 500 bootstrap resamples of them took 94 MiB
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    v1 = next(v for v in report.versions if v.version == "bot:1")
    assert v1.requests == RECORDS
    for q, value, ci in ((50, v1.p50_latency_ms, v1.p50_latency_ci),
                         (95, v1.p95_latency_ms, v1.p95_latency_ci)):  # fmt: skip
        assert value == float(np.percentile(latencies, q))
        assert ci is not None and ci[0] < value < ci[1]
        assert ci[1] - ci[0] < 0.1 * value  # 8,000 values: a tight interval
    [c] = report.comparisons
    assert c.verdict.startswith("significant: latency higher")


def test_the_intervals_do_not_depend_on_the_order_the_database_gives_the_rows(
    tmp_path: Path,
) -> None:
    """The same records, written in two orders (a database returns rows in no set order):
    `rollout compare` shows the same bootstrapped intervals for both."""
    rng = np.random.default_rng(3)
    values = rng.lognormal(3.0, 0.5, 300)  # under the bootstrap's limit
    start = datetime.now(UTC) - timedelta(hours=1)
    reports = []
    for name, order in (("forward", values), ("backward", values[::-1])):
        with Store.open(f"sqlite:///{tmp_path / name}.db") as store:
            fake_world(store)
            _answered(store, 1, order, start, step_s=1)
            reports.append(compare_versions(store, "support", start - timedelta(minutes=1)))
    forward, backward = (next(v for v in r.versions if v.version == "bot:1") for r in reports)
    assert forward.requests == backward.requests == 300
    assert forward.p50_latency_ci == backward.p50_latency_ci is not None
    assert forward.p95_latency_ci == backward.p95_latency_ci is not None
