"""The request journal: a request is recorded as ``running`` when it starts, updated when it
ends, and closed as failed when the server running it is gone (kill -9, a crash).

The end-to-end test (kill -9 of a real ``modelyard serve`` mid-stream, then a restart) is
in ``test_shutdown.py``; here, the store's steps on SQLite and PostgreSQL, the writer and
the decision of which servers are gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.doctor import Finding, diagnose
from modelyard.monitoring import (
    ABANDONED,
    RecordWriter,
    close_abandoned,
    started_record,
)
from modelyard.store import NewInferenceRecord, RecordFeatures, Store, utcnow
from worlds import two_tenant_world

HOST = socket.gethostname()


def _dead_pid() -> int:
    """The pid of a process of this machine that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def _start(store: Store, rid: str) -> NewInferenceRecord:
    if not store.list_endpoints():
        two_tenant_world(store, versions=1)
    tenant = store.get_tenant("acme")
    return started_record(
        rid, endpoint="acme-support", route="completions", tenant_id=tenant.id,
        api_key_id=None, version_id=None, prompt="hello",
    )  # fmt: skip


def _ended(start: NewInferenceRecord, status: str = "ok") -> NewInferenceRecord:
    return NewInferenceRecord(
        id=start.id, endpoint_name=start.endpoint_name, route=start.route, latency_ms=12.0,
        status=status, http_status=200, tenant_id=start.tenant_id, prompt="hello",
        response="world", prompt_tokens=1, completion_tokens=1,
    )  # fmt: skip


def _features() -> RecordFeatures:
    return RecordFeatures(
        prompt_chars=5, response_chars=5, prompt_non_ascii=0.0, prompt_digits=0.0,
        response_non_ascii=0.0, response_digits=0.0,
    )  # fmt: skip


def _status(store: Store) -> dict[str, tuple[str, int, str | None]]:
    rows = store.query_records(limit=None)
    return {r["id"]: (r["status"], r["http_status"], r["error"]) for r in rows}


def test_running_rows_are_updated_when_they_end_and_closed_when_their_server_is_gone(
    store: Store,
) -> None:
    a, b = _start(store, "cmpl-a"), _start(store, "cmpl-b")
    c = _start(store, "cmpl-c")
    store.add_monitored_records([], started=[a, b], server_id="gone-1-aaaaaa")
    store.add_monitored_records([], started=[c], server_id="alive-2-bbbbbb")
    assert _status(store) == {
        "cmpl-a": ("running", 0, None),
        "cmpl-b": ("running", 0, None),
        "cmpl-c": ("running", 0, None),
    }
    running = store.query_records(status="running", limit=None)
    assert sorted(r["id"] for r in running) == ["cmpl-a", "cmpl-b", "cmpl-c"]
    assert store.running_record_servers() == ["alive-2-bbbbbb", "gone-1-aaaaaa"]

    # b ends: its row is updated (no second row), with its features
    written = store.add_monitored_records(
        [(_ended(b), _features())], running={"cmpl-b"}, server_id="gone-1-aaaaaa"
    )
    assert written == 1 and store.count_inference_records() == 3
    assert _status(store)["cmpl-b"] == ("ok", 200, None)
    ok = store.query_records(status="ok", limit=None)
    assert [(r["id"], r["response"], r["prompt_chars"]) for r in ok] == [("cmpl-b", "world", 5)]

    assert store.close_running_records(["gone-1-aaaaaa"], ABANDONED) == 1
    assert _status(store) == {
        "cmpl-a": ("error", 500, ABANDONED),  # closed as failed
        "cmpl-b": ("ok", 200, None),  # ended before: untouched
        "cmpl-c": ("running", 0, None),  # another server's: untouched
    }
    assert store.running_record_servers() == ["alive-2-bbbbbb"]
    assert store.close_running_records(["gone-1-aaaaaa"], ABANDONED) == 0  # idempotent


