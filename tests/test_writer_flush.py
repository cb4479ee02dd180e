"""``RecordWriter.flush`` waits for what was submitted before it, not for an empty queue.

A server's batch worker commits a batch's answers once their records are written
(``flush``), while live requests keep submitting records. The flush waited until the
queue was empty, which steady traffic never leaves it: it returned False at its timeout,
and the batch's ``request_counts`` stood still for seconds. The feeder below keeps the
queue from emptying; the flush must still answer True, with every record submitted
before it in the store and sealed."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from modelyard.monitoring import RecordWriter
from modelyard.store import NewInferenceRecord, Store
from worlds import two_tenant_world


def _record(rid: str, tenant_id: int) -> NewInferenceRecord:
    return NewInferenceRecord(
        id=rid, endpoint_name="acme-support", route="completions", latency_ms=1.0,
        status="ok", http_status=200, tenant_id=tenant_id, prompt="p", response="r",
        prompt_tokens=1, completion_tokens=1,
    )  # fmt: skip


class SlowStore:
    """The store, writing a batch of records in at least 20 ms: about 200 records a
    second with batches of 4, fewer than the feeder below submits."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add_monitored_records(self, *args: Any, **kwargs: Any) -> int:
        time.sleep(0.02)
        return self._store.add_monitored_records(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_flush_under_steady_traffic_answers_once_what_came_before_is_written(
    store: Store,
) -> None:
    two_tenant_world(store, versions=1)
    tenant = store.get_tenant("acme").id
    slow = cast(Store, SlowStore(store))
    writer = RecordWriter(slow, batch_size=4, max_buffer=100_000, flush_interval=0.05)
    stop = threading.Event()

    def feed() -> None:  # live traffic, 400 records a second: the queue only grows
        n = 0
        while not stop.is_set():
            writer.submit(_record(f"live-{n}", tenant))
            n += 1
            time.sleep(0.0025)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        feeder.start()
        time.sleep(0.2)
        mine = [f"batch-line-{i}" for i in range(5)]
        for rid in mine:
            writer.submit(_record(rid, tenant))
        assert writer.flush(timeout=5.0), "the flush waited for traffic that came after it"
        found = {r.id for r in store.list_inference_records(limit=10**7)}
        assert set(mine) <= found
        assert feeder.is_alive()  # traffic went on meanwhile
    finally:
        stop.set()
        feeder.join(10)
        writer.close()
