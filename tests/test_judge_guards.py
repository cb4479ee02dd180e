"""Rollout guards on judges, in the store and in the guard's grammar: the records a judge
guard judges are picked, and what its judge made of a window is counted, by the database
(never by reading out a busy endpoint's window), on SQLite and PostgreSQL; how many records
per side a guard has judged per job is the guard's ``(sample N)``, validated like any part
of a guard. (The whole loop with a real judge is in ``test_judges_e2e.py``.)"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import statements
from modelyard.cli import main
from modelyard.delivery import _judging, parse_guard
from modelyard.delivery._judging import DEFAULT_SAMPLE, StepWindow, judge_samples
from modelyard.errors import ConfigError
from modelyard.store import Judgement, NewInferenceRecord, Store
from worlds import fake_world

CANARY, BASELINE = 120, 30


def _add(store: Store, prefix: str, version_id: int, n: int, now: datetime, **extra: Any) -> None:
    store.add_inference_records(
        NewInferenceRecord(
            id=f"{prefix}-{i:03d}", endpoint_name="support", route="chat.completions",
            latency_ms=1.0, status=extra.get("status", "ok"), http_status=200,
            tenant_id=store.get_tenant("acme").id, version_id=version_id,
            prompt=extra.get("prompt", "### Instruction:\nhi\n\n### Response:\n"),
            response="hello", created_at=now - timedelta(seconds=n - i),
            shadow=extra.get("shadow", False),
        )
        for i in range(n)
    )  # fmt: skip


def _judged(store: Store, record_id: str, score: float | None, revision: int) -> Judgement:
    return Judgement(
        "q", revision, f"hash-{record_id}-{revision}-{score}", record_id, score, None,
        None if score is not None else "no score", 1, 1, 0.0, 1.0,
    )  # fmt: skip


@pytest.fixture
def window(store: Store) -> Iterator[tuple[Store, StepWindow]]:
    """Endpoint ``support``: ``CANARY`` readable records of bot:2 and ``BASELINE`` of bot:1 (and
    records no judge can read); judge ``q`` at revision 2, whose revision 1 judged c-119."""
    v1, v2 = fake_world(store, versions=2)
    now = datetime.now(UTC)
    _add(store, "c", v2.id, CANARY, now)
    _add(store, "b", v1.id, BASELINE, now)
    _add(store, "x-err", v2.id, 5, now, status="error")
    _add(store, "x-shadow", v2.id, 5, now, shadow=True)
    _add(store, "x-hash", v2.id, 5, now, prompt="sha256:" + "0" * 64)
    url = "http://127.0.0.1:9/v1"
    store.put_judge("q", rubric="relevance", base_url=url, model="m")
    store.save_judgements([_judged(store, "c-119", 1.0, 1)])  # an earlier revision's
    store.put_judge("q", rubric="relevance", base_url=url, model="m", replace=True)
    store.save_judgements(
        [_judged(store, f"c-{i:03d}", 4.0, 2) for i in range(10)]
        + [_judged(store, f"c-{i:03d}", None, 2) for i in range(10, 16)]
        + [_judged(store, "c-015", 3.0, 2)]  # asked again, scored: scored
        + [_judged(store, "x-err-000", 1.0, 2)]  # not a record a guard reads
    )
    since = now - timedelta(hours=1)
    yield store, StepWindow("support", since, (v2.id,), since, (v1.id,))


def _no_window_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a window's record ids out of the store fails the test."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a judge guard read the window's record ids")

    monkeypatch.setattr(Store, "judgement_states", refused)


def test_what_a_judge_made_of_the_window_is_counted_by_the_store(
    window: tuple[Store, StepWindow], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, w = window
    _no_window_reads(monkeypatch)
    (judged,) = _judging.judged_windows(store, ["judge.q >= 3"], w).values()
    assert sorted(judged.canary.scores) == [3.0] + [4.0] * 10
    assert (judged.canary.failed, judged.canary.unjudged) == (5, CANARY - 16)
    assert (judged.baseline.scores, judged.baseline.failed) == ((), 0)
    assert judged.baseline.unjudged == BASELINE


def test_a_judge_guard_judges_its_sample_per_side_from_across_the_window(
    window: tuple[Store, StepWindow], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, w = window
    _no_window_reads(monkeypatch)
    sent: list[list[str]] = []

    def judge_records(store: Store, judge: Any, ids: Sequence[str]) -> Any:
        assert (judge.name, judge.revision) == ("q", 2)
        sent.append(list(ids))
        return SimpleNamespace(judgements=list(ids))

    monkeypatch.setattr(_judging, "judge_records", judge_records)
    assert _judging.judge_window(store, ["judge.q >= 3 (sample 7)"], w) == 14
    (picked,) = sent
    canary = [i for i in picked if i.startswith("c-")]
    assert len(canary) == len(set(canary)) == 7
    assert len([i for i in picked if i.startswith("b-")]) == 7
    unjudged = [f"c-{i:03d}" for i in range(16, CANARY)]  # c-119: judged by revision 1 only
    assert set(canary) <= set(unjudged)
    assert set(canary) != set(unjudged[:7])  # at random from the window, not the oldest
    sent.clear()
    assert _judging.judge_window(store, ["judge.q >= 3"], w) == DEFAULT_SAMPLE + BASELINE
    assert len({i for i in sent[0] if i.startswith("c-")}) == DEFAULT_SAMPLE


def test_the_store_picks_and_counts_on_indexes_not_a_scan_of_the_records(home: Path) -> None:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    v1, v2 = fake_world(store, versions=2)
    store.put_judge("q", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
    since = datetime.now(UTC) - timedelta(hours=1)
    with statements(store) as sent:
        store.judged_counts("q", "support", since, [v1.id, v2.id])
        store.unjudged_records("q", "support", since, [v1.id, v2.id], 10)
    read = [(s, p) for s, p in sent if s.lstrip().upper().startswith("SELECT")]
    read = [(s, p) for s, p in read if "inference_records" in s]
    assert len(read) == 3  # the two counts in one query, the scores, the pick
    with store._engine.connect() as conn:
        for statement, params in read:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                           params)]  # fmt: skip
            assert not [line for line in plan if line.startswith("SCAN")], plan
            assert any("ix_inference_records_endpoint_created" in line for line in plan), plan
            assert any("ix_judgements_record" in line for line in plan), plan
    store.close()


# -- (sample N): the guard's own setting ------------------------------------------------------


def test_a_judge_guard_takes_its_sample_and_a_bad_one_is_refused_naming_it() -> None:
    assert parse_guard("judge.q >= baseline - 0.2 (sample 100)").sample == 100
    assert parse_guard("judge.q >= 3.5").sample is None
    guards = ["error_rate <= 0.02", "judge.q >= 3 (sample 5)", "judge.q >= baseline (sample 9)",
              "judge.r >= 2"]  # fmt: skip
    assert judge_samples(guards) == {"q": 9, "r": DEFAULT_SAMPLE}
    for text, message in [
        ("judge.q >= 3 (sample 0)", "sample 0 must be a whole number from 1 to 1000"),
        ("judge.q >= 3 (sample 1001)", "sample 1001 must be a whole number from 1 to 1000"),
        ("judge.q >= 3 (sample 2.5)", "sample 2.5 must be a whole number"),
        ("judge.q >= 3 (samples 5)", "unknown option (samples 5)"),
        ("error_rate <= 0.02 (sample 5)", "is an option of a guard on a judge"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_guard(text)


def _cli(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_sample_is_set_where_guards_are_written_and_shown_by_status(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, versions=2)
    store.put_judge("q", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
    start = "modelyard rollout start support --to bot:2 --guard 'judge.q >= 3 (sample {n})'"
    code, _, err = _cli(capsys, start.format(n=0))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "sample 0 must be a whole number from 1 to 1000" in err
    code, _, err = _cli(capsys, "modelyard endpoints policy support --guard "
                                "'judge.q >= 3 (sample x)'")  # fmt: skip
    assert code == 2 and "sample x must be a whole number" in err, err
    code, _, err = _cli(capsys, start.format(n=200))
    assert code == 0, err
    code, out, err = _cli(capsys, "modelyard rollout status support --json")
    assert code == 0, err
    assert json.loads(out)["guards"] == ["judge.q >= 3 (sample 200)"], out
    store.close()
