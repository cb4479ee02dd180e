"""PostgreSQL: the paths that lock inference records lock them in one order (by id), so
that closes of servers taken for dead, the ends written over their running rows and a
resumed batch job's discards, run at the same time over the same rows, wait for each
other and never deadlock (PostgreSQL rolled one back: the record writer dropped its
batch of records); and when PostgreSQL rolls the writer's transaction back anyway (a
deadlock with some other transaction), the writer writes the batch again, not drops it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from modelyard.monitoring import RecordWriter
from modelyard.store import NewInferenceRecord, Store
from test_usage_review import (
    AUDIT_KEY,
    _expected_usage,
    _open,
    _rec,
    _records,
    _running,
    _usage,
)
from worlds import fake_world


@pytest.fixture
def ops(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The admin ``ops``' store on PostgreSQL (tenant ``acme``, model ``bot``)."""
    monkeypatch.setenv("MODELYARD_AUDIT_KEY", AUDIT_KEY)
    with _open(postgres_url) as s:
        s.add_actor("ops", "admin")
        fake_world(s, tenant="acme", model="bot", endpoint=None, versions=1)
        yield s


def _ended(ops: Store, rid: str) -> NewInferenceRecord:
    """The end of request ``rid`` as the record writer has it: its time is the end's."""
    return NewInferenceRecord(**(vars(_rec(ops, rid)) | {"created_at": None}))


def _journal(ops: Store, job: str) -> tuple[Any, Any]:
    """The running record and the end of a request of batch job ``job`` by id, as the
    record writer writes them (the end's time is its own)."""
    fields = vars(_rec(ops, "x")) | {"created_at": None, "job_id": job, "source": "batch"}
    running = vars(_running(_rec(ops, "x"))) | fields | {"status": "running"}
    running |= {"http_status": 0, "prompt_tokens": 0, "completion_tokens": 0}
    return (
        lambda rid: NewInferenceRecord(**(running | {"id": rid})),
        lambda rid: NewInferenceRecord(**(fields | {"id": rid})),
    )


ROUNDS, ROWS, ENDERS = 12, 120, 3


@pytest.mark.parametrize("seal", [False, True])
def test_closes_ends_and_discards_of_the_same_rows_never_deadlock(
    ops: Store, postgres_url: str, seal: bool
) -> None:
    """Rounds of a server's requests written as running (one journal batch: one time,
    random ids, as the writer writes them), then, at once, the close of that server
    (``doctor``'s unsealed one, or the sweep's sealed one), three writers writing the ends
    of overlapping halves of them and a resumed batch job discarding a quarter: every
    write commits (a deadlock rolled one back: PostgreSQL's error, the writer's records
    dropped), and the usage is what the records give."""
    stores = [_open(postgres_url) for _ in range(ENDERS + 2)]
    errors: list[BaseException] = []
    try:
        for n in range(ROUNDS):
            _round(ops, stores, n, seal, errors)
    finally:
        for s in stores:
            s.close()
    assert not errors, f"{len(errors)} of {ROUNDS * (ENDERS + 2)} writes failed: {errors[0]}"
    assert _usage(ops) == _expected_usage(ops)
    assert sum(v[0] for v in _usage(ops).values()) == sum(
        r["status"] != "running" for r in _records(ops)
    )


def _round(
    ops: Store, stores: list[Store], n: int, seal: bool, errors: list[BaseException]
) -> None:
    """One round: ``ROWS`` running rows of server ``srv-<n>``, then its close, the ends of
    ``ENDERS`` overlapping halves of them and the discard of a quarter, at once (each in
    a store of its own); what fails goes to ``errors``."""
    server, job = f"srv-{n}", f"job-{n}"
    running, ended = _journal(ops, job)
    ids = [uuid.uuid4().hex for _ in range(ROWS)]
    ops.add_monitored_records([], started=[running(i) for i in ids], server_id=server)
    rng = random.Random(n)
    halves = [rng.sample(ids, ROWS // 2) for _ in range(ENDERS)]
    gone = rng.sample(ids, ROWS // 4)
    start = threading.Barrier(ENDERS + 2)

    def close() -> None:
        start.wait()
        stores[0].close_running_records([server], "stopped", seal=seal)

    def discard() -> None:
        start.wait()
        stores[1].discard_job_records(job, gone)

    def end(store: Store, half: list[str]) -> None:
        ends = [(ended(rid), None) for rid in half]
        start.wait()
        store.add_monitored_records(ends, running=set(half), server_id=server)

    enders = [lambda s=s, h=h: end(s, h) for s, h in zip(stores[2:], halves, strict=True)]
    threads = [threading.Thread(target=_caught(w, errors)) for w in [close, discard, *enders]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()


def _caught(work: Any, errors: list[BaseException]) -> Any:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # the test fails on it, after every thread ended
            errors.append(exc)

    return run


def test_the_writer_writes_again_a_batch_that_a_deadlock_rolled_back(
    ops: Store, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another transaction (holding one of the batch's running rows, then waiting for
    another that the writer's transaction locked) deadlocks with the writer's: PostgreSQL
    rolls the writer's back. The writer writes the batch again once the other committed:
    every end is written and counted (it dropped the batch: the ends and the requests
    written with them were lost), and it says so in its log."""
    engine = sa.create_engine(postgres_url)
    hold, held, go = threading.Event(), threading.Event(), threading.Event()

    def sweep() -> None:  # the writer's thread stops here while ``hold`` is set
        if hold.is_set():
            held.set()
            go.wait(10)

    writer = RecordWriter(ops, start_delay=0.0, server_id="srv", sweep=sweep, sweep_s=0.0)
    try:
        for rid in ("a", "b"):
            writer.started(_running(_rec(ops, rid)))
        assert writer.flush(10)
        hold.set()
        assert held.wait(10)  # the ends below are then written in one batch
        for rid in ("a", "b"):
            writer.submit(_ended(ops, rid))
        writer.submit(_rec(ops, "c"))
        with engine.connect() as conn:
            conn.execute(sa.text("SET deadlock_timeout = '3s'"))  # the writer finds it first
            conn.execute(sa.text("SELECT 1 FROM inference_records WHERE id = 'b' FOR UPDATE"))
            hold.clear()
            go.set()
            _wait_lock_waiter(engine)  # the writer locked a, waits for b
            conn.execute(sa.text("UPDATE inference_records SET route = route WHERE id = 'a'"))
            conn.commit()
        assert writer.flush(30)
    finally:
        writer.close()
        engine.dispose()
    assert writer.dropped == 0
    assert sorted((r["id"], r["status"]) for r in _records(ops)) == [
        ("a", "ok"), ("b", "ok"), ("c", "ok"),
    ]  # fmt: skip
    assert _usage(ops) == _expected_usage(ops)
    assert sum(v[0] for v in _usage(ops).values()) == 3
    assert any("again" in r.getMessage() for r in caplog.records)


def _wait_lock_waiter(engine: sa.Engine) -> None:
    """Until a session other than this one waits for a row lock."""
    deadline = time.monotonic() + 10
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    with engine.connect() as conn:
        while conn.execute(query).scalar() == 0:
            assert time.monotonic() < deadline, "the writer never waited for the row"
            time.sleep(0.02)
