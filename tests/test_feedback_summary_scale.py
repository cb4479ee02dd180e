"""The feedback summary (``GET /feedback/summary``, the console's monitoring page) reads
the feedback and each one's record, not every record of the store: on SQLite it read all
of them to find the few with feedback (6 s at 1.5 million records, journey 5's scale).
Counted in SQLite's virtual machine steps (a progress handler), never in time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

NOW = datetime.now(UTC)


@pytest.fixture
def acme(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store, versions=2)
        store.create_endpoint("other", model_ref="bot:2", tenant="acme")
        yield store


def _records(store: Store, first: int, count: int) -> None:
    tid = store.get_tenant("acme").id
    ids = [store.get_model_version("bot", n).id for n in (1, 2)]
    store.add_inference_records(
        NewInferenceRecord(
            id=f"r{i:06d}", endpoint_name=("support", "other")[i % 2], route="completions",
            latency_ms=5.0, status="ok", http_status=200, tenant_id=tid, version_id=ids[i % 2],
            created_at=NOW - timedelta(minutes=i % 600),
        )
        for i in range(first, first + count)
    )  # fmt: skip


@contextlib.contextmanager
def _steps(store: Store) -> Iterator[list[int]]:
    """Thousands of SQLite virtual machine steps the store's statements take in the block."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0  # go on

    watched: list[Any] = []

    def watch(conn: Any, *_: Any) -> None:
        watched.append(conn.connection.driver_connection)
        watched[-1].set_progress_handler(count, 1000)

    event.listen(store._engine, "before_cursor_execute", watch)
    try:
        yield counted
    finally:
        event.remove(store._engine, "before_cursor_execute", watch)
        for raw in watched:
            raw.set_progress_handler(None, 0)


def test_the_feedback_summary_reads_the_feedback_not_every_record(acme: Store) -> None:
    _records(acme, 0, 2_000)
    for i in range(0, 60):  # feedback on 60 records, the same before and after
        acme.add_feedback(f"r{i:06d}", tenant="acme", score=(1.0, -1.0, 0.5)[i % 3])
    with _steps(acme) as small:
        before = acme.feedback_summary()
    _records(acme, 2_000, 38_000)  # twenty times the records, no more feedback
    with _steps(acme) as large:
        after = acme.feedback_summary()
    assert after == before
    assert large[0] <= 2 * small[0] + 2, (small, large)  # was 10 and 162 thousand steps
    assert [(f.endpoint, f.version, f.count, f.positive, f.negative) for f in after] == [
        ("other", "bot:2", 30, 20, 10),
        ("support", "bot:1", 30, 20, 10),
    ]
    assert after[0].mean_score == pytest.approx(0.5 / 3)
    # the filters still apply
    assert [f.endpoint for f in acme.feedback_summary(endpoint="other")] == ["other"]
    # ``since`` is of the feedback's time: given just now, not at the module's NOW
    assert acme.feedback_summary(since=datetime.now(UTC) + timedelta(minutes=1)) == []
