"""Tamper-evident inference records (issue 19): served requests are sealed, and editing,
deleting or inserting a record in the database is named by `audit verify --records`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import create_engine, text

from clihelp import Result, modelyard
from modelyard.access import create_api_key
from modelyard.audit import (
    ANCHOR_ACTION,
    RECORD_FIELDS,
    check_proof,
    inclusion_path,
    leaf_hash,
    merkle_root,
    root_from_path,
)
from modelyard.errors import AuditError, Conflict
from modelyard.monitoring import RecordWriter
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._schema import InferenceRecordRow
from worlds import two_tenant_world

KEY = "5e" * 32
OTHER_KEY = "a1" * 32


@dataclass
class World:
    store: Store
    url: str  # the store's
    ids: dict[str, list[str]]  # record ids per tenant, oldest first
    home: Path

    def cli(self, *args: str) -> Result:
        env = {"MODELYARD_STORE_URL": self.url, "MODELYARD_AUDIT_KEY": KEY}
        r = modelyard(*args, home=self.home, env=env | {"MODELYARD_ACTOR": "auditor"})
        assert "Traceback" not in r.err, r.err
        return r

    def sql(self, statement: str, **params: object) -> None:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                assert conn.execute(text(statement), params).rowcount == 1
        finally:
            engine.dispose()


def _serve(store: Store, per_tenant: int) -> dict[str, list[str]]:
    """Requests through the real app (echo engine); the records they leave, per tenant."""
    keys = {t: create_api_key(store, t)[1] for t in ("acme", "globex")}
    writer = RecordWriter(store)
    ids: dict[str, list[str]] = {"acme": [], "globex": []}
    try:
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, writer=writer)
        with BackgroundServer(app) as server:
            for i in range(per_tenant):
                for tenant, key in keys.items():
                    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=key) as client:
                        reply = client.chat.completions.create(
                            model=f"{tenant}-support",
                            messages=[{"role": "user", "content": f"question {i} of {tenant}"}],
                        )
                    ids[tenant].append(reply.id)
            assert writer.flush(30)
    finally:
        writer.close()
    assert writer.unanchored == 0 and writer.dropped == 0
    assert writer.anchored == writer.written == 2 * per_tenant
    return ids


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> Iterator[World]:
    with Store.open(store_url, audit_key=KEY) as store:  # the OS user: the bootstrap admin
        two_tenant_world(store, versions=1)
        ids = _serve(store, per_tenant=3)
        yield World(store, store_url, ids, tmp_path / "home")


def test_served_records_are_sealed_and_anchored_in_the_chain(world: World) -> None:
    events = world.store.list_audit_events(action=ANCHOR_ACTION, limit=None)
    assert events and sum(sum(e.payload["records"]) for e in events) == 6
    seals = sum(len(e.payload["seals"]) for e in events)
    assert len(events) < seals  # one request a transaction, not one event a transaction
    report = world.store.verify_record_seals()
    assert report.ok and report.records == 6 and report.running == 0 and report.pending == 0
    assert report.seals == seals


def test_verify_records_names_the_record_edited_then_deleted_and_inserted(world: World) -> None:
    ok = world.cli("audit", "verify", "--records")
    assert ok.code == 0, ok.err
    assert "audit chain OK" in ok.out and "records OK: 6 records match" in ok.out

    edited, deleted = world.ids["acme"][0], world.ids["globex"][1]
    world.sql("UPDATE inference_records SET response = 'a better answer' WHERE id = :id", id=edited)
    bad = world.cli("audit", "verify", "--records")
    assert bad.code == 1 and "records FAILED" in bad.out
    assert f"error: inference records do not match their seals: record {edited} edited" in bad.err
    assert "its content is not what was sealed" in bad.err

    world.sql("DELETE FROM inference_records WHERE id = :id", id=deleted)
    world.sql(
        "INSERT INTO inference_records (id, created_at, endpoint_name, route, latency_ms, "
        "status, http_status, shadow, source, prompt_tokens, completion_tokens, response) "
        "VALUES ('chatcmpl-forged', :at, 'acme-support', 'chat.completions', 9.0, 'ok', 200, "
        "false, 'api', 1, 1, 'forged')",
        at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    )
    worse = world.cli("audit", "verify", "--records", "--json")
    assert worse.code == 1
    found = json.loads(worse.out)["records"]
    assert found["ok"] is False
    named = {(p["kind"], p["record_id"]) for p in found["problems"]}
    assert named == {("edited", edited), ("deleted", deleted), ("inserted", "chatcmpl-forged")}
    assert found["first_problem"]["record_id"] == edited  # the earliest record first
    assert f"record {edited} edited" in worse.err and "(2 more problems)" in worse.err


def test_retention_removes_records_and_what_remains_verifies(world: World) -> None:
    world.store.set_retention("acme", 30)
    removed = world.store.purge_records("acme", datetime.now(UTC) + timedelta(seconds=1))
    assert removed == 3
    purge = world.store.list_audit_events(action="records.purged")[0]
    assert purge.payload["tenant_id"] == world.store.get_tenant("acme").id
    ok = world.cli("audit", "verify", "--records")
    assert ok.code == 0, ok.err
    assert "records OK: 3 records match" in ok.out and "3 removed by retention" in ok.out
    # retention does not cover another tenant's records, nor an edit of what remains
    world.sql("DELETE FROM inference_records WHERE id = :id", id=world.ids["globex"][0])
    bad = world.cli("audit", "verify", "--records")
    assert bad.code == 1 and f"record {world.ids['globex'][0]} deleted" in bad.err


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_inclusion_proof_is_checked_offline_and_a_tampered_one_fails(
    world: World, tmp_path: Path
) -> None:
    record_id = world.ids["globex"][2]
    out = tmp_path / "proof.json"
    made = world.cli("audit", "prove", record_id, "--out", str(out))
    assert made.code == 0, made.err
    assert f"wrote the inclusion proof of record {record_id}" in made.out
    proof = json.loads(out.read_text())
    record = dict(zip(proof["fields"], json.loads(proof["record"]), strict=True))
    assert proof["record_id"] == record["id"] == record_id and record["status"] == "ok"
    events = world.store.list_audit_events(action=ANCHOR_ACTION, limit=None)
    event = next(e for e in events if proof["seal"] in e.payload["seals"])
    assert proof["event"] == event.to_json() and proof["anchor"]["size"] > 1

    # no database: another home, no store URL, no key
    offline = tmp_path / "auditor"
    checked = modelyard("audit", "check-proof", str(out), home=offline)
    assert checked.code == 0, checked.err
    assert f"proof OK: record {record_id} is leaf {proof['position']} of" in checked.out
    assert f"held by audit event seq {event.seq} (hash {event.hash})" in checked.out
    assert not offline.exists()  # nothing was created: no store opened

    values = json.loads(proof["record"])
    values[proof["fields"].index("response")] = "something else"
    edited = proof | {"record": json.dumps(values, separators=(",", ":"))}
    out.write_text(json.dumps(edited))
    bad = modelyard("audit", "check-proof", str(out), home=offline)
    assert bad.code == 1
    assert "bytes do not hash to the proof's leaf (the record was edited)" in bad.err
    with pytest.raises(AuditError, match="the path does not lead"):
        leaf = leaf_hash(proof["record"].encode())
        check_proof(proof | {"leaf": leaf.hex(), "position": (proof["position"] + 1) % 2})
    # the second level: from the seal to the anchor's root
    assert check_proof(proof).anchor_root == event.payload["root"]
    at = proof["anchor"]["position"]
    moved = proof["anchor"] | {"position": (at + 1) % proof["anchor"]["size"]}
    with pytest.raises(AuditError, match="lists another seal, size or root"):
        check_proof(proof | {"anchor": moved})
    indexes = list(event.payload["indexes"])
    indexes[at] = "00" * 32
    forged = proof["event"] | {"payload": event.payload | {"indexes": indexes}}
    with pytest.raises(AuditError, match="the anchor path does not lead from the seal"):
        check_proof(proof | {"event": forged})
    up = proof["anchor"] | {"path": ["11" * 32, *proof["anchor"]["path"][1:]]}
    with pytest.raises(AuditError, match="the anchor path does not lead from the seal"):
        check_proof(proof | {"anchor": up})

    # an edited record gets no proof at all
    world.sql("UPDATE inference_records SET prompt = 'x' WHERE id = :id", id=record_id)
    refused = world.cli("audit", "prove", record_id)
    assert refused.code == 1 and f"record {record_id} does not match its seal" in refused.err


def test_records_are_checked_on_the_database_only(tmp_path: Path) -> None:
    r = modelyard(
        "audit", "verify", "--records", home=tmp_path / "h",
        env={"MODELYARD_URL": "https://modelyard.example", "MODELYARD_TOKEN": "t"},
    )  # fmt: skip
    assert r.code == 2 and "`audit verify --records` reads the records table" in r.err


def _record(record_id: str, tid: int, status: str = "ok", **extra: object) -> NewInferenceRecord:
    fields: dict[str, object] = {"latency_ms": 3, "http_status": 200, "response": "hi"}
    return NewInferenceRecord(  # type: ignore[arg-type]
        id=record_id, endpoint_name="acme-support", route="completions", status=status,
        tenant_id=tid, prompt="hello", **(fields | extra),
    )  # fmt: skip


def test_closed_abandoned_and_replaced_records_stay_verifiable(store: Store) -> None:
    two_tenant_world(store, versions=1)
    tid = store.get_tenant("acme").id
    running = _record("r-run", tid, "running", latency_ms=0.0, http_status=0, response=None)
    store.add_monitored_records([], started=[running], server_id="gone-1-aaaaaa", seal=True)
    batch = [(_record(f"r-{i}", tid, job_id="job-1", source="batch"), None) for i in range(4)]
    store.add_monitored_records(batch, seal=True)
    assert store.verify_record_seals().running == 1

    assert store.close_running_records(["gone-1-aaaaaa"], "server stopped", seal=True) == 1
    closed = store.list_audit_events(action=ANCHOR_ACTION)[0]  # anchored at once, one seal
    assert closed.payload["closed"] == "server stopped" and closed.payload["records"] == [1]
    assert store.discard_job_records("job-1", ["r-1", "r-2"]) == 2
    report = store.verify_record_seals()
    assert report.ok and report.records == 3 and report.discarded == 2 and report.running == 0
    assert store.list_audit_events(action="records.discarded")[0].payload["ids"] == ["r-1", "r-2"]

    # the server was alive after all: it ends the request, whose row is sealed again
    ended = _record("r-run", tid)
    store.add_monitored_records(
        [(ended, None)], running={"r-run"}, server_id="gone-1-aaaaaa", seal=True
    )
    report = store.verify_record_seals()
    assert report.ok and report.records == 3 and report.seals == 3, report.problems
    proof = store.record_proof("r-run")  # from the later seal, the one that holds it as it is
    check_proof(proof)  # raises unless it verifies
    assert "ok" in json.loads(proof["record"])
    assert proof["seal"] != closed.payload["seals"][0]


def test_a_refusing_chain_leaves_records_sealed_unanchored_and_reported(
    store: Store, store_url: str
) -> None:
    two_tenant_world(store, versions=1)  # the chain, written with this home's key
    tid = store.get_tenant("acme").id
    store.add_monitored_records([(_record("r-sealed", tid), None)], seal=True)
    with Store.open(store_url, actor="ops", audit_key=OTHER_KEY) as wrong:
        writer = RecordWriter(wrong)
        writer.submit(_record("r-unanchored", tid))
        assert writer.flush(30)
        writer.close()
    assert writer.unanchored == 1 and writer.anchored == 0
    assert writer.written == 1 and writer.dropped == 0
    report = store.verify_record_seals()  # just written: pending, not a problem yet
    assert report.ok and report.records == 1 and report.pending == report.pending_seals == 1
    later = store.verify_record_seals(grace=timedelta(0))  # as seen after the grace period
    assert [(p.kind, p.record_id) for p in later.problems] == [("unanchored", "r-unanchored")]
    assert "is listed by no records.anchored event: nothing vouches for it" in (
        later.problems[0].sentence()
    )
    with pytest.raises(Conflict, match="not anchored in the audit chain yet"):
        store.record_proof("r-unanchored")


def test_a_writer_anchors_many_transactions_in_one_event(store: Store) -> None:
    two_tenant_world(store, versions=1)
    tid = store.get_tenant("acme").id
    before = len(store.list_audit_events(action=ANCHOR_ACTION, limit=None))
    writer = RecordWriter(store, anchor_s=3600)
    try:
        for i in range(3):  # one transaction each
            writer.submit(_record(f"r-{i}", tid))
            deadline = time.monotonic() + 30
            while writer.written < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert writer.written == 3
        assert len(store.list_audit_events(action=ANCHOR_ACTION, limit=None)) == before
        pending = store.verify_record_seals()
        assert pending.ok and pending.pending == 3 and pending.pending_seals == 3
        assert writer.flush(30)  # anchors what it sealed
    finally:
        writer.close()
    events = store.list_audit_events(action=ANCHOR_ACTION, limit=None)
    assert len(events) == before + 1 and events[0].payload["records"] == [1, 1, 1]
    report = store.verify_record_seals(grace=timedelta(0))
    assert report.ok and report.records == 3 and report.pending == 0
    assert writer.anchored == 3 and writer.unanchored == 0


def test_the_encoding_covers_every_record_column_and_the_tree_is_rfc9162() -> None:
    columns = {c.name for c in InferenceRecordRow.__table__.columns}
    assert set(RECORD_FIELDS) == columns
    for n in range(1, 20):
        leaves = [leaf_hash(bytes([i])) for i in range(n)]
        root = merkle_root(leaves)
        for i in range(n):
            path = inclusion_path(leaves, i)
            assert root_from_path(leaves[i], i, n, path) == root
            assert n == 1 or root_from_path(leaves[i], (i + 1) % n, n, path) != root


def test_the_fast_encodings_give_the_specified_bytes() -> None:
    """orjson (the writer's fast paths) writes byte for byte what the specification's json
    module writes: the record's array and the seal index's hash."""
    import hashlib
    import random
    from datetime import timezone

    from modelyard.audit import index_digest
    from modelyard.audit._canonical import canonical_json
    from modelyard.audit._seals import _BOOLS, _FLOATS, _INTS, RECORD_FORMAT, _encode, values_bytes

    casts: dict[str, Any] = dict.fromkeys(_FLOATS, float) | dict.fromkeys(_INTS, int)
    casts |= dict.fromkeys(_BOOLS, bool)

    def spec(values: list[object]) -> bytes:
        out: list[object] = [RECORD_FORMAT]
        for name, v in zip(RECORD_FIELDS, values, strict=True):
            if isinstance(v, datetime):
                v = v.astimezone(UTC).isoformat(timespec="microseconds")
            elif v is not None and name in casts:
                v = casts[name](v)
            out.append(v)
        return _encode(out).encode("utf-8")

    rng = random.Random(19)
    texts = ["x", "é漢字", 'a"b\\c\n\t\x01\x1f\x7f', "\u2028\u2029", "😀", "", "</script>"]
    ints = [0, 1, -1, 2**63 - 1, 2**64, True]
    floats = [0.0, -0.0, 1e-5, 1e-4, 0.5, 12.5, 1e16, 1e22, 3, True, 5e-324]
    plus2 = timezone(timedelta(hours=2))
    times = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
             datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=plus2), datetime.now(UTC)]  # fmt: skip
    for _ in range(5000):
        values: list[object] = []
        for name in RECORD_FIELDS:
            if name == "created_at":
                values.append(rng.choice(times))
            elif rng.random() < 0.2:
                values.append(None)
            elif name in _FLOATS:
                values.append(rng.choice(floats))
            elif name in _INTS:
                values.append(rng.choice(ints))
            elif name in _BOOLS:
                values.append(rng.choice([True, False, 0, 1]))
            else:
                values.append(rng.choice(texts))
        assert values_bytes(values) == spec(values), values
    for _ in range(500):
        k = rng.randint(0, 4)
        ids = [rng.choice(texts) for _ in range(k)]
        tenants: list[int | None] = [rng.choice([None, 1, 2**64]) for _ in range(k)]
        at = [rng.choice(texts) for _ in range(k)]
        text = canonical_json({"ids": ids, "tenants": tenants, "times": at})
        assert index_digest(ids, tenants, at) == hashlib.sha256(text.encode()).hexdigest()
