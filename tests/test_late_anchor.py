"""An admin's late anchor (`modelyard audit anchor`): seals that a killed server never
anchored stop failing `audit verify --records` once an admin who checked them vouches
for them, with a reason; a seal whose records changed, or whose server still runs, is
refused, and nothing is anchored then."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from clihelp import Result, modelyard
from modelyard.audit import ANCHOR_ACTION, SealEntry
from modelyard.errors import AuditError, ConfigError, Conflict, NotFound
from modelyard.monitoring import ABANDONED
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._schema import ServerRow
from modelyard.store._seals import RecordSealRow
from worlds import two_tenant_world

KEY = "5e" * 32
REASON = "server srv-killed killed at 10:09 (INC-12); its 3 records match the 10:30 backup"

# A server's record writer, as `modelyard serve` runs it, killed before its first
# anchor: it heartbeats, seals three requests in their transactions, says so, and waits.
_WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from modelyard.monitoring import RecordWriter
    from modelyard.store import NewInferenceRecord, Store

    store = Store.open(sys.argv[1], actor="server", audit_key=sys.argv[2])
    store.heartbeat_server(
        "srv-killed", address="127.0.0.1:1", hostname="here", pid=0, engine="echo",
        modelyard_version="test", started_at=datetime.now(UTC), ready=True,
        draining=False, state={},
    )
    writer = RecordWriter(store, server_id="srv-killed", anchor_s=3600)
    for i in range(3):
        writer.submit(NewInferenceRecord(
            id=f"chatcmpl-{i}", endpoint_name="acme-support", route="chat.completions",
            status="ok", tenant_id=int(sys.argv[3]), prompt=f"question {i}",
            response="an answer", latency_ms=3.0, http_status=200,
        ))
    while writer.written < 3:
        time.sleep(0.01)
    print("written", flush=True)
    time.sleep(600)
    """
)


@dataclass
class World:
    store: Store
    url: str
    home: Path

    def cli(self, *args: str, actor: str = "alice") -> Result:
        env = {"MODELYARD_STORE_URL": self.url, "MODELYARD_AUDIT_KEY": KEY}
        r = modelyard(*args, home=self.home, env=env | {"MODELYARD_ACTOR": actor})
        assert "Traceback" not in r.err, r.err
        return r

    def age(self, seals: float = 3, heartbeats: float = 3) -> None:
        """Move every seal's index row and every heartbeat back in time by so many minutes
        (as if the grace period, 2 minutes, or the heartbeats' staleness had passed; a
        seal stays within minutes of its records, where a proof looks for it)."""
        engine = create_engine(self.url)
        try:
            with Session(engine) as s, s.begin():
                for row in s.scalars(select(RecordSealRow)):
                    row.created_at -= timedelta(minutes=seals)
                for server in s.scalars(select(ServerRow)):
                    server.heartbeat_at -= timedelta(minutes=heartbeats)
        finally:
            engine.dispose()

    def sql(self, statement: str, **params: object) -> None:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                assert conn.execute(text(statement), params).rowcount == 1
        finally:
            engine.dispose()

    def anchors(self) -> int:
        return len(self.store.list_audit_events(action=ANCHOR_ACTION, limit=None))


@contextmanager
def make_world(store_url: str, tmp_path: Path) -> Iterator[World]:
    """Two tenants, an admin alice (the store's actor) and a developer dev."""
    with Store.open(store_url, audit_key=KEY) as store:  # the OS user: the bootstrap admin
        two_tenant_world(store, versions=1)
        store.add_actor("dev", "developer")
        store.add_actor("alice", "admin")  # the bootstrap admin's last act as one
    store = Store.open(store_url, actor="alice", audit_key=KEY)
    try:
        yield World(store, store_url, tmp_path / "home")
    finally:
        store.close()


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> Iterator[World]:
    with make_world(store_url, tmp_path) as made:
        yield made


