"""The controller's tick reads the judges' scores of every rollout with guards on judges
together, and its judging job picks their records together: a tick over 6 such rollouts
sends the statements of a tick over 1 (the judge's calls aside). It read each rollout's
scores (two statements per judge and side) and picked each one's records (the judge and a
statement per side) on its own: 7 statements a rollout on SQLite. Each rollout's decision
is still its own: on a mixed set a passing judge moves its step, a failing one rolls back
with the guard's reason, one with too few judged records holds, and one whose guards no
longer parse is left alone (logged) while the others move. On SQLite and PostgreSQL
(``store``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from conftest import selects, statements
from modelyard.delivery import Controller, _judging
from modelyard.delivery._views import read_versions, step_view, window_of
from modelyard.errors import ConfigError, NotFound
from modelyard.store import Judgement, NewInferenceRecord, Store, utcnow
from worlds import fake_world

MIN_REQUESTS = 20
CANARY = 30
GUARDS = {
    "pass": ("error_rate <= 0.05", "judge.q >= 3.5 (sample 5)"),
    "fail": ("error_rate <= 0.05", "judge.q >= 3.5 (sample 5)"),
    "few": ("error_rate <= 0.05", "judge.q >= 3.5 (sample 5)"),
    "relative": ("judge.q >= 3 (sample 5)", "judge.r >= baseline - 0.5 (sample 5)"),
    "plain": ("error_rate <= 0.05",),
    "bad": ("judge.q >= 3.5 (sample 5)",),
}
"""Each kind of rollout's guards, and (``_scores``) what its judges gave its records."""


