"""The audit chain: one event per change, in its transaction; tampering is found and named."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import itertools
import json
import multiprocessing
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from clihelp import modelyard
from modelyard.audit import GENESIS, AccessPolicy, AuditHead, AuditKeySource, parse_key
from modelyard.errors import (
    AuditChainBroken,
    AuditKeyMismatch,
    AuditKeyMissing,
    ConfigError,
    Conflict,
)
from modelyard.store import Store

KEY = "correct horse battery staple, but longer"
POLICY = AccessPolicy(bootstrap_admin="ops")  # 'ops' is admin until an admin is recorded


def _open(url: str, *, actor: str = "ops", key: str | AuditKeySource = KEY) -> Store:
    return Store.open(url, actor=actor, audit_key=key, policy=POLICY)


@pytest.fixture
def audited(store_url: str) -> Iterator[Store]:
    with _open(store_url) as s:
        yield s


def _seed(store: Store) -> None:
    store.create_tenant("acme")
    store.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    store.create_registered_model("support", tenant="acme")


def _version(store: Store, run_id: str | None = None) -> int:
    return store.create_model_version(
        "support", kind="adapter", artifact_digest="cd" * 32, base_model="tiny",
        run_id=run_id, lineage={"seed": 1}, metrics={"exact_match": 1.0},
    ).version  # fmt: skip


def _actions(store: Store) -> list[tuple[str, str]]:
    return [(e.action, e.subject) for e in store.list_audit_events(limit=None, newest_first=False)]


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def test_every_change_appends_one_event_and_no_op_appends_none(audited: Store) -> None:
    s = audited
    _seed(s)
    s.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})  # no-op
    ds = s.register_dataset(
        "tickets", digest="1" * 64, artifact_digest="2" * 64, format="alpaca", n_rows=3, report={}
    )
    s.register_dataset(  # same content: the existing version, no event
        "tickets", digest="1" * 64, artifact_digest="2" * 64, format="alpaca", n_rows=3, report={}
    )
    s.create_run("run-1", base_model="tiny", dataset_id=ds.id, config={"lr": 0.1}, seed=1,
                 environment={})  # fmt: skip
    s.finish_run("run-1", status="finished", metrics={"loss": 0.5})
    _version(s, "run-1")
    _version(s)
    s.record_gate_verdicts("support", 1, [{"gate": "exact_match", "passed": True}], True)
    s.set_alias("support", "champion", 1)
    s.set_alias("support", "champion", 1)  # already there: no event
    s.set_alias("support", "challenger", 2)
    s.create_endpoint("ep", model_ref="support@champion", tenant="acme")
    s.set_traffic("ep", {1: 90, 2: 10})
    s.create_api_key("key1", tenant="acme", key_hash="h" * 64, scopes=["infer"])
    s.revoke_api_key("key1")
    s.revoke_api_key("key1")  # revoked already: no event
    s.set_traffic("ep", {1: 100, 2: 0})
    s.delete_alias("support", "challenger")
    s.archive_model_version("support", 2)
    s.record_audit_event("artifact.import_refused", "sha256:ab", {"rule": "pickle"})

    assert _actions(s) == [
        ("tenant.created", "acme"),
        ("base_model.registered", "tiny"),
        ("registered_model.created", "support"),
        ("dataset.registered", "tickets:1"),
        ("run.started", "run-1"),
        ("run.finished", "run-1"),
        ("model_version.registered", "support:1"),
        ("model_version.registered", "support:2"),
        ("gate.verdict", "support:1"),
        ("alias.set", "support@champion"),
        ("alias.set", "support@challenger"),
        ("endpoint.created", "ep"),
        ("endpoint.traffic_set", "ep"),
        ("api_key.created", "key1"),
        ("api_key.revoked", "key1"),
        ("endpoint.traffic_set", "ep"),
        ("alias.deleted", "support@challenger"),
        ("model_version.archived", "support:2"),
        ("artifact.import_refused", "sha256:ab"),
    ]
    events = s.list_audit_events(limit=None, newest_first=False)
    assert [e.seq for e in events] == list(range(1, 20))
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert {e.actor for e in events} == {"ops"}
    assert events[12].payload == {"traffic": {"1": 90, "2": 10}, "previous": {"1": 100}}
    assert "h" * 64 not in json.dumps([e.to_json() for e in events])  # never a key hash
    report = s.verify_audit_chain()
    assert report.ok and report.events == 19 and report.head == s.audit_head()


def test_log_filters_by_action_subject_actor_time_and_limit(audited: Store, store_url: str) -> None:
    audited.create_tenant("a_b")
    audited.create_tenant("axb")
    audited.record_audit_event("note.added", "a_b:1")
    with _open(store_url, actor="kim") as kim:
        kim.record_audit_event("note.added", "axb:1")

    def subjects(**filters: object) -> list[str]:
        return [e.subject for e in audited.list_audit_events(**filters)]  # type: ignore[arg-type]

    assert subjects(action="tenant.created") == ["axb", "a_b"]
    assert subjects(action="note.*") == ["axb:1", "a_b:1"]
    assert subjects(subject="a_b*") == ["a_b:1", "a_b"]  # '_' is not a wildcard
    assert subjects(actor="kim") == ["axb:1"]
    assert subjects(limit=1) == ["axb:1"]
    assert subjects(limit=None, newest_first=False) == ["a_b", "axb", "a_b:1", "axb:1"]
    later = audited.list_audit_events(limit=1)[0].time
    assert subjects(since=later) == ["axb:1"]


def test_a_refused_change_appends_nothing(audited: Store) -> None:
    _seed(audited)
    _version(audited)
    before = audited.audit_head()
    with pytest.raises(Conflict):
        audited.create_tenant("acme")
    with pytest.raises(ConfigError):
        audited.set_traffic("nope", {1: 50})
    assert audited.audit_head() == before


def test_change_and_event_commit_or_roll_back_together(store_url: str) -> None:
    with _open(store_url) as good:
        good.create_tenant("acme")
    with _open(store_url, key="another key entirely") as wrong:
        with pytest.raises(AuditKeyMismatch, match=r"seq 1\b"):
            wrong.create_tenant("globex")  # the event cannot be written, so neither is the row
        assert [t.name for t in wrong.list_tenants()] == ["acme"]
        report = wrong.verify_audit_chain()
        assert not report.ok and report.first_bad_seq == 1


def test_an_auditor_can_check_an_export_with_only_hmac_and_json(audited: Store) -> None:
    """The documented hash: HMAC-SHA256(key, prev_hash + canonical JSON of the six fields)."""
    _seed(audited)
    audited.record_audit_event("note.added", "ünïcode", {"b": [1, 2.5, None], "a": "é"})
    key = KEY.encode()
    prev = "0" * 64
    for event in audited.iter_audit_events():
        fields = {k: event.to_json()[k] for k in ("seq", "time", "actor", "action", "subject")}
        fields["payload"] = dict(event.payload)
        body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected = hmac.new(key, (prev + body).encode("utf-8"), hashlib.sha256).hexdigest()
        assert event.prev_hash == prev and event.hash == expected
        assert event.to_json()["time"].endswith("+00:00") and "." in event.to_json()["time"]
        prev = event.hash


# -- tampering -----------------------------------------------------------------------------

FORGED = "f" * 64
INSERT = "INSERT INTO audit_events (seq, time, actor, action, subject, payload, prev_hash, hash) "
TAMPERING = {
    "edited payload": (
        ['UPDATE audit_events SET payload = \'{"storage_policy": "none"}\' WHERE seq = 3'],
        3,
        "edited",
    ),
    "deleted middle row": (["DELETE FROM audit_events WHERE seq = 3"], 3, "missing"),
    "swapped rows": (
        [
            "UPDATE audit_events SET seq = -1 WHERE seq = 2",
            "UPDATE audit_events SET seq = 2 WHERE seq = 4",
            "UPDATE audit_events SET seq = 4 WHERE seq = -1",
        ],
        2,
        "reordered",
    ),
    "edited actor": (["UPDATE audit_events SET actor = 'mallory' WHERE seq = 4"], 4, "edited"),
    # SQLite keeps whatever text it is given: a row the store cannot even read is named too
    "time that is no date": (
        ["UPDATE audit_events SET time = 'garbage' WHERE seq = 3"],
        3,
        "edited",
    ),
    "payload that is no JSON": (
        ["UPDATE audit_events SET payload = '{nope' WHERE seq = 2"],
        2,
        "edited",
    ),
    "newest time that is no date": (
        ["UPDATE audit_events SET time = 'x' WHERE seq = 5"],
        5,
        "edited",
    ),
    "forged row at the end": (
        [
            INSERT + "SELECT 6, time, 'mallory', 'alias.set', 'support@champion', '{}', hash, "
            f"'{FORGED}' FROM audit_events WHERE seq = 5"
        ],
        6,
        "forged",
    ),
    "forged row in the middle": (
        [
            "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 3",
            "UPDATE audit_events SET seq = seq - 99 WHERE seq >= 100",
            INSERT + "SELECT 3, time, 'mallory', 'tenant.created', 'evil', '{}', hash, "
            f"'{FORGED}' FROM audit_events WHERE seq = 2",
        ],
        3,
        "forged",
    ),
}


def _five_events(url: str) -> AuditHead:
    with _open(url) as s:
        for name in ("a", "b", "c", "d", "e"):
            s.create_tenant(name)
        return s.audit_head()


@pytest.mark.parametrize("case", list(TAMPERING), ids=list(TAMPERING))
def test_verify_names_the_first_bad_event(case: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _five_events(url)
    statements, first_bad, word = TAMPERING[case]
    _sql(url, *statements)
    with _open(url) as s:
        report = s.verify_audit_chain()
    assert not report.ok
    assert report.first_bad_seq == first_bad
    assert word in (report.reason or "")
    with pytest.raises(AuditChainBroken, match=rf"audit chain broken at seq {first_bad}:"):
        report.raise_if_broken()


def test_a_cut_tail_is_caught_by_the_recorded_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    head = _five_events(url)
    _sql(url, "DELETE FROM audit_events WHERE seq >= 4")
    with _open(url) as s:
        report = s.verify_audit_chain()
        assert not report.ok and report.first_bad_seq == 4
        assert "events 4..5 were removed" in (report.reason or "")
        with pytest.raises(AuditChainBroken, match="refusing to append"):
            s.create_tenant("f")  # no new event 4 over the removed ones
        assert [t.name for t in s.list_tenants()] == ["a", "b", "c", "d", "e"]
    # An attacker who also rewrites the recorded head is caught by the break on record...
    _sql(url, "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_events WHERE seq = 3)")
    with _open(url) as s:
        report = s.verify_audit_chain()
    assert not report.ok and report.first_bad_seq == 4
    assert "events 4..5 were removed" in (report.reason or "")
    assert "found by `audit verify`" in (report.reason or "")
    # ... and one who deletes that record too, by the head kept elsewhere.
    _sql(url, "DELETE FROM audit_breaks")
    with _open(url) as s:
        assert s.verify_audit_chain().ok  # a shorter chain, consistent with its record
        report = s.verify_audit_chain(str(head))
    assert not report.ok and report.first_bad_seq == 4
    assert "but the head given with --head is 5: events 4..5 were removed" in (report.reason or "")


@pytest.mark.parametrize("how", ["DELETE FROM audit_events", "DELETE FROM audit_head"])
def test_an_emptied_chain_or_a_deleted_head_record_is_broken(store_url: str, how: str) -> None:
    _five_events(store_url)
    _sql(store_url, how)
    with _open(store_url) as s:
        report = s.verify_audit_chain()
        assert not report.ok, report
        with pytest.raises(AuditChainBroken, match="refusing to append to the audit chain"):
            s.create_tenant("f")
        with pytest.raises(AuditChainBroken):
            s.record_audit_event("test.appended", "x")
        assert "f" not in {t.name for t in s.list_tenants()}
    if how == "DELETE FROM audit_events":
        assert report.events == 0 and report.first_bad_seq == 1
        assert "the chain is empty but the store recorded head 5:" in (report.reason or "")
        assert "events 1..5 were removed" in (report.reason or "")
    else:
        assert "audit_head" in (report.reason or "") and "deleted" in (report.reason or "")


def test_events_added_outside_modelyard_do_not_match_the_recorded_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _five_events(url)
    _sql(url, "DELETE FROM audit_head")  # then a valid-looking event 6 with no record of it
    with _open(url) as s:
        assert not s.verify_audit_chain().ok
    _sql(url, "INSERT INTO audit_head (id, seq, hash, updated_at) "
              "SELECT 1, 4, hash, time FROM audit_events WHERE seq = 4")  # fmt: skip
    with _open(url) as s:
        report = s.verify_audit_chain()
    assert not report.ok and report.first_bad_seq == 5
    assert "past the recorded head 4:" in (report.reason or "")


def test_a_rewritten_head_is_caught_by_the_kept_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    head = _five_events(url)
    _sql(
        url,
        "DELETE FROM audit_events WHERE seq = 5",
        "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4)",
    )
    with _open(url) as s:
        s.create_tenant("f")  # seq 5 again, validly chained, but not the head we kept
        report = s.verify_audit_chain(head)
    assert not report.ok and report.first_bad_seq == 5
    assert f"its hash differs from the head given with --head, {head}:" in (report.reason or "")


def test_tampering_is_found_on_postgresql(postgres_url: str) -> None:
    _five_events(postgres_url)
    _sql(
        postgres_url,
        'UPDATE audit_events SET payload = \'{"storage_policy": "none"}\' WHERE seq = 2',
    )
    with _open(postgres_url) as s:
        report = s.verify_audit_chain()
    assert not report.ok and report.first_bad_seq == 2


# -- concurrency ---------------------------------------------------------------------------


def _append_many(url: str, who: str, n: int) -> None:
    with _open(url, actor=who) as s:
        for i in range(n):
            s.record_audit_event("test.appended", f"{who}:{i}", {"i": i})


def test_parallel_writers_build_one_linear_chain(store_url: str) -> None:
    with _open(store_url) as s:
        s.create_tenant("acme")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(store_url, f"w{i}", 25)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    with _open(store_url) as s:
        report = s.verify_audit_chain()
        events = s.list_audit_events(limit=None, newest_first=False)
    assert report.ok and report.events == 101
    assert [e.seq for e in events] == list(range(1, 102))
    for i in range(4):  # each writer's events are in its own order
        mine = [e.payload["i"] for e in events if e.actor == f"w{i}"]
        assert mine == list(range(25))


# -- keys ----------------------------------------------------------------------------------


def test_key_file_is_created_0600_on_first_use_and_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    key_file = tmp_path / "keys" / "audit.key"
    with _open(url, key=AuditKeySource(key_file=key_file)) as s:
        assert s.verify_audit_chain().ok  # reading an empty chain creates nothing
        assert not key_file.exists()
        s.create_tenant("acme")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text())) == 32
    with _open(url, key=AuditKeySource(key_file=key_file)) as s:
        s.create_tenant("globex")
        assert s.verify_audit_chain().ok
    with _open(url, key=key_file.read_text()) as s:  # the same key as hex text
        assert s.verify_audit_chain().ok


def test_a_missing_key_is_not_invented_for_an_existing_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with _open(url) as s:
        s.create_tenant("acme")
    elsewhere = tmp_path / "other-machine" / "audit.key"
    with _open(url, key=AuditKeySource(key_file=elsewhere)) as s:
        with pytest.raises(AuditKeyMissing, match="already has events"):
            s.create_tenant("globex")
        with pytest.raises(AuditKeyMissing):
            s.verify_audit_chain()
    assert not elsewhere.exists()


def test_key_text_is_hex_or_any_string() -> None:
    assert parse_key("00" * 32) == bytes(32)
    assert parse_key("not hex at all") == b"not hex at all"
    assert parse_key("abcd") == b"abcd"  # short hex-looking strings are text, not 2 bytes
    with pytest.raises(ConfigError, match="empty"):
        parse_key("  ")


def test_head_parsing_rejects_garbage() -> None:
    assert AuditHead.parse("7:" + "A" * 64) == AuditHead(7, "a" * 64)
    with pytest.raises(ConfigError) as info:
        AuditHead.parse("7:abc")
    assert "SEQ:HASH" in info.value.one_line()


# -- CLI -----------------------------------------------------------------------------------


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_init_creates_the_key_and_verify_log_head_export(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = modelyard("init", "--json", home=home)
    assert init.code == 0, init.err
    info = json.loads(init.out)
    assert info["audit_key_created"] is True and info["audit_key"] == str(home / "audit.key")
    assert stat.S_IMODE((home / "audit.key").stat().st_mode) == 0o600
    url = f"sqlite:///{home / 'store.db'}"
    with _open(url, key=AuditKeySource(key_file=home / "audit.key")) as s:
        s.create_tenant("acme")
        s.create_tenant("globex")
        s.create_registered_model("support", tenant="acme")
        assert [e.seq for e in s.list_audit_events(limit=2)] == [4, 3]

    head = modelyard("audit", "head", home=home)
    assert head.code == 0 and head.out.strip().startswith("4:")
    ok = modelyard("audit", "verify", "--head", head.out.strip(), home=home)
    assert ok.code == 0 and "audit chain OK: 4 events" in ok.out, ok.err

    log = modelyard("audit", "log", "--action", "tenant.*", "--since", "1d", "--json", home=home)
    assert log.code == 0, log.err
    assert [(e["seq"], e["subject"]) for e in json.loads(log.out)] == [(3, "globex"), (2, "acme")]

    out = tmp_path / "audit.csv"
    exported = modelyard("audit", "export", "--format", "csv", "--out", str(out), home=home)
    assert exported.code == 0, exported.err
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["action"] for r in rows] == [
        "actor.added", "tenant.created", "tenant.created", "registered_model.created",
    ]  # fmt: skip
    assert json.loads(rows[1]["payload"]) == {"storage_policy": "redacted"}  # the default

    # Tamper, then verify: exit 1, one line naming the first bad seq, the report as JSON.
    _sql(url, "DELETE FROM audit_events WHERE seq = 4")
    cut = modelyard("audit", "verify", "--head", head.out.strip(), "--json", home=home)
    assert cut.code == 1
    assert "audit chain broken at seq 4" in _one_error_line(cut.err)
    assert json.loads(cut.out)["first_bad_seq"] == 4
    jsonl = modelyard("audit", "export", home=home)
    assert [json.loads(line)["seq"] for line in jsonl.out.splitlines()] == [1, 2, 3]
    # Without the kept head too: the store recorded head 4, the chain ends at 3.
    alone = modelyard("audit", "verify", home=home)
    assert alone.code == 1 and "events 4..4 were removed" in _one_error_line(alone.err)
    # An emptied table is no "OK: 0 events", and no new chain starts on it.
    _sql(url, "DELETE FROM audit_events")
    empty = modelyard("audit", "verify", home=home)
    assert empty.code == 1
    assert "audit chain broken at seq 1: the chain is empty" in _one_error_line(empty.err)
    refused = modelyard("tenants", "create", "initech", home=home)
    assert refused.code != 0 and "refusing to append" in _one_error_line(refused.err)


def test_a_row_edited_past_reading_is_named_by_every_command_that_reads_the_chain(
    tmp_path: Path,
) -> None:
    """SQLite keeps a time of 'garbage': verify, log, export and the next write name the
    event (exit 1, one line) instead of failing with the date parser's traceback."""
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    _sql(f"sqlite:///{home / 'store.db'}", "UPDATE audit_events SET time = 'garbage' WHERE seq = 2")
    verify = modelyard("audit", "verify", home=home)
    assert verify.code == 1 and "audit chain broken at seq 2" in _one_error_line(verify.err)
    exported = modelyard("audit", "export", home=home)
    assert exported.code == 0, exported.err
    event = json.loads(exported.out.splitlines()[1])
    assert event["seq"] == 2 and "cannot be read" in event["payload"]["unreadable"]
    log = modelyard("audit", "log", "--json", home=home)
    assert log.code == 0 and [e["seq"] for e in json.loads(log.out)] == [2, 1], log.err
    refused = modelyard("tenants", "create", "globex", home=home)
    assert refused.code != 0 and "Traceback" not in refused.err
    assert "refusing to append to the audit chain, broken at seq 2" in _one_error_line(refused.err)


