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
from modelyard.store import Store, VersionSample

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

    def rollout_samples_many(self, windows: list[tuple[str, datetime, list[int]]]) -> Any:
        """One read of every window, taking ``cost`` seconds in all."""
        self.calls += 1
        self.clock.now += self.cost
        return [{i: f"sample {self.calls} of {i}" for i in ids} for _, _, ids in windows]


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


def test_in_one_read_of_many_a_busy_baseline_is_kept_and_a_small_one_read_afresh() -> None:
    """The tick reads every rollout's baseline together; each is kept for its share of
    the time (by its rows), as if read alone: a busy endpoint's hour of records is kept,
    a quiet one's beside it read again at the next tick."""
    clock = Clock()

    class Rows:  # a read of 0.5 s, of 9,998 records on ``busy`` and 0 on ``quiet``
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def rollout_samples_many(self, windows: list[tuple[str, datetime, list[int]]]) -> Any:
            self.calls.append([endpoint for endpoint, _, _ in windows])
            clock.now += 0.5
            n = {"busy": 9998, "quiet": 0}
            return [{i: VersionSample({"ok": n[e]}, version=1, version_id=i, fallbacks=0)
                     for i in ids} for e, _, ids in windows]  # fmt: skip

    store, baselines = Rows(), BaselineReads(clock)
    busy = StepWindow("busy", HOUR_AGO + timedelta(hours=1), (2,), HOUR_AGO, (1,))
    quiet = StepWindow("quiet", HOUR_AGO + timedelta(hours=1), (4,), HOUR_AGO, (3,))
    first = baselines.read_many(cast(Store, store), {"r1": busy, "r2": quiet})
    assert first["r1"][1].requests == 9998 and first["r2"][3].requests == 0
    clock.now += 1.0
    again = baselines.read_many(cast(Store, store), {"r1": busy, "r2": quiet})
    assert again["r1"] is first["r1"] and again["r2"] is not first["r2"]
    assert store.calls == [["busy", "quiet"], ["quiet"]]