def _kill_a_writer_before_its_anchor(world: World) -> None:
    tid = world.store.get_tenant("acme").id
    cmd = [sys.executable, "-c", _WRITER, world.url, KEY, str(tid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None
    with proc.stdout:
        try:
            assert proc.stdout.readline().strip() == "written"
        finally:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL


def test_an_admin_anchors_late_what_a_killed_server_sealed(world: World) -> None:
    _kill_a_writer_before_its_anchor(world)
    # the grace period is over (verification fails for good); its heartbeat stays fresh
    world.age(seals=3, heartbeats=-10)
    bad = world.cli("audit", "verify", "--records")
    assert bad.code == 1, bad.out + bad.err
    assert "record chatcmpl-0 unanchored" in bad.err and "listed by no records.anchored" in bad.err

    # its server looks alive (a fresh heartbeat): a live server anchors its own seals
    dry = world.cli("audit", "anchor", "--dry-run")
    assert dry.code == 0, dry.err
    assert "3 records" in dry.out and "srv-killed" in dry.out
    assert "cannot be vouched for: its server srv-killed is alive" in dry.out
    assert "dry run: 3 records in 1 seals; 1 cannot be vouched for" in dry.out
    before = world.anchors()
    alive = world.cli("audit", "anchor", "--reason", REASON)
    assert alive.code == 1 and "refusing to anchor late" in alive.err
    assert "Nothing was anchored" in alive.err and world.anchors() == before

    world.age(seals=0, heartbeats=20)  # its heartbeat is stale now: the server is gone
    no_reason = world.cli("audit", "anchor")
    assert no_reason.code == 2 and "needs a reason" in no_reason.err
    denied = world.cli("audit", "anchor", "--reason", REASON, actor="dev")
    assert denied.code == 1 and "needs role admin" in denied.err
    assert world.anchors() == before

    done = world.cli("audit", "anchor", "--reason", REASON)
    assert done.code == 0, done.err
    assert "anchored late 3 records in 1 seals as audit event" in done.out
    event = world.store.list_audit_events(action=ANCHOR_ACTION, limit=1)[0]
    assert event.actor == "alice" and sum(event.payload["records"]) == 3
    assert event.payload["late"] == {"reason": REASON, "servers": ["srv-killed"]}

    ok = world.cli("audit", "verify", "--records")
    assert ok.code == 0, ok.err
    assert "records OK: 3 records match" in ok.out and "3 anchored late by an admin" in ok.out
    assert f"anchored late at audit event {event.seq} by alice" in ok.out
    assert REASON in " ".join(ok.out.split())
    report = json.loads(world.cli("audit", "verify", "--records", "--json").out)["records"]
    assert report["late"] == 3 and report["late_anchors"][0]["seq"] == event.seq

    log = world.cli("audit", "log", "--action", ANCHOR_ACTION, "--limit", "1")
    assert f"anchored late: {REASON}" in " ".join(log.out.split())

    proof = world.home.parent / "proof.json"
    proved = world.cli("audit", "prove", "chatcmpl-1", "--out", str(proof))
    assert proved.code == 0, proved.err
    checked = world.cli("audit", "check-proof", str(proof))
    assert checked.code == 0, checked.err
    assert f"anchored late by admin alice: {REASON}" in " ".join(checked.out.split())

    again = world.cli("audit", "anchor", "--reason", REASON)
    assert again.code == 1 and "nothing to anchor" in again.err


def _record(record_id: str, tid: int, **extra: Any) -> NewInferenceRecord:
    fields: dict[str, Any] = {"latency_ms": 3.0, "http_status": 200, "response": "hi"}
    return NewInferenceRecord(
        id=record_id, endpoint_name="acme-support", route="completions", tenant_id=tid,
        prompt="hello", **({"status": "ok"} | fields | extra),
    )  # fmt: skip


def _unanchored(world: World, *ids: str) -> str:
    """A seal of ``ids`` written and never anchored (its writer gone); its id."""
    tid = world.store.get_tenant("acme").id
    sealed: list[SealEntry] = []
    records = [(_record(i, tid), None) for i in ids]
    world.store.add_monitored_records(records, server_id="srv-gone", seal=True, sealed=sealed)
    return str(sealed[0].seal)


def test_a_seal_whose_records_changed_is_refused_and_nothing_is_anchored(world: World) -> None:
    edited = _unanchored(world, "r-edited", "r-kept")
    gone = _unanchored(world, "r-gone")
    good = _unanchored(world, "r-good")
    world.age()
    world.sql("UPDATE inference_records SET response = 'a better answer' WHERE id = 'r-edited'")
    world.sql("DELETE FROM inference_records WHERE id = 'r-gone'")
    before = world.anchors()

    dry = world.store.anchor_late(None, dry_run=True)
    problems = {x.seal: x.problem for x in dry.seals}
    assert problems[good] is None and dry.events == []
    assert problems[edited] == "record r-edited (position 0) is not what was sealed: it was edited"
    assert "record r-gone (position 0) is gone" in str(problems[gone])
    with pytest.raises(AuditError, match="2 of 3 seals cannot be vouched for") as refused:
        world.store.anchor_late(REASON)
    assert f"seal {edited}: record r-edited" in str(refused.value)
    assert world.anchors() == before

    with pytest.raises(NotFound, match="no seal 'nope'"):
        world.store.anchor_late(REASON, seals=["nope"])
    only = world.store.anchor_late(REASON, seals=[good])
    assert [x.seal for x in only.seals] == [good] and len(only.events) == 1
    with pytest.raises(Conflict, match=f"seal {good} is anchored already, by audit event"):
        world.store.anchor_late(REASON, seals=[good])
    young = _unanchored(world, "r-young")
    with pytest.raises(Conflict, match="within the grace period"):
        world.store.anchor_late(REASON, seals=[young])
    with pytest.raises(ConfigError, match="needs a reason"):
        world.store.anchor_late("  ")

    report = world.store.verify_record_seals()
    assert report.late == 1  # r-good; the edited seal's records stay unanchored
    assert {p.record_id for p in report.problems if p.kind == "unanchored"} == {
        "r-edited", "r-kept"
    }  # fmt: skip


def test_requests_closed_as_abandoned_without_a_seal_are_sealed_late(world: World) -> None:
    """What the sweep closed while the audit chain refused anchors (or an older `doctor
    --fix` closed): final records no seal holds, reported as inserted."""
    tid = world.store.get_tenant("acme").id
    world.store.add_monitored_records([(_record("r-first", tid), None)], seal=True)
    running = _record("r-run", tid, status="running", latency_ms=0.0, http_status=0, response=None)
    world.store.add_monitored_records([], started=[running], server_id="srv-gone", seal=True)
    assert world.store.close_running_records(["srv-gone"], ABANDONED) == 1  # unsealed
    bad = world.store.verify_record_seals()
    assert [(p.kind, p.record_id) for p in bad.problems] == [("inserted", "r-run")]

    nothing = world.cli("audit", "anchor", "--reason", REASON)
    assert nothing.code == 1 and "nothing to anchor" in nothing.err
    dry = world.cli("audit", "anchor", "--abandoned", "--dry-run")
    assert dry.code == 0, dry.err
    assert "records closed as abandoned, sealed now: 1 record" in dry.out
    assert "all can be anchored late" in dry.out
    done = world.cli("audit", "anchor", "--abandoned", "--reason", REASON, "--json")
    assert done.code == 0, done.err
    body = json.loads(done.out)
    assert body["anchored"] and body["records"] == 1 and body["seals"][0]["closed"]
    report = world.store.verify_record_seals()
    assert report.ok and report.late == 1 and report.records == 2
    proof = world.store.record_proof("r-run")
    assert proof["event"]["payload"]["late"]["reason"] == REASON


def test_anchor_runs_on_the_database_only(world: World) -> None:
    r = modelyard("audit", "anchor", "--dry-run", home=world.home,
                  env={"MODELYARD_URL": "http://127.0.0.1:9"})  # fmt: skip
    assert r.code == 2 and "`audit anchor` reads the records table" in r.err
    assert "Unset MODELYARD_URL" in r.err and "Traceback" not in r.err
