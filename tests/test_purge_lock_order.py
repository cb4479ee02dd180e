"""PostgreSQL: a retention purge locks the records it deletes by id before their
feedback and features, the order every record path locks them (``_record_locks``), so
that a verdict sent at the same time on a record the purge deletes waits for the purge
(or the purge for it) and neither is a deadlock's victim (PostgreSQL rolled one back: an
error to the purge's caller or to the user sending feedback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from modelyard.store import Store
from test_usage_lock_order import _caught, _wait_lock_waiter
from test_usage_review import AUDIT_KEY, NOW, _open, _rec, _records
from worlds import fake_world


@pytest.fixture
def ops(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("MODELYARD_AUDIT_KEY", AUDIT_KEY)
    with _open(postgres_url) as s:
        s.add_actor("ops", "admin")
        fake_world(s, tenant="acme", model="bot", endpoint=None, versions=1)
        yield s


def test_a_purge_and_a_verdict_on_the_record_it_deletes_do_not_deadlock(
    ops: Store, postgres_url: str
) -> None:
    """A verdict on an old record that has one already (``add_feedback``: the record's
    row locked, then its feedback row updated) is under way when the purge of that
    record starts: the purge waits for it, then deletes the record and its feedback.
    Before, the purge deleted the feedback row first (locked it) and then waited for
    the record: the verdict waiting for the feedback row was a deadlock, and PostgreSQL
    rolled the purge back."""
    old = NOW - timedelta(days=30)
    ops.add_monitored_records([(_rec(ops, "a", at=old), None), (_rec(ops, "b", at=NOW), None)])
    ops.add_feedback("a", tenant="acme", score=1.0)
    engine = sa.create_engine(postgres_url)
    errors: list[BaseException] = []
    purged: list[int] = []
    before = NOW - timedelta(days=1)
    purge = threading.Thread(
        target=_caught(lambda: purged.append(ops.purge_records("acme", before)), errors)
    )
    try:
        with engine.connect() as verdict:  # add_feedback's statements, in its order
            verdict.execute(sa.text("SET deadlock_timeout = '3s'"))  # the purge finds it first
            verdict.execute(sa.text("SELECT 1 FROM inference_records WHERE id = 'a' FOR UPDATE"))
            purge.start()
            _wait_lock_waiter(engine)
            verdict.execute(sa.text("UPDATE feedback SET score = -1 WHERE record_id = 'a'"))
            verdict.commit()
        purge.join(30)
        assert not purge.is_alive()
    finally:
        engine.dispose()
    assert not errors, f"the purge failed: {errors[0]}"
    assert purged == [1]
    assert [r["id"] for r in _records(ops)] == ["b"]
    with ops._engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar() == 0