def test_close_abandoned_closes_only_servers_that_are_gone(store: Store, tmp_path: Path) -> None:
    me = f"{HOST}-{os.getpid()}-000000"
    dead_here = f"{HOST}-{_dead_pid()}-111111"  # its process exited: gone at once
    alive_here = f"{HOST}-{os.getpid()}-222222"  # this process: alive
    stale = "elsewhere-7-333333"  # another machine, heartbeat stale
    fresh = "elsewhere-8-444444"  # another machine, heartbeat fresh
    unknown = "elsewhere-9-555555"  # another machine, no heartbeat: left alone
    ids = [me, dead_here, alive_here, stale, fresh, unknown]
    for i, sid in enumerate(ids):
        store.add_monitored_records([], started=[_start(store, f"cmpl-{i}")], server_id=sid)
    for sid in (stale, fresh):
        store.heartbeat_server(
            sid, address="", hostname="elsewhere", pid=1, engine="echo",
            modelyard_version="0", started_at=utcnow(), ready=True, draining=False, state={},
        )  # fmt: skip
    # "stale": heartbeats older than 0 s are stale, but "fresh" is judged with 3600 s
    assert close_abandoned(store, me, stale_after_s=3600) == 1  # dead_here only
    assert close_abandoned(store, me, stale_after_s=0) == 2  # then stale and fresh
    status = {sid: _status(store)[f"cmpl-{i}"][0] for i, sid in enumerate(ids)}
    assert status == {
        me: "running",
        dead_here: "error",
        alive_here: "running",
        stale: "error",
        fresh: "error",
        unknown: "running",
    }

    # `modelyard doctor` closes what no sweep can: a server on another machine that never
    # sent a heartbeat, once its requests are older than --stale; a live process never
    # (the world's versions name artifacts this test never stored: the doctor's ``missing``)
    def requests(**kw: Any) -> list[Finding]:
        report = diagnose(store, ArtifactStore(tmp_path / "artifacts"), **kw)
        return [f for f in report.findings if f.kind == "requests"]

    assert [f.subject for f in requests(stale=timedelta(0))] == [unknown]
    assert requests(stale=timedelta(hours=1)) == []
    assert [f.fixed for f in requests(stale=timedelta(0), fix=True)] == [True]
    assert _status(store)["cmpl-5"] == ("error", 500, ABANDONED)
    assert _status(store)["cmpl-0"][0] == _status(store)["cmpl-2"][0] == "running"


class _Recording:
    """A store that records what the writer asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], set[str], str | None]] = []

    def add_monitored_records(
        self,
        items: Sequence[tuple[NewInferenceRecord, RecordFeatures | None]],
        *,
        started: Sequence[NewInferenceRecord] = (),
        running: Any = frozenset(),
        server_id: str | None = None,
        seal: bool = False,
        leaves: Any = None,
        sealed: Any = None,
    ) -> int:
        self.calls.append(
            ([r.id for r, _ in items], [r.id for r in started], set(running), server_id)
        )
        return len(items)


def test_writer_inserts_a_short_request_once_and_updates_a_long_one() -> None:
    fake = _Recording()
    # a start_delay no test outlives: the short request ends before its start is due
    writer = RecordWriter(fake, server_id="s-1-abcdef", start_delay=3600)  # type: ignore[arg-type]
    try:
        short = started_record("cmpl-short", endpoint="e", route="completions", tenant_id=None,
                               api_key_id=None, version_id=None, prompt=None)  # fmt: skip
        writer.started(short)
        writer.submit(_ended(short))
        writer.flush()
        assert fake.calls == [(["cmpl-short"], [], set(), "s-1-abcdef")]
        assert writer.written == 1

        fake.calls.clear()
        long = started_record("cmpl-long", endpoint="e", route="completions", tenant_id=None,
                              api_key_id=None, version_id=None, prompt=None)  # fmt: skip
        writer.started(long)
        writer.flush()  # a flush writes the requests still running
        writer.submit(_ended(long))
        writer.flush()
        assert fake.calls == [
            ([], ["cmpl-long"], set(), "s-1-abcdef"),
            (["cmpl-long"], [], {"cmpl-long"}, "s-1-abcdef"),  # an update, not an insert
        ]
    finally:
        writer.close()


def test_writer_writes_a_request_still_running_after_start_delay(store: Store) -> None:
    start = _start(store, "cmpl-slow")
    writer = RecordWriter(store, server_id="s-1-abcdef", start_delay=0.0)
    try:
        writer.started(start)
        writer.flush()
        assert _status(store) == {"cmpl-slow": ("running", 0, None)}
        writer.submit(_ended(start, "cancelled"), _features())
        writer.flush()
        assert _status(store) == {"cmpl-slow": ("cancelled", 200, None)}
        assert store.count_inference_records() == 1 and writer.dropped == 0
    finally:
        writer.close()