def test_cli_log_keeps_its_key_columns_whole_at_80_columns(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    with _open(
        f"sqlite:///{home / 'store.db'}", key=AuditKeySource(key_file=home / "audit.key")
    ) as s:
        _seed(s)
        _version(s)
        s.set_version_tags("support:1", {"ticket": "CHG-" + "1234567890" * 6, "owner": "ml-team"})
    for columns in ("80", "200"):
        log = modelyard("audit", "log", home=home, env={"COLUMNS": columns})
        assert log.code == 0, log.err
        lines = log.out.splitlines()
        assert all(len(line) <= int(columns) for line in lines), log.out
        for whole in ("seq", "time (UTC)", "actor", "action", "subject", "details",
                      "model_version.tagged", "support:1", "base_model.registered",
                      "registered_model.created", "ops"):  # fmt: skip
            assert whole in log.out, (columns, whole, log.out)
        assert re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d:\d\d\b", log.out)
        flat = "".join(line.strip(" │") for line in lines)
        assert "CHG-" + "1234567890" * 6 in flat.replace(" ", "")  # wrapped, not cut


def test_cli_bad_inputs_are_usage_errors(tmp_path: Path) -> None:
    bad_head = modelyard("audit", "verify", "--head", "12:nothex", home=tmp_path)
    assert bad_head.code == 2 and "SEQ:HASH" in _one_error_line(bad_head.err)
    bad_since = modelyard("audit", "log", "--since", "last tuesday", home=tmp_path)
    assert bad_since.code == 2 and "--since" in _one_error_line(bad_since.err)
    zero_since = modelyard("audit", "log", "--since", "0d", home=tmp_path)
    assert zero_since.code == 2
    assert "duration '0d' for --since is zero" in _one_error_line(zero_since.err)
    bad_format = modelyard("audit", "export", "--format", "xml", home=tmp_path)
    assert bad_format.code == 2 and "xml" in _one_error_line(bad_format.err)
    nowhere = tmp_path / "missing" / "audit.csv"
    bad_out = modelyard("audit", "export", "--out", str(nowhere), home=tmp_path)
    assert bad_out.code == 2 and "does not exist" in _one_error_line(bad_out.err)
