"""What a tick of online judging reads: never the lookback window's record ids, but what is
new since the last tick (and the records that may have come in late), what the judge's
revision was not asked about yet, a page at a time; on SQLite and PostgreSQL. The same
hash-sampled records are judged, once each per revision of the judge."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from modelyard.monitoring import OnlineJudging, _judging, judge_online, sampled
from modelyard.store import JudgeDef, Judgement, NewInferenceRecord, Store
from worlds import fake_world

URL = "http://127.0.0.1:9/v1"  # never called: judge_records is replaced


class Reads:
    """Counts the record ids the store hands to online judging; the old reads fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids = 0
        self.judged: list[str] = []
        real = Store.unjudged_after

        def counted(store: Store, *args: Any, **kwargs: Any) -> list[tuple[str, datetime]]:
            rows = real(store, *args, **kwargs)
            self.ids += len(rows)
            return rows

        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("online judging read the window's record ids")

        def judged(store: Store, judge: JudgeDef, ids: Sequence[str]) -> Any:
            store.save_judgements(
                [Judgement(judge.name, judge.revision, f"h-{i}-{judge.revision}", i, 4.0, "4",
                           None, 1, 1, 0.0, 1.0) for i in ids]
            )  # fmt: skip
            self.judged.extend(ids)
            return SimpleNamespace(scored=len(ids))

        monkeypatch.setattr(Store, "unjudged_after", counted)
        monkeypatch.setattr(Store, "judgement_states", refused)
        monkeypatch.setattr(_judging, "judge_records", judged)

    def take(self) -> int:
        n, self.ids = self.ids, 0
        return n


def _add(store: Store, prefix: str, times: Sequence[datetime]) -> list[str]:
    version = store.get_model_version("bot", 1)
    made = [
        NewInferenceRecord(
            id=f"{prefix}-{i:04d}", endpoint_name="support", route="chat.completions",
            latency_ms=1.0, status="ok", http_status=200,
            tenant_id=store.get_tenant("acme").id, version_id=version.id,
            prompt="### Instruction:\nhi\n\n### Response:\n", response="hello", created_at=t,
        )
        for i, t in enumerate(times)
    ]  # fmt: skip
    store.add_inference_records(made)
    return [r.id for r in made]


@pytest.fixture
def judged_store(store: Store) -> Store:
    fake_world(store, versions=1)
    store.put_judge("q", rubric="relevance", base_url=URL, model="m")
    return store


def test_a_tick_reads_what_is_new_not_the_window(
    judged_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, reads = judged_store, Reads(monkeypatch)
    entry = OnlineJudging(judge="q", endpoint="support", sample=0.1, max_per_tick=1000)
    now = datetime.now(UTC)
    old = _add(store, "a", [now - timedelta(minutes=40, seconds=-i) for i in range(1500)])

    (first,), errors = judge_online(store, [entry], now)
    assert not errors and reads.take() == 1500  # the window, once (two pages)
    expected = [i for i in old if sampled(i, 0.1)]
    assert (first.judged, first.scored, first.backlog) == (len(expected), len(expected), 0)
    assert reads.judged == expected

    (again,), _ = judge_online(store, [entry], now + timedelta(seconds=1))
    assert again.judged == 0 and reads.take() == 0  # nothing new: nothing read

    later = now + timedelta(minutes=2)
    new = _add(store, "b", [later - timedelta(seconds=60 - i) for i in range(40)])
    (third,), _ = judge_online(store, [entry], later)
    assert reads.take() == 40  # only the new records
    assert third.judged == len([i for i in new if sampled(i, 0.1)])
    assert reads.judged[len(expected) :] == [i for i in new if sampled(i, 0.1)]

    # A record that came in late (its time before the newest one read) is still judged: the
    # next tick reads again from LATENESS before the last one.
    late_id = next(f"c-{i:04d}" for i in range(100) if sampled(f"c-{i:04d}", 0.1))
    store.add_inference_records(
        [NewInferenceRecord(
            id=late_id, endpoint_name="support", route="chat.completions", latency_ms=1.0,
            status="ok", http_status=200, tenant_id=store.get_tenant("acme").id,
            version_id=store.get_model_version("bot", 1).id,
            prompt="### Instruction:\nhi\n\n### Response:\n", response="hello",
            created_at=later - timedelta(seconds=90),
        )]
    )  # fmt: skip
    before = len(reads.judged)
    (fourth,), _ = judge_online(store, [entry], later + timedelta(seconds=5))
    assert reads.judged[before:] == [late_id] and fourth.judged == 1
    assert reads.take() <= 41  # the new records not sampled, and the late one
    (fifth,), _ = judge_online(store, [entry], later + timedelta(minutes=6))
    assert fifth.judged == 0 and reads.take() <= 40
    (sixth,), _ = judge_online(store, [entry], later + timedelta(minutes=7))
    assert sixth.judged == 0 and reads.take() == 0
    assert len(reads.judged) == len(set(reads.judged))  # each record judged once


def test_max_per_tick_leaves_a_backlog_and_a_new_revision_starts_again(
    judged_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, reads = judged_store, Reads(monkeypatch)
    entry = OnlineJudging(judge="q", endpoint="support", sample=1.0, max_per_tick=30)
    now = datetime.now(UTC)
    ids = _add(store, "a", [now - timedelta(minutes=30, seconds=-i) for i in range(100)])
    seen = []
    for tick in range(5):
        (result,), _ = judge_online(store, [entry], now + timedelta(seconds=tick))
        seen.append((result.judged, result.backlog, reads.take()))
    assert seen == [(30, 70, 100), (30, 40, 70), (30, 10, 40), (10, 0, 10), (0, 0, 0)]
    assert reads.judged == ids

    store.put_judge("q", rubric="relevance", base_url=URL, model="m", replace=True)
    (result,), _ = judge_online(store, [entry], now + timedelta(seconds=10))
    assert (result.judged, result.backlog) == (30, 70)  # revision 2 judges the window again
    assert reads.judged[100:] == ids[:30]