@pytest.fixture
def judged(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Judges ``q`` and ``r``; the judging job's judge calls answer nothing and write nothing
    (each call's record ids are listed), so the store stays as the test made it."""
    url = "http://127.0.0.1:9/v1"
    store.put_judge("q", rubric="relevance", base_url=url, model="m")
    store.put_judge("r", rubric="relevance", base_url=url, model="m")
    calls: list[list[str]] = []

    def judge_records(store: Store, judge: Any, ids: Sequence[str]) -> Any:
        calls.append([judge.name, *ids])
        return SimpleNamespace(judgements=list(ids))

    monkeypatch.setattr(_judging, "judge_records", judge_records)
    yield calls


def _add(store: Store, i: int, prefix: str, version_id: int, n: int, minutes_ago: float) -> None:
    at = utcnow() - timedelta(minutes=minutes_ago)
    store.add_inference_records(
        NewInferenceRecord(
            id=f"{prefix}{i}-{k:03d}", endpoint_name=f"e{i}", route="chat.completions",
            latency_ms=20.0 + k % 7, status="ok", http_status=200, version_id=version_id,
            tenant_id=store.get_tenant(f"t{i}").id, created_at=at,
            prompt="### Instruction:\nhi\n\n### Response:\n", response="hello",
        )
        for k in range(n)
    )  # fmt: skip


def _score(store: Store, judge: str, prefix: str, n: int, score: float) -> None:
    store.save_judgements([
        Judgement(judge, 1, f"h-{judge}-{prefix}-{k}", f"{prefix}-{k:03d}", score, None, None,
                  1, 1, 0.0, 1.0)
        for k in range(n)
    ])  # fmt: skip


def _rollout(store: Store, i: int) -> Any:
    (r,) = store.list_rollouts(endpoint=f"e{i}", limit=1)
    return r


def _start(store: Store, ctl: Controller, kinds: dict[int, str]) -> None:
    """For each endpoint ``e{i}`` of ``kinds`` (a world of its own, serving version 1 with
    half an hour of its traffic): a rollout to version 2 with the kind's guards, prepared
    and baking, then ``CANARY`` records of version 2 scored as the kind says."""
    versions = {}
    for i, kind in kinds.items():
        v1, v2 = fake_world(store, tenant=f"t{i}", model=f"m{i}", endpoint=f"e{i}", versions=2)
        versions[i] = v2.id
        _add(store, i, "b", v1.id, 40, minutes_ago=30)
        store.create_rollout(
            f"e{i}", target=2, steps=(10, 50, 100), bake_s=0.0, min_requests=MIN_REQUESTS,
            guards=GUARDS[kind],
        )  # fmt: skip
    prepared = {r.id: {"ok": True} for r in store.list_rollouts(active=True)}
    store.heartbeat_server(
        "s1", address="127.0.0.1:1", hostname="h", pid=1, engine="echo",
        modelyard_version="0", started_at=utcnow(), ready=True, draining=False,
        state={"loaded": [], "prepared": prepared},
    )  # fmt: skip
    ctl.tick()
    for i, kind in kinds.items():
        assert _rollout(store, i).phase == "baking"
        _add(store, i, "c", versions[i], CANARY, minutes_ago=0)
        scored = {"pass": 25, "fail": 25, "few": 10, "relative": 25, "bad": 25}.get(kind, 0)
        _score(store, "q", f"c{i}", scored, 2.0 if kind == "fail" else 4.5)
        if kind == "relative":
            _score(store, "r", f"c{i}", scored, 4.0)
            _score(store, "r", f"b{i}", 25, 4.2)


def _settled(ctl: Controller) -> None:
    """Wait for the judging job the last tick started (the judging thread runs one job at a
    time: a job queued after it ends after it)."""
    ctl._judging.submit(lambda: None).result(timeout=60)


def _tick_statements(store: Store, ctl: Controller) -> int:
    """The statements of a tick in which no rollout moves and of its judging job."""
    before = {r.id: r.updated_at for r in store.list_rollouts(active=True)}
    with statements(store) as sent:
        assert ctl.tick() == []
        _settled(ctl)
    assert {r.id: r.updated_at for r in store.list_rollouts(active=True)} == before
    return len(sent)


def test_a_tick_over_6_judge_guarded_rollouts_sends_what_a_tick_over_1_sends(
    store: Store, judged: list[list[str]]
) -> None:
    ctl = Controller(store, holder="one")
    try:
        _start(store, ctl, {0: "few"})
        ctl.tick()  # warm: the judging thread's connection
        _settled(ctl)
        one = _tick_statements(store, ctl)
        _start(store, ctl, dict.fromkeys(range(1, 6), "few"))
        ctl.tick()
        _settled(ctl)
        judged.clear()
        six = _tick_statements(store, ctl)
        assert six == one, (one, six)
        # judge q was run over the sample of each rollout's canary and baseline
        assert {name for name, *_ in judged} == {"q"}
        ids = [x for _, *picked in judged for x in picked]
        for i in range(6):
            assert len([x for x in ids if x.startswith(f"c{i}-")]) == 5, ids
            assert len([x for x in ids if x.startswith(f"b{i}-")]) == 5, ids
    finally:
        ctl.close()


def _guard(r: Any, detail: dict[str, Any], guard: str) -> dict[str, Any]:
    (found,) = [g for g in detail["guards"] if g["guard"] == guard]
    return {k: found[k] for k in ("status", "value", "n", "failed")}


def test_each_rollout_is_decided_on_its_own_judges_and_a_bad_one_stops_no_other(
    store: Store, judged: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    kinds = dict(enumerate(["pass", "fail", "few", "relative", "plain", "bad"]))
    ctl = Controller(store, holder="one")
    try:
        _start(store, ctl, kinds)
        bad = _rollout(store, 5)
        with store._engine.begin() as conn:  # stored before a guard's grammar changed
            conn.execute(
                text("update rollouts set guards = :g where id = :i"),
                {"g": '["judge.q >= most"]', "i": bad.id},
            )
        views = {i: step_view(store, _rollout(store, i)) for i in range(5)}
        assert [g.status for g in views[2].guards] == ["pass", "pending"]
        assert views[2].judge_backlog == CANARY - 10
        with caplog.at_level(logging.WARNING, logger="modelyard.delivery._controller"):
            changed = {r.endpoint: r for r in ctl.tick()}
        assert sorted(changed) == ["e0", "e1", "e3", "e4"]
        for i in (0, 3, 4):
            r = changed[f"e{i}"]
            assert (r.status, r.phase, r.step_index) == ("running", "baking", 1), r
        previous = changed["e0"].events[-1].detail["previous"]
        assert _guard(changed["e0"], previous, "judge.q >= 3.5 (sample 5)") == {
            "status": "pass", "value": 4.5, "n": 25, "failed": 0,
        }  # fmt: skip
        previous = changed["e3"].events[-1].detail["previous"]
        assert _guard(changed["e3"], previous, "judge.r >= baseline - 0.5 (sample 5)") == {
            "status": "pass", "value": 4.0, "n": 25, "failed": 0,
        }  # fmt: skip
        gone = changed["e1"]
        assert gone.status == "rolled_back"
        breach = gone.outcome["breach"]
        assert breach["kind"] == "guard"
        assert breach["message"] == (
            "judge.q >= 3.5 (sample 5): judge.q=2 (threshold 3.5, n=25) → breach"
        ), breach["message"]
        for i in (2, 5):  # held: too few scores; guards that do not parse (logged)
            r = _rollout(store, i)
            assert (r.status, r.phase, r.step_index) == ("running", "baking", 0), r
        assert [m for m in caplog.messages if bad.id in m and "judge.q >= most" in m]
        # the held one's judge was asked for more of its records, the bad one's never
        _settled(ctl)
        asked = [x for call in judged for x in call[1:]]
        assert [x for x in asked if x.startswith("c2-")]
        assert not [x for x in asked if x.startswith(("c5-", "b5-"))]
    finally:
        ctl.close()


def test_the_judging_job_picks_every_rollouts_records_at_once_and_fails_each_alone(
    store: Store, judged: list[list[str]]
) -> None:
    ctl = Controller(store, holder="one")
    try:
        _start(store, ctl, {0: "few", 1: "few"})
    finally:
        ctl.close()
    rollouts = [_rollout(store, i) for i in (0, 1)]
    versions = read_versions(store, rollouts)
    windows = [window_of(r, versions) for r in rollouts]
    asks = {
        "ok": (GUARDS["few"], windows[0]),
        "gone": (("judge.gone >= 3",), windows[1]),  # a judge removed since it started
        "bad": (("judge.q >= most",), windows[1]),  # a guard that no longer parses
        "also": (GUARDS["few"], windows[1]),
    }
    judged.clear()
    with statements(store) as sent:
        got = _judging.judge_windows(store, asks)
    assert (got["ok"], got["also"]) == (10, 10)  # 5 records a side
    assert isinstance(got["gone"], NotFound) and "gone" in got["gone"].message
    assert isinstance(got["bad"], ConfigError)
    assert len(selects(sent)) == 2, sent  # the judges, the picks of every window
    assert [call[0] for call in judged] == ["q", "q"]
    assert {x.split("-")[0] for x in judged[0][1:]} == {"c0", "b0"}
