"""What a sceptical review of `modelyard audit anchor` found: abandoned records before
sealing began, a seal naming one record twice, a seal anchored meanwhile, and anchors
of more seals than one event lists."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from modelyard.audit import ANCHOR_ACTION, SealEntry
from modelyard.errors import AuditError, Conflict
from modelyard.monitoring import ABANDONED
from modelyard.store import Store, _audit, _late_anchor
from test_late_anchor import REASON, World, _record, _unanchored, make_world

NOW = timedelta(0)  # no grace period: every seal written so far is past it


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> Iterator[World]:
    with make_world(store_url, tmp_path) as made:
        yield made


def test_abandoned_records_before_sealing_began_are_left_as_verification_leaves_them(
    world: World,
) -> None:
    """With no anchor yet, records closed unsealed are written before sealing began:
    verification covers none of them. Sealing them made the late anchor the first seal,
    and every unsealed record written since then (not abandoned) turned 'inserted'."""
    store = world.store
    tid = store.get_tenant("acme").id
    store.add_monitored_records([(_record("r-old", tid), None)])  # final, never sealed
    running = _record("r-run", tid, status="running", latency_ms=0.0, http_status=0,
                      response=None)  # fmt: skip
    store.add_monitored_records([], started=[running], server_id="srv-gone")
    assert store.close_running_records(["srv-gone"], ABANDONED) == 1
    store.add_monitored_records([(_record("r-new", tid), None)])
    before = store.verify_record_seals()
    assert before.ok and before.before_sealing == 3
    with pytest.raises(Conflict, match="nothing to anchor"):
        store.anchor_late(REASON, closed_error=ABANDONED, grace=NOW)
    assert store.verify_record_seals().ok


def test_a_seal_naming_one_record_twice_is_refused(world: World) -> None:
    seal = _unanchored(world, "r-a", "r-b")
    world.sql("UPDATE record_seals SET ids = :ids WHERE id = :id", ids='["r-a", "r-a"]', id=seal)
    found = world.store.anchor_late(None, dry_run=True, grace=NOW)
    assert [x.problem for x in found.seals] == ["its index row names record r-a twice"]
    with pytest.raises(AuditError, match="names record r-a twice"):
        world.store.anchor_late(REASON, grace=NOW)


def test_a_seal_anchored_meanwhile_is_not_anchored_twice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose server looked gone anchors its seal between the late anchor's read
    and its append: the late anchor sees it under the chain's lock and refuses."""
    tid = world.store.get_tenant("acme").id
    sealed: list[SealEntry] = []
    world.store.add_monitored_records([(_record("r-1", tid), None)], seal=True, sealed=sealed)
    lock = _audit.lock_chain
    done, wrote = threading.Event(), threading.Event()

    def writer_first(s: Session) -> None:
        if done.is_set():  # the writer's own lock, or any after
            lock(s)
            return

        def anchor() -> None:
            done.set()
            with Store.open(world.url, actor="server", audit_key="5e" * 32) as other:
                other.anchor_record_seals(sealed)
            wrote.set()

        if world.url.startswith("sqlite"):  # one writer at a time: it anchors after us
            anchor()  # (run here, as if it had committed just before our transaction)
        else:
            threading.Thread(target=anchor).start()
            assert wrote.wait(30)
        lock(s)

    monkeypatch.setattr(_audit, "lock_chain", writer_first)
    if world.url.startswith("sqlite"):
        pytest.skip("SQLite runs one write transaction at a time: no writer can come between")
    with pytest.raises(Conflict, match="was anchored meanwhile, by audit event"):
        world.store.anchor_late(REASON, grace=NOW)
    events = world.store.list_audit_events(action=ANCHOR_ACTION, limit=None)
    assert [e.actor for e in events if sealed[0].seal in e.payload["seals"]] == ["server"]
    assert world.store.verify_record_seals(grace=NOW).ok


def test_many_seals_are_anchored_in_events_of_at_most_512(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_late_anchor, "ANCHOR_SEALS", 3)
    for i in range(7):
        _unanchored(world, f"r-{i}")
    done = world.store.anchor_late(REASON, grace=NOW)
    assert [len(e.payload["seals"]) for e in done.events] == [3, 3, 1]
    assert all(e.payload["late"]["reason"] == REASON for e in done.events)
    report = world.store.verify_record_seals(grace=NOW)
    assert report.ok and report.late == 7 and len(report.late_anchors) == 3
    cli = world.cli("audit", "anchor", "--reason", REASON)
    assert cli.code == 1 and "nothing to anchor" in cli.err
