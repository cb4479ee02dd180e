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

from modelyard.audit import ANCHOR_ACTION
from modelyard.monitoring import RecordWriter, started_record
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


def _anchors(store: Store) -> int:
    return len(store.list_audit_events(action=ANCHOR_ACTION, limit=None))


def test_a_flush_under_steady_traffic_anchors_once(store: Store) -> None:
    """A flush hurries the seals' anchor once, in the round that reaches it. It hurried
    every round until it was answered: a backlog of a few hundred records under steady
    traffic wrote one ``records.anchored`` event per small batch instead of one."""
    two_tenant_world(store, versions=1)
    tenant = store.get_tenant("acme").id
    slow = cast(Store, SlowStore(store))
    writer = RecordWriter(slow, batch_size=4, max_buffer=100_000, flush_interval=0.05,
                          anchor_s=3600)  # fmt: skip
    try:
        for n in range(200):  # a backlog: 50 rounds of 4 at 20 ms each
            writer.submit(_record(f"live-{n}", tenant))
        assert writer.flush(timeout=30.0)
        assert _anchors(store) == 1
        assert len(store.list_inference_records(limit=10**7)) == 200
    finally:
        writer.close()


def test_written_hurries_neither_the_running_rows_nor_the_anchor(store: Store) -> None:
    """What the batch worker and feedback wait for (``wait_written``, every half second while a
    batch runs) is the records they read back, nothing more: a live request still running
    keeps its ``start_delay`` (no ``running`` row written early, then updated) and the seals
    their anchor interval. ``flush`` does both."""
    two_tenant_world(store, versions=1)
    tenant = store.get_tenant("acme").id
    writer = RecordWriter(store, flush_interval=0.05, start_delay=3600, anchor_s=3600)
    try:
        live = started_record(
            "live-long", endpoint="acme-support", route="completions", tenant_id=tenant,
            api_key_id=None, version_id=None, prompt="p",
        )  # fmt: skip
        writer.started(live)
        for n in range(3):
            writer.submit(_record(f"line-{n}", tenant))
            assert writer.wait_written(timeout=5.0)
        assert {r.id for r in store.list_inference_records()} == {"line-0", "line-1", "line-2"}
        assert _anchors(store) == 0
        assert writer.flush(timeout=5.0)
        assert "live-long" in {r.id for r in store.list_inference_records()}
        assert _anchors(store) == 1
    finally:
        writer.close()


class HeldAnchorStore(SlowStore):
    """The store, whose anchor waits for ``go`` (``entered`` set meanwhile)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.entered, self.go = threading.Event(), threading.Event()

    def anchor_record_seals(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.go.wait(10)
        return self._store.anchor_record_seals(*args, **kwargs)


def test_a_flush_asked_while_the_writer_stops_is_answered_when_it_stops(store: Store) -> None:
    """close() writes and anchors what is buffered, then the thread ends; a flush asked
    while it did (the batch worker committing as the server stops) waited out its whole
    timeout and answered False, though everything it waited for was written."""
    two_tenant_world(store, versions=1)
    held = HeldAnchorStore(store)
    writer = RecordWriter(cast(Store, held), flush_interval=0.05, anchor_s=3600)
    writer.submit(_record("before-close", store.get_tenant("acme").id))
    deadline = time.monotonic() + 5
    while writer.written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    closer = threading.Thread(target=writer.close)
    closer.start()
    assert held.entered.wait(5)  # the writer stops: its last anchor, under way
    answer: list[tuple[bool, float]] = []

    def flush() -> None:
        began = time.monotonic()
        answer.append((writer.flush(timeout=5.0), time.monotonic() - began))

    flusher = threading.Thread(target=flush)
    flusher.start()
    time.sleep(0.2)  # the flush is asked before the anchor ends
    held.go.set()
    flusher.join(10)
    closer.join(10)
    ((flushed, took),) = answer
    assert flushed, "everything submitted before the flush was written and anchored"
    assert took < 2.0, f"the flush waited {took:.1f} s for a writer that had stopped"
    assert "before-close" in {r.id for r in store.list_inference_records()}
