"""A review of the usage kept per day (``usage_days``): every record path keeps it equal
to what the records give, budgets' spend read from it equals the spend summed from the
records, and it stays so when record paths race each other, a recount or a purge, and
across migration 0027 on a session time zone that is not UTC. On SQLite and PostgreSQL
(``store_url``); the races need PostgreSQL's concurrent writers (SQLite has one)."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from alembic import command

from modelyard.access import create_api_key, rotate_api_key
from modelyard.audit import AccessPolicy
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._budgets import period_start
from modelyard.store._engine import _alembic_config
from modelyard.store._schema import InferenceRecordRow
from modelyard.store._usage import UsageDayRow
from test_upgrade_with_data import put, record, world_0001
from worlds import fake_world

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PRICES = {"tiny": (0.5, 2.0)}  # per 1,000 prompt and completion tokens; "small" unpriced
AUDIT_KEY = "5e" * 32


@pytest.fixture
def ops(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The admin ``ops``' store: tenant ``acme`` (model ``bot``, 2 versions on the priced
    ``tiny``), tenant ``beta`` (model ``cat``, 2 versions on the unpriced ``small``)."""
    monkeypatch.setenv("MODELYARD_AUDIT_KEY", AUDIT_KEY)
    with _open(store_url) as s:
        s.add_actor("ops", "admin")
        fake_world(s, tenant="acme", model="bot", endpoint=None, versions=2)
        fake_world(s, tenant="beta", model="cat", endpoint=None, versions=2, base_model="small")
        s.set_token_price("tiny", input_per_1k=PRICES["tiny"][0], output_per_1k=PRICES["tiny"][1])
        yield s


def _open(url: str) -> Any:
    return Store.open(url, actor="ops", audit_key=AUDIT_KEY,
                      policy=AccessPolicy(bootstrap_admin="ops"))  # fmt: skip


def _rec(store: Store, rid: str, at: datetime = NOW, **extra: Any) -> NewInferenceRecord:
    fields: dict[str, Any] = {
        "id": rid, "endpoint_name": "support", "route": "completions", "latency_ms": 1.0,
        "status": "ok", "http_status": 200, "tenant_id": store.get_tenant("acme").id,
        "version_id": store.get_model_version("bot", 1).id, "prompt_tokens": 1000,
        "completion_tokens": 500, "created_at": at,
    }  # fmt: skip
    return NewInferenceRecord(**(fields | extra))


def _running(record: NewInferenceRecord) -> NewInferenceRecord:
    """``record`` as the journal's ``started_record`` has it: running, no tokens yet."""
    ended = {"status": "running", "http_status": 0, "prompt_tokens": 0, "completion_tokens": 0}
    return NewInferenceRecord(**(vars(record) | ended))


Group = tuple[date, int, str, int]


def _usage(store: Store) -> dict[Group, tuple[int, int, int]]:
    """The usage rows, rows of nothing left out."""
    u = cast(sa.Table, UsageDayRow.__table__).c
    with store._engine.connect() as conn:
        rows = conn.execute(sa.select(u.day, u.tenant_id, u.key_id, u.version_id, u.requests,
                                      u.prompt_tokens, u.completion_tokens))  # fmt: skip
        out = {(r[0].astimezone(UTC).date(), r[1], r[2], r[3]): (r[4], r[5], r[6]) for r in rows}
    return {k: v for k, v in out.items() if v != (0, 0, 0)}


def _records(store: Store) -> list[dict[str, Any]]:
    t = cast(sa.Table, InferenceRecordRow.__table__).c
    columns = (t.id, t.created_at, t.tenant_id, t.api_key_id, t.version_id, t.status, t.shadow,
               t.prompt_tokens, t.completion_tokens)  # fmt: skip
    with store._engine.connect() as conn:
        return [dict(m) for m in conn.execute(sa.select(*columns)).mappings()]


