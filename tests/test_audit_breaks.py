"""A broken audit chain stops governed writes until an admin acknowledges the break (issue 15).

Once a break is found (by `audit verify`, or by the O(1) check of the chain's end
before every append) it is recorded, and every audited change is refused. An
admin's acknowledgment, itself an event of the chain, lets writes go on; the
break stays in every verification and in the log, and any other change to the
chain is a new break.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from clihelp import modelyard
from modelyard.audit import ACK_ACTION, AccessPolicy
from modelyard.errors import (
    AuditChainBroken,
    AuditKeyMismatch,
    ConfigError,
    Conflict,
    PermissionDenied,
)
from modelyard.store import Store

DOCS = Path(__file__).resolve().parents[1] / "docs"
KEY = "correct horse battery staple, but longer"
POLICY = AccessPolicy(bootstrap_admin="ops")  # 'ops' is admin until an admin is recorded
EDIT_3 = 'UPDATE audit_events SET payload = \'{"storage_policy": "none"}\' WHERE seq = 3'


def _open(url: str, *, actor: str = "ops", key: str = KEY) -> Store:
    return Store.open(url, actor=actor, audit_key=key, policy=POLICY)


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _five_events(url: str) -> None:
    with _open(url) as s:
        for name in ("a", "b", "c", "d", "e"):
            s.create_tenant(name)


@pytest.fixture
def five(store_url: str) -> Iterator[str]:
    """A store whose chain holds five events (tenants a to e)."""
    _five_events(store_url)
    yield store_url


def _tenants(s: Store) -> set[str]:
    return {t.name for t in s.list_tenants()}


def test_a_break_found_by_verify_stops_every_audited_write_until_acknowledged(five: str) -> None:
    _sql(five, EDIT_3)
    with _open(five) as s:
        s.create_tenant("f")  # the end of the chain is intact: nobody has looked yet
        report = s.verify_audit_chain()
        assert not report.ok and report.first_bad_seq == 3 and "edited" in (report.reason or "")
        (recorded,) = s.open_audit_breaks()
        assert (recorded.seq, recorded.found_in, recorded.found_by) == (3, "verify", "ops")
        head = s.audit_head()
        with pytest.raises(AuditChainBroken, match=r"refusing to append .* broken at seq 3: "):
            s.create_tenant("g")
        with pytest.raises(AuditChainBroken) as refused:
            s.record_audit_event("note.added", "x")
        assert "`modelyard audit acknowledge --reason" in refused.value.one_line()
        assert s.audit_head() == head and "g" not in _tenants(s)
    # A refusal stands, though the chain cannot hold it.
    with _open(five, actor="dev") as dev, pytest.raises(PermissionDenied, match="role admin"):
        dev.acknowledge_audit_breaks("it was me")
    with _open(five) as s:
        with pytest.raises(ConfigError, match="needs a reason"):
            s.acknowledge_audit_breaks("  ")
        ack = s.acknowledge_audit_breaks("event 3 edited by hand in INC-7; see the 02:00 export")
        assert (ack.seq, ack.action, ack.actor, ack.subject) == (7, ACK_ACTION, "ops", "audit:3")
        assert ack.payload["reason"] == "event 3 edited by hand in INC-7; see the 02:00 export"
        assert [b["seq"] for b in ack.payload["breaks"]] == [3]
        assert ack.payload["head"] == str(head)
        assert s.open_audit_breaks() == []

        s.create_tenant("g")  # writes go on
        report = s.verify_audit_chain()
        assert report.ok and report.events == 8, report
        (done,) = report.acknowledged  # ... and the break stays on record
        assert (done.seq, done.ack_seq, done.actor) == (3, 7, "ops")
        assert "edited" in done.reason and "INC-7" in done.why
        assert report.to_json()["acknowledged_breaks"][0]["acknowledged_seq"] == 7
        with pytest.raises(Conflict, match="nothing to acknowledge"):
            s.acknowledge_audit_breaks("again")

    # The acknowledgment covers the chain as the admin saw it: editing event 3 again, or any
    # other event, is a new break.
    _sql(five, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    with _open(five) as s:
        report = s.verify_audit_chain()
        assert not report.ok and report.first_bad_seq == 3
        assert [(b.seq, b.reason) for b in s.open_audit_breaks()] == [(3, report.reason)]
        with pytest.raises(AuditChainBroken, match="broken at seq 3"):
            s.create_tenant("h")


@pytest.mark.parametrize(
    ("tampering", "seq", "why"),
    [
        ("UPDATE audit_events SET subject = 'zz' WHERE seq = 5", 5, "edited"),
        ("UPDATE audit_events SET subject = 'zz' WHERE seq = 4", 4, "edited"),
        ("DELETE FROM audit_events WHERE seq = 4", 4, "event 4 is missing"),
        ("UPDATE audit_events SET prev_hash = hash WHERE seq = 5", 5, "prev_hash"),
    ],
    ids=["newest edited", "one before edited", "one before deleted", "newest relinked"],
)
def test_the_check_before_each_write_finds_a_break_at_the_end(
    five: str, tampering: str, seq: int, why: str
) -> None:
    _sql(five, tampering)
    with _open(five) as s:
        with pytest.raises(AuditChainBroken, match=f"broken at seq {seq}: .*{why}"):
            s.create_tenant("f")
        (recorded,) = s.open_audit_breaks()  # kept: the next write is refused as well
        assert (recorded.seq, recorded.found_in) == (seq, "write")
        with pytest.raises(AuditChainBroken, match=f"broken at seq {seq}: .*found by the check"):
            s.create_tenant("f")
        s.acknowledge_audit_breaks("known: a test tampered with it")
        s.create_tenant("f")
        report = s.verify_audit_chain()
        assert report.ok, report
        assert [a.seq for a in report.acknowledged] == [seq]


@pytest.mark.parametrize("first_gone", [4, 1], ids=["tail cut", "table emptied"])
def test_removed_events_can_be_acknowledged_and_stay_on_record(five: str, first_gone: int) -> None:
    _sql(five, f"DELETE FROM audit_events WHERE seq >= {first_gone}")
    removed = f"events {first_gone}..5 were removed"
    with _open(five) as s:
        with pytest.raises(AuditChainBroken, match=removed.replace(".", r"\.")):
            s.create_tenant("f")
        ack = s.acknowledge_audit_breaks("the 02:00 backup missed the last events")
        assert ack.seq == first_gone and ack.payload["recorded_head"].startswith("5:")
        s.create_tenant("f")
        report = s.verify_audit_chain()
    assert report.ok and report.head.seq == first_gone + 1
    assert [(a.seq, a.ack_seq) for a in report.acknowledged] == [(first_gone, first_gone)]
    assert removed in report.acknowledged[0].reason


def test_an_acknowledgment_can_be_neither_forged_nor_removed(five: str) -> None:
    _sql(five, EDIT_3)
    with _open(five) as s:
        with pytest.raises(ConfigError, match="reserved"):
            s.record_audit_event(ACK_ACTION, "audit:3", {"breaks": [{"seq": 3}]})
        s.verify_audit_chain()
        s.acknowledge_audit_breaks("known")
        s.create_tenant("f")
    # Rewriting the acknowledgment breaks its hash: it covers nothing, event 3 is broken again.
    _sql(five, 'UPDATE audit_events SET payload = \'{"reason": "x"}\' WHERE seq = 6')
    with _open(five) as s:
        report = s.verify_audit_chain()
    assert not report.ok and [b.seq for b in report.breaks] == [3, 6]
    assert report.acknowledged == ()


def test_deleting_the_acknowledgment_brings_the_break_back(five: str) -> None:
    _sql(five, EDIT_3)
    with _open(five) as s:
        s.verify_audit_chain()
        s.acknowledge_audit_breaks("known")
        s.create_tenant("f")
    _sql(five, "DELETE FROM audit_events WHERE seq = 6")
    with _open(five) as s:
        report = s.verify_audit_chain()
    assert not report.ok and [b.seq for b in report.breaks] == [3, 6]
    assert "event 6 is missing" in report.breaks[1].reason


def test_a_wrong_key_is_refused_but_is_not_a_break(five: str) -> None:
    with _open(five, key="another key entirely") as wrong:
        with pytest.raises(AuditKeyMismatch):
            wrong.create_tenant("f")
        report = wrong.verify_audit_chain()
        assert not report.ok and "verifies no event" in (report.reason or "")
        with pytest.raises(AuditKeyMismatch, match="verifies none of the 5 events"):
            wrong.acknowledge_audit_breaks("nothing is wrong but my key")
        assert wrong.open_audit_breaks() == []  # one misconfigured machine stops nobody
    with _open(five) as s:
        s.create_tenant("f")
        assert s.verify_audit_chain().ok


def test_a_restored_chain_still_needs_the_break_acknowledged(five: str) -> None:
    _sql(five, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    with _open(five) as s:
        assert s.verify_audit_chain().first_bad_seq == 2
    _sql(five, "UPDATE audit_events SET actor = 'ops' WHERE seq = 2")  # restored
    with _open(five) as s:
        report = s.verify_audit_chain()
        assert not report.ok and report.first_bad_seq == 2
        assert "found by `audit verify`, actor ops" in (report.reason or "")
        with pytest.raises(AuditChainBroken):
            s.create_tenant("f")
        ack = s.acknowledge_audit_breaks("restored event 2 from the backup")
        assert ack.payload["breaks"][0]["fingerprint"] is None  # no longer in the chain
        s.create_tenant("f")
        report = s.verify_audit_chain()
    assert report.ok and [a.seq for a in report.acknowledged] == [2]


def test_the_check_before_a_write_reads_the_same_rows_however_long_the_chain(
    store_url: str,
) -> None:
    """O(1): the same statements for a chain of 5 or 60 events, each reading a few rows."""
    with _open(store_url) as s:
        s.create_tenant("t0")

        def statements_of_one_write(name: str) -> list[str]:
            seen: list[str] = []

            def log(conn: object, cursor: object, statement: str, *args: object) -> None:
                seen.append(" ".join(statement.split()))

            event.listen(s._engine, "before_cursor_execute", log)
            try:
                s.create_tenant(name)
            finally:
                event.remove(s._engine, "before_cursor_execute", log)
            return seen

        for i in range(1, 4):
            s.create_tenant(f"t{i}")
        short = statements_of_one_write("short")
        for i in range(4, 60):
            s.record_audit_event("note.added", f"n{i}")
        long = statements_of_one_write("long")
    assert len(short) == len(long)
    reads = [q for q in long if "FROM audit_" in q and q.startswith("SELECT")]
    assert reads and all("LIMIT" in q or "WHERE audit_head.id" in q for q in reads), reads


# -- CLI -----------------------------------------------------------------------------------


def _documented_refusal() -> str:
    text = (DOCS / "audit.md").read_text(encoding="utf-8")
    block = re.search(r"## When the chain is broken\n.*?```\n\$ modelyard tenants create initech"
                      r"\n(error: [^\n]+)\n\$ echo \$\?\n1\n```", text, re.S)  # fmt: skip
    assert block is not None
    return block.group(1)


def _without_who_and_when(line: str) -> str:
    return re.sub(r"actor \S+, \d{4}-\d\d-\d\d \d\d:\d\d UTC", "actor A, T", line)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_a_broken_chain_refuses_writes_until_an_admin_acknowledges(
    tmp_path: Path, store_url: str
) -> None:
    home = tmp_path / "home"
    env = {"MODELYARD_STORE_URL": store_url}

    def run(*args: str) -> tuple[int, str, str]:
        r = modelyard(*args, home=home, env=env)
        assert "Traceback" not in r.err, r.err
        return r.code, r.out, r.err

    assert run("init")[0] == 0
    for name in ("acme", "globex"):
        assert run("tenants", "create", name)[0] == 0
    _sql(store_url, EDIT_3)  # event 3: tenant globex created

    code, out, err = run("audit", "verify")
    assert code == 1 and out == ""
    line = _one_error_line(err)
    assert line.startswith("error: audit chain broken at seq 3: its hash does not match")
    assert "refuses audited changes" in line and "modelyard audit acknowledge --reason" in line

    code, _, err = run("tenants", "create", "initech")
    assert code == 1
    line = _one_error_line(err)
    assert "refusing to append to the audit chain, broken at seq 3" in line
    assert "found by `audit verify`" in line and "modelyard audit acknowledge" in line
    assert _without_who_and_when(line) == _without_who_and_when(_documented_refusal())

    code, out, err = run("audit", "log", "--json")
    assert code == 0 and [e["seq"] for e in json.loads(out)] == [3, 2, 1]
    assert "warning: the audit chain is broken at seq 3" in err

    code, _, err = run("--actor", "bob", "audit", "acknowledge", "--reason", "was me")
    assert code == 1 and "needs role admin" in _one_error_line(err)
    assert run("audit", "acknowledge")[0] == 2  # --reason is required

    why = "globex's row edited by hand in INC-7; the original is in the 02:00 export"
    code, out, _ = run("audit", "acknowledge", "--reason", why)
    assert code == 0
    assert "acknowledged 1 break of the audit chain as event 4" in out and "seq 3: " in out

    code, out, _ = run("audit", "verify")
    assert code == 0 and "audit chain OK: 4 events" in out and "1 acknowledged break" in out
    assert "acknowledged break at seq 3: its hash does not match" in out and why in out
    code, out, _ = run("audit", "verify", "--json")
    report = json.loads(out)
    assert report["ok"] and report["acknowledged_breaks"][0]["acknowledged_seq"] == 4

    code, out, err = run("audit", "log", "--action", "audit.*", "--json")
    assert code == 0 and err == ""
    (ack,) = json.loads(out)
    assert ack["action"] == ACK_ACTION and ack["payload"]["reason"] == why
    code, out, _ = run("audit", "log")
    assert code == 0 and "audit.break_acknowledged" in out and "INC-7" in out

    assert run("tenants", "create", "initech")[0] == 0
    code, _, err = run("audit", "acknowledge", "--reason", "again")
    assert code == 1 and "nothing to acknowledge" in _one_error_line(err)
    with _open(store_url, key=(home / "audit.key").read_text()) as s:
        assert "initech" in _tenants(s)


def test_cli_a_head_given_past_the_end_is_named_as_the_given_head_and_can_be_acknowledged(
    tmp_path: Path,
) -> None:
    """An admin's `verify --head 99:…` on a chain that ends at 3 said "the recorded head is
    99": the head came from --head, not from the store. The break is recorded (an
    external head is how a cut tail is caught), named as the given head, and stays named
    so after the acknowledgment."""
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    for name in ("acme", "globex"):
        assert modelyard("tenants", "create", name, home=home).code == 0  # events 2 and 3
    given = "99:" + "ab" * 32
    named = (
        "the chain ends at event 3 but the head given with --head is 99: events 4..99 were "
        "removed, or the head was mistyped"
    )

    cut = modelyard("audit", "verify", "--head", given, home=home)
    assert cut.code == 1 and cut.out == ""
    line = _one_error_line(cut.err)
    assert line.startswith(f"error: audit chain broken at seq 4: {named}. "), line
    assert "recorded head" not in line
    assert '`modelyard audit acknowledge --reason "the head given with --head was mistyped"`' in (
        line
    )
    refused = modelyard("tenants", "create", "initech", home=home)  # recorded: by design
    assert refused.code == 1 and named in _one_error_line(refused.err)

    why = "the head given with --head was mistyped"
    acked = modelyard("audit", "acknowledge", "--reason", why, home=home)
    assert acked.code == 0 and f"seq 4: {named} (found by `audit verify`" in acked.out
    verify = modelyard("audit", "verify", home=home)
    assert verify.code == 0, verify.err
    assert f"acknowledged break at seq 4: {named} (found by `audit verify`" in verify.out
    assert why in verify.out and "recorded head" not in verify.out
    report = json.loads(modelyard("audit", "verify", "--json", home=home).out)
    (done,) = report["acknowledged_breaks"]
    assert done["reason"].startswith(named) and done["acknowledgment_reason"] == why
    assert modelyard("tenants", "create", "initech", home=home).code == 0


def test_cli_export_warns_on_stderr_while_a_break_is_open_as_log_does(tmp_path: Path) -> None:
    """`audit export` of a chain with an edited event exited 0 with no word of the break
    that `audit log` warns about: an auditor who only exports learned nothing."""
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    for name in ("acme", "globex"):
        assert modelyard("tenants", "create", name, home=home).code == 0
    _sql(f"sqlite:///{home / 'store.db'}", EDIT_3)
    assert modelyard("audit", "verify", home=home).code == 1  # the break is on record
    warning = "warning: the audit chain is broken at seq 3: its hash does not match"

    log = modelyard("audit", "log", "--json", home=home)
    assert log.code == 0 and warning in log.err
    jsonl = modelyard("audit", "export", home=home)
    assert jsonl.code == 0 and warning in jsonl.err
    assert "modelyard audit acknowledge --reason" in jsonl.err
    lines = jsonl.out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]  # stdout: the export only
    assert json.loads(lines[2])["payload"] == {"storage_policy": "none"}  # as stored
    out = tmp_path / "audit.csv"
    csv_out = modelyard("audit", "export", "--format", "csv", "--out", str(out), home=home)
    assert csv_out.code == 0 and warning in csv_out.err
    assert csv_out.out.startswith("exported 3 events to ") and warning not in csv_out.out
    assert out.read_text(encoding="utf-8").splitlines()[0].startswith("seq,")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4

    why = "globex's row edited by hand in INC-7"
    assert modelyard("audit", "acknowledge", "--reason", why, home=home).code == 0
    after = modelyard("audit", "export", "--format", "csv", home=home)
    assert after.code == 0 and after.err == ""  # acknowledged: nothing to warn about
