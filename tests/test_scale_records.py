"""A store of many records: a window read a page at a time gives every record once, in
order (records of the same instant included), ``data from-records`` gives the rows it gave
when it read the window whole, and a purge counts in the database what it deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.artifacts import LocalArtifactStore
from modelyard.curate import RecordFilters, harvest, select_rows
from modelyard.data import render_prompt
from modelyard.errors import ConfigError
from modelyard.store import NewInferenceRecord, Store
from modelyard.store import _records as records_module
from worlds import fake_world

NOW = datetime.now(UTC).replace(microsecond=0)
SAME = NOW - timedelta(minutes=30)  # the instant most records share


def _record(store: Store, i: int, at: datetime, version: int = 1) -> NewInferenceRecord:
    row = {"instruction": f"Route ticket {i} of many.", "input": f"case {i % 7}"}
    return NewInferenceRecord(
        id=f"rec-{(i * 37) % 101:03d}",  # ids not in the order of time
        endpoint_name="support", route="chat.completions", latency_ms=1.0, status="ok",
        http_status=200, tenant_id=store.get_tenant("acme").id,
        version_id=store.get_model_version("bot", version).id, prompt=render_prompt(row),
        response="network" if i % 3 else "", created_at=at,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    fake_world(opened, versions=2)
    times = [SAME] * 9 + [SAME - timedelta(minutes=i) for i in range(1, 6)]
    times += [SAME + timedelta(seconds=i) for i in range(1, 4)] + [NOW - timedelta(hours=3)]
    opened.add_inference_records(
        _record(opened, i, at, version=1 + i % 2) for i, at in enumerate(times)
    )
    return opened


def test_a_window_read_a_page_at_a_time_is_the_window_read_whole(store: Store) -> None:
    window = {"endpoint": "support", "since": NOW - timedelta(hours=1), "until": NOW}
    whole = store.query_records(**window, limit=None, newest_first=False)  # type: ignore[arg-type]
    assert len(whole) == 17
    for page in (1, 2, 3, 4, 17, 100):
        paged = list(store.iter_records(**window, page=page))  # type: ignore[arg-type]
        assert [r["id"] for r in paged] == [r["id"] for r in whole], page
        assert paged == whole
    v1, v2 = (store.get_model_version("bot", n).id for n in (1, 2))
    assert store.record_counts(**window) == {v1: 9, v2: 8}  # type: ignore[arg-type]
    assert store.record_counts(**window, version_id=v2) == {v2: 8}  # type: ignore[arg-type]
    assert store.record_counts(endpoint="support", since=NOW) == {}
    assert store.record_counts(endpoint="support") == {v1: 9, v2: 9}
    with pytest.raises(ConfigError, match="oldest first"):
        store.query_records(endpoint="support", after=(SAME, "rec-000"))


def test_from_records_gives_the_rows_it_gave_reading_the_window_whole(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filters = RecordFilters(since=NOW - timedelta(hours=1), until=NOW)
    whole = store.query_records(
        endpoint="support", since=filters.since, until=filters.until, limit=None,
        newest_first=False,
    )  # fmt: skip
    templates = {v.id: "alpaca" for v in store.list_model_versions("bot")}
    expected = select_rows(
        whole, filters=filters, data_format="alpaca", templates=templates,
        policies={"acme": "full"},
    )  # fmt: skip
    monkeypatch.setattr(records_module, "RECORDS_PAGE", 2)
    seen: list[tuple[int, int]] = []
    found = harvest(
        store, LocalArtifactStore(tmp_path / "artifacts"), endpoint="support", filters=filters,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert found.selection == expected
    assert found.selection.read == 17 and found.selection.skipped["no_answer"] == 6
    assert seen[-1] == (17, 17)


def test_a_purge_deletes_and_counts_only_the_old_records_of_its_tenant(store: Store) -> None:
    fake_world(store, tenant="other", model="bot2", endpoint="support2", versions=1)
    store.add_inference_records(
        [NewInferenceRecord(
            id="theirs", endpoint_name="support2", route="chat.completions", latency_ms=1.0,
            status="ok", http_status=200, tenant_id=store.get_tenant("other").id,
            created_at=NOW - timedelta(days=2),
        )]
    )  # fmt: skip
    cutoff = NOW - timedelta(minutes=30, seconds=30)
    assert store.purge_records("acme", cutoff) == 6  # five before SAME, one 3 h ago
    assert store.purge_records("acme", cutoff) == 0
    assert store.count_inference_records(endpoint="support") == 12
    assert store.count_inference_records(endpoint="support2") == 1
    (event,) = store.list_audit_events(action="records.purged", limit=None)
    assert event.payload["records"] == 6