def _counted(r: dict[str, Any]) -> bool:
    """What a budget counts, as the docs define it: a user's request that ended, of a
    known tenant and version."""
    return (r["status"] != "running" and not r["shadow"] and r["tenant_id"] is not None
            and r["version_id"] is not None)  # fmt: skip


def _expected_usage(store: Store) -> dict[Group, tuple[int, int, int]]:
    """The usage the records give, computed here from the records alone."""
    sums: dict[Group, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in _records(store):
        if _counted(r):
            day = r["created_at"].astimezone(UTC).date()
            group = sums[(day, r["tenant_id"], r["api_key_id"] or "", r["version_id"])]
            group[0] += 1
            group[1] += r["prompt_tokens"] or 0
            group[2] += r["completion_tokens"] or 0
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


def _on_statement(
    store: Store, matches: Callable[[str], bool], action: Callable[[], None]
) -> Callable[[], None]:
    """Run ``action`` just before the first statement ``store`` sends that ``matches``
    (in the thread sending it); returns the function removing the hook."""
    fired = threading.Event()

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not fired.is_set() and matches(statement):
            fired.set()
            action()

    sa.event.listen(store._engine, "before_cursor_execute", before)
    return lambda: sa.event.remove(store._engine, "before_cursor_execute", before)


def _in_thread(work: Callable[[], Any], wait_s: float) -> threading.Thread:
    """Start ``work`` on a thread and wait for it up to ``wait_s`` (it may be blocked on a
    lock the caller holds: it then ends after the caller's transaction)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised by the test through .errors
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    thread.join(wait_s)
    return thread


def _join(thread: threading.Thread) -> None:
    thread.join(30)
    assert not thread.is_alive()
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]


# -- budgets' spend from the usage equals the spend from the records ---------------------------

EDGES = [
    datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC),  # the month before
    datetime(2026, 11, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 19, 23, 59, 59, 999999, tzinfo=UTC),  # the day before
    datetime(2026, 11, 20, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 20, 23, 59, 59, 999999, tzinfo=UTC),  # later today
    datetime(2026, 11, 21, 0, 0, tzinfo=UTC),  # tomorrow: no end to a period's query
]


def _random_traffic(ops: Store, rng: random.Random, n: int) -> None:
    """``n`` random records written through every record path."""
    tenants = {name: ops.get_tenant(name).id for name in ("acme", "beta")}
    versions = [ops.get_model_version(m, v).id for m in ("bot", "cat") for v in (1, 2)]
    keys = {tid: [k.id for k in ops.list_api_keys(name)] for name, tid in tenants.items()}
    plain, monitored, jobs = [], [], []
    ended: list[NewInferenceRecord] = []
    for i in range(n):
        tenant = rng.choice(
            [*tenants.values(), None] if rng.random() < 0.05 else list(tenants.values())
        )
        at = datetime(2026, 10, 28, tzinfo=UTC) + timedelta(seconds=rng.randrange(25 * 86400))
        at = rng.choice(EDGES) if rng.random() < 0.3 else at
        rec = _rec(
            ops, f"r{i}", at, tenant_id=tenant,
            api_key_id=rng.choice([*keys.get(tenant, []), None]) if tenant else None,
            version_id=rng.choice([*versions, None] if rng.random() < 0.1 else versions),
            status=rng.choice(["ok", "ok", "ok", "error", "cancelled", "timeout", "refused"]),
            shadow=rng.random() < 0.2, prompt_tokens=rng.randrange(5000),
            completion_tokens=rng.randrange(3000),
        )  # fmt: skip
        path = rng.choice(["plain", "monitored", "journal", "closed", "left", "job"])
        if path == "plain":
            plain.append(rec)
        elif path == "monitored":
            monitored.append(rec)
        elif path == "journal":  # inserted running, updated when it ends
            ops.add_monitored_records([], started=[_running(rec)], server_id="live")
            ended.append(rec)
        elif path in ("closed", "left"):  # its server dies (closed later), or runs on
            server = f"dead-{i % 3}" if path == "closed" else "live"
            ops.add_monitored_records([], started=[rec], server_id=server)
        else:
            jobs.append(NewInferenceRecord(**(vars(rec) | {"job_id": f"job-{i % 2}"})))
    ops.add_inference_records(plain)
    ops.add_monitored_records([(r, None) for r in monitored], server_id="live")
    ops.add_monitored_records([(r, None) for r in ended], running={r.id for r in ended},
                              server_id="live")  # fmt: skip
    ops.close_running_records(["dead-0"], "stopped")
    ops.close_running_records(["dead-1", "dead-2"], "stopped", seal=True)
    ops.add_inference_records(jobs)
    ops.discard_job_records("job-0", [r.id for r in jobs if rng.random() < 0.7])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_budget_spend_equals_the_spend_the_records_give(ops: Store, seed: int) -> None:
    """Random records (statuses, shadow copies, keys, a rotated key, versions priced and
    not, days at the edges of the day and month) written through every record path: the
    usage is what the records give, every budget's spend (``budget_statuses``, ``spent``)
    is the records' tokens at their prices since its period's start, and a recount
    changes nothing."""
    rng = random.Random(seed)
    for _ in range(2):
        create_api_key(ops, "acme")
    create_api_key(ops, "beta")
    rotated = ops.list_api_keys("acme")[0].id
    successor = rotate_api_key(ops, rotated)[0].id
    _random_traffic(ops, rng, 160)
    budgets = [
        ops.set_budget("acme", "day", 100.0), ops.set_budget("acme", "month", 100.0),
        ops.set_budget("acme", "month", 100.0, key_id=successor),
        ops.set_budget("acme", "day", 100.0, key_id=rotated),
        ops.set_budget("beta", "month", 100.0),
    ]  # fmt: skip
    assert _usage(ops) == _expected_usage(ops)
    price = {ops.get_model_version("bot", v).id: PRICES["tiny"] for v in (1, 2)}
    records = [r for r in _records(ops) if _counted(r)]

    def spend(b: Any) -> float:
        keys = {successor, rotated} if b.key_id == successor else {b.key_id}
        tid = ops.get_tenant(b.tenant).id
        return sum(
            (r["prompt_tokens"] * price[r["version_id"]][0]
             + r["completion_tokens"] * price[r["version_id"]][1]) / 1000
            for r in records
            if r["tenant_id"] == tid and r["version_id"] in price
            and (b.key_id is None or r["api_key_id"] in keys)
            and r["created_at"] >= period_start(b.period, NOW)
        )  # fmt: skip

    statuses = ops.budget_statuses(budgets, NOW)
    assert [s["spent"] for s in statuses] == [pytest.approx(spend(b), rel=1e-12) for b in budgets]
    for b in budgets:
        got = ops.spent(b.tenant, period_start(b.period, NOW), key_id=b.key_id)
        assert got == pytest.approx(spend(b), rel=1e-12)
    before = _usage(ops)
    for tenant in ("acme", "beta"):
        ops.recount_usage(tenant, datetime(2026, 10, 28, tzinfo=UTC))
    assert _usage(ops) == before


def test_a_store_whose_sessions_are_in_new_york_counts_utc_days(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL sessions in New York's time zone (``PGTZ``): records at the edges of UTC
    days are counted, spent and recounted by their UTC day."""
    _pg(store_url)
    monkeypatch.setenv("PGTZ", "America/New_York")
    monkeypatch.setenv("MODELYARD_AUDIT_KEY", AUDIT_KEY)
    with _open(store_url) as ops:
        with ops._engine.connect() as conn:
            assert conn.execute(sa.text("SHOW TimeZone")).scalar() == "America/New_York"
        ops.add_actor("ops", "admin")
        fake_world(ops, tenant="acme", model="bot", endpoint=None, versions=1)
        ops.set_token_price("tiny", input_per_1k=1.0, output_per_1k=0.0)
        at = [*EDGES, datetime(2026, 11, 20, 3, 0, tzinfo=UTC)]  # the 19th in New York
        ops.add_inference_records([_rec(ops, f"r{i}", t) for i, t in enumerate(at)])
        days = sorted(k[0].isoformat() for k in _usage(ops))
        assert days == ["2026-10-31", "2026-11-01", "2026-11-19", "2026-11-20", "2026-11-21"]
        assert _usage(ops) == _expected_usage(ops)
        budget = ops.set_budget("acme", "day", 10.0)
        assert ops.budget_statuses([budget], NOW)[0]["spent"] == 4.0  # 20th x3, 21st
        assert ops.spent("acme", period_start("month", NOW)) == 6.0
        ops.recount_usage("acme", datetime(2026, 10, 31, tzinfo=UTC))
        assert _usage(ops) == _expected_usage(ops)


# -- the request journal's end racing the close of its "dead" server ---------------------------


@pytest.mark.parametrize("seal", [False, True])
def test_a_request_closed_while_its_server_lived_counts_once(ops: Store, seal: bool) -> None:
    """A server taken for dead (a stale heartbeat: a long pause; ``doctor --stale --fix``
    on a server without heartbeats) is alive: its running request is closed as failed,
    then its server writes the request's end over it. The record is the end; the usage
    counted it twice (a request of two, with the closed row's tokens too)."""
    started = _rec(ops, "long", prompt_tokens=300, completion_tokens=0)
    ops.add_monitored_records([], started=[started], server_id="srv-a")
    assert ops.close_running_records(["srv-a"], "the server stopped", seal=seal) == 1
    ops.add_monitored_records([(_rec(ops, "long"), None)], running={"long"}, server_id="srv-a")
    [only] = _records(ops)
    assert (only["status"], only["completion_tokens"]) == ("ok", 500)
    assert _usage(ops) == _expected_usage(ops)
    assert list(_usage(ops).values()) == [(1, 1000, 500)]


def test_the_end_of_a_request_discarded_meanwhile_counts_nothing(ops: Store) -> None:
    """A resumed batch job discards the running record of an answer its earlier run (still
    alive) then ends: the end updates no record, so it counts nothing, and the records
    written with it are written (the write failed whole: StaleDataError, and the record
    writer drops a failed write's records)."""
    ops.add_monitored_records([], started=[_rec(ops, "j1", job_id="job")], server_id="srv-a")
    assert ops.discard_job_records("job", ["j1"]) == 1
    ends = [(_rec(ops, "j1", job_id="job"), None), (_rec(ops, "other"), None)]
    ops.add_monitored_records(ends, running={"j1"}, server_id="srv-a")
    assert [r["id"] for r in _records(ops)] == ["other"]
    assert _usage(ops) == _expected_usage(ops)
    assert list(_usage(ops).values()) == [(1, 1000, 500)]


def _pg(store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("a race between concurrent writers: PostgreSQL's (SQLite has one writer)")


def test_the_end_of_a_request_waits_for_its_close_under_way(ops: Store, store_url: str) -> None:
    """PostgreSQL: the close has locked the running row when the end arrives; the end
    waits for it, then finds the row closed (and counted), and counts it once."""
    _pg(store_url)
    ops.add_monitored_records([], started=[_running(_rec(ops, "long"))], server_id="srv-a")
    end = [(_rec(ops, "long"), None)]
    with _open(store_url) as other:
        work = lambda: other.add_monitored_records(end, running={"long"}, server_id="srv-a")  # noqa: E731
        threads: list[threading.Thread] = []
        remove = _on_statement(
            ops, lambda sql: sql.lstrip().startswith("UPDATE inference_records"),
            lambda: threads.append(_in_thread(work, 1.5)),
        )  # fmt: skip
        try:
            assert ops.close_running_records(["srv-a"], "stopped", seal=True) == 1
        finally:
            remove()
        _join(threads[0])
    assert _records(ops)[0]["status"] == "ok"
    assert list(_usage(ops).values()) == [(1, 1000, 500)]


def test_a_discard_waits_for_an_end_under_way(ops: Store, store_url: str) -> None:
    """PostgreSQL: a resumed batch job discards the record of an answer whose end its
    earlier run (alive) is writing: the discard read the row as running (nothing to take
    back), deleted it once the end committed, and the tenant paid for an answer that has
    no record."""
    _pg(store_url)
    job = {"job_id": "job", "source": "batch"}
    ops.add_monitored_records([], started=[_running(_rec(ops, "j1", **job))], server_id="srv-a")
    with _open(store_url) as other:
        work = lambda: other.discard_job_records("job", ["j1"])  # noqa: E731
        threads: list[threading.Thread] = []
        remove = _on_statement(
            ops, lambda sql: sql.lstrip().startswith("UPDATE inference_records"),
            lambda: threads.append(_in_thread(work, 1.5)),
        )  # fmt: skip
        try:
            ops.add_monitored_records(
                [(_rec(ops, "j1", **job), None)], running={"j1"}, server_id="srv-a"
            )
        finally:
            remove()
        _join(threads[0])
    assert _records(ops) == []
    assert _usage(ops) == {}
    assert ops.spent("acme", NOW) == 0.0


def test_a_close_counts_every_row_it_closes(ops: Store, store_url: str) -> None:
    """PostgreSQL: a request of the server starts (its running row committed) between the
    close's read of the running rows and its update: the update closes it too, so its
    usage must be counted too."""
    _pg(store_url)
    ops.add_monitored_records([], started=[_running(_rec(ops, "a"))], server_id="srv-a")
    with _open(store_url) as other:
        late = [_running(_rec(ops, "b"))]
        remove = _on_statement(
            ops, lambda sql: sql.lstrip().startswith("UPDATE inference_records"),
            lambda: other.add_monitored_records([], started=late, server_id="srv-a"),
        )  # fmt: skip
        try:
            closed = ops.close_running_records(["srv-a"], "stopped")
        finally:
            remove()
    statuses = sorted(r["status"] for r in _records(ops))
    assert statuses == ["error"] * closed
    assert _usage(ops) == _expected_usage(ops)


# -- a recount racing the record writer or a purge ---------------------------------------------


def _recount_select(sql: str) -> bool:
    return "count(*)" in sql and "FROM inference_records" in sql and "GROUP BY" in sql


def test_a_recount_racing_a_write_counts_it_once(ops: Store, store_url: str) -> None:
    """PostgreSQL READ COMMITTED: a request through a key not yet used today is written
    (record and usage committed) after the recount deleted today's usage and before it
    reads today's records: the recount reads it and adds it to the row the write made."""
    _pg(store_url)
    key = create_api_key(ops, "acme")[0].id
    now = datetime.now(UTC)
    ops.add_inference_records([_rec(ops, "before", now)])
    with _open(store_url) as other:
        new = [_rec(ops, "during", now, api_key_id=key)]
        threads: list[threading.Thread] = []
        remove = _on_statement(
            ops, _recount_select,
            lambda: threads.append(_in_thread(lambda: other.add_inference_records(new), 1.5)),
        )  # fmt: skip
        try:
            ops.recount_usage("acme", now)
        finally:
            remove()
        _join(threads[0])
    assert _usage(ops) == _expected_usage(ops)
    assert sorted(v[0] for v in _usage(ops).values()) == [1, 1]


def test_a_recount_racing_a_purge_loses_no_usage(ops: Store, store_url: str) -> None:
    """PostgreSQL: a purge of today's records commits after the recount checked for purges
    and before it reads the records: the recount then counted nothing for today, and the
    usage the purge was to keep was lost."""
    _pg(store_url)
    now = datetime.now(UTC)
    ops.add_inference_records([_rec(ops, f"r{i}", now) for i in range(3)])
    ops.set_retention("acme", 1)
    kept = _usage(ops)
    assert list(kept.values()) == [(3, 3000, 1500)]
    with _open(store_url) as other:
        purge = lambda: other.purge_records("acme", datetime.now(UTC) + timedelta(seconds=5))  # noqa: E731
        threads: list[threading.Thread] = []
        remove = _on_statement(ops, _recount_select, lambda: threads.append(_in_thread(purge, 1.5)))
        try:
            ops.recount_usage("acme", now)
        finally:
            remove()
        _join(threads[0])
    assert ops.count_inference_records() == 0
    assert _usage(ops) == kept


def test_two_writers_sharing_usage_rows_never_deadlock(ops: Store, store_url: str) -> None:
    """PostgreSQL: writers upserting the same days, keys and versions in every order (their
    rows are locked in one order) all commit, and the sums are the records'."""
    _pg(store_url)
    keys = [create_api_key(ops, "acme")[0].id for _ in range(5)] + [None]
    pairs = [(NOW - timedelta(days=d), k) for d in range(4) for k in keys]
    rounds, writers = 30, ("w1", "w2", "w3", "w4")
    batches = {w: [[_rec(ops, f"{w}-{n}-{i}", d, api_key_id=k) for i, (d, k) in enumerate(pairs)]
                   for n in range(rounds)] for w in writers}  # fmt: skip
    start = threading.Barrier(len(writers))

    def write(who: str) -> None:
        rng = random.Random(who)
        with _open(store_url) as mine:
            start.wait()
            for batch in batches[who]:
                rng.shuffle(batch)
                mine.add_inference_records(batch)

    threads = [_in_thread(lambda w=w: write(w), 0) for w in writers]
    for t in threads:
        _join(t)
    assert _usage(ops) == _expected_usage(ops)
    assert {v[0] for v in _usage(ops).values()} == {rounds * len(writers)}


# -- migration 0027's backfill ------------------------------------------------------------------


def test_migration_0027_counts_by_utc_day_whatever_the_session_time_zone(
    store_url: str, tmp_path: Path
) -> None:
    """Records near midnight UTC, migrated by a session whose time zone is New York's
    (PostgreSQL): each counts in its UTC day, and a record written after the migration
    adds to the same day's row (SQLite: its stored datetime format)."""
    args = {"connect_args": {"options": "-c TimeZone=America/New_York"}}
    engine = sa.create_engine(store_url, **(args if store_url.startswith("postgresql") else {}))
    cfg = _alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0026")
        with engine.begin() as conn:
            world_0001(conn)
            for row in (
                record("a", datetime(2026, 11, 25, 23, 59, 59, 999999, tzinfo=UTC)),
                record("b", datetime(2026, 11, 26, 0, 0, tzinfo=UTC)),
                record("c", datetime(2026, 11, 26, 3, 0, tzinfo=UTC)),  # the 25th in New York
                record("d", datetime(2026, 11, 26, 23, 59, 59, 999999, tzinfo=UTC)),
            ):
                put(conn, "inference_records", row)
        with engine.begin() as conn:
            if store_url.startswith("postgresql"):
                assert conn.execute(sa.text("SHOW TimeZone")).scalar() == "America/New_York"
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    with Store.open(store_url) as store:
        got = {(k[0].isoformat(), k[2]): v for k, v in _usage(store).items()}
        assert got == {("2026-11-25", "Ab3dEf6hIj9k"): (1, 7, 3),
                       ("2026-11-26", "Ab3dEf6hIj9k"): (3, 21, 9)}  # fmt: skip
        late = record("e", datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
        store.add_inference_records([NewInferenceRecord(
            **{k: v for k, v in late.items() if k in NewInferenceRecord.__dataclass_fields__}
        )])  # fmt: skip
        assert len(_usage(store)) == 2
        assert _usage(store) == _expected_usage(store)
