"""Counting records of one time on: the quickstart's check that every request of this run
was recorded counted an earlier run's records too, so it could not fail on a second run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelyard.store import NewInferenceRecord, Store

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _record(i: int, at: datetime, endpoint: str = "support") -> NewInferenceRecord:
    return NewInferenceRecord(f"rec-{i}", endpoint, "chat.completions", 10.0, "ok", 200,
                              created_at=at)  # fmt: skip


def test_records_are_counted_from_a_time_on_inclusive(store: Store) -> None:
    store.add_inference_records(
        [_record(0, T0 - timedelta(hours=1)), _record(1, T0), _record(2, T0 + timedelta(1)),
         _record(3, T0 + timedelta(1), endpoint="other")]
    )  # fmt: skip
    assert store.count_inference_records(endpoint="support") == 3
    assert store.count_inference_records(endpoint="support", since=T0) == 2
    assert store.count_inference_records(since=T0) == 3
    assert store.count_inference_records(since=T0 + timedelta(days=2)) == 0
