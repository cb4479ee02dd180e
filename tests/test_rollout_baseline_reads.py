"""The controller's baseline reads: a costly one (an hour of a busy endpoint's records) is
kept for ten times as long as it took, so a tick a second does not re-read millions of
records each time; a cheap one is read afresh at every tick; a new step or a rollout that
ended reads again. The store here is a stand-in whose reads take the time the test says,
on a clock of the test's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from modelyard.delivery._baseline import BaselineReads
from modelyard.delivery._judging import StepWindow
from modelyard.store import Store

HOUR_AGO = datetime(2026, 12, 6, 9, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowStore:
    """``rollout_samples`` that takes ``cost`` seconds of the clock and counts its calls."""

    def __init__(self, clock: Clock, cost: float) -> None:
        self.clock, self.cost, self.calls = clock, cost, 0

    def rollout_samples(self, endpoint: str, since: datetime, ids: list[int]) -> Any:
        self.calls += 1
        self.clock.now += self.cost
        return {i: f"sample {self.calls} of {i}" for i in ids}


def window(since: datetime = HOUR_AGO, ids: tuple[int, ...] = (1,)) -> StepWindow:
    return StepWindow("support", since + timedelta(hours=1), (2,), since, ids)


def reads(cost: float) -> tuple[Clock, SlowStore, BaselineReads]:
    clock = Clock()
    return clock, SlowStore(clock, cost), BaselineReads(clock)


def test_a_costly_read_is_kept_ten_times_as_long_as_it_took() -> None:
    clock, store, baselines = reads(cost=0.5)
    first = baselines.read(cast(Store, store), "r1", window())
    assert store.calls == 1 and first == {1: "sample 1 of 1"}
    for _ in range(4):  # ticks a second apart, within the 5 s it is kept
        clock.now += 1.0
        assert baselines.read(cast(Store, store), "r1", window()) == first
    assert store.calls == 1
    clock.now += 1.5  # 5.5 s after the read ended
    assert baselines.read(cast(Store, store), "r1", window()) == {1: "sample 2 of 1"}
    assert store.calls == 2


def test_a_cheap_read_is_done_afresh_at_every_tick() -> None:
    clock, store, baselines = reads(cost=0.01)
    for _ in range(3):
        baselines.read(cast(Store, store), "r1", window())
        clock.now += 0.05
    assert store.calls == 3


def test_another_window_another_rollout_or_an_ended_one_reads_again() -> None:
    _, store, baselines = reads(cost=0.5)
    baselines.read(cast(Store, store), "r1", window())
    baselines.read(cast(Store, store), "r1", window(ids=(1, 3)))  # the baseline changed
    assert store.calls == 2
    baselines.read(cast(Store, store), "r2", window())  # another rollout's read is its own
    assert store.calls == 3
    baselines.read(cast(Store, store), "r1", window(ids=(1, 3)))
    baselines.read(cast(Store, store), "r2", window())
    assert store.calls == 3  # both kept
    baselines.keep_only(["r2"])  # r1 ended
    baselines.read(cast(Store, store), "r1", window(ids=(1, 3)))
    assert store.calls == 4


def test_a_new_step_reads_the_baseline_again() -> None:
    """A step's promotion is judged against a baseline read in that step, never one kept
    from the step before (its traffic share changed with the step)."""
    _, store, baselines = reads(cost=0.5)
    step_one = window()
    step_two = StepWindow("support", step_one.canary_since + timedelta(minutes=10), (2,),
                          step_one.baseline_since, step_one.baseline_ids)  # fmt: skip
    baselines.read(cast(Store, store), "r1", step_one)
    assert baselines.read(cast(Store, store), "r1", step_two) == {1: "sample 2 of 1"}
    assert store.calls == 2
    baselines.read(cast(Store, store), "r1", step_two)  # within the step: kept
    assert store.calls == 2
