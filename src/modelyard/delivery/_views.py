"""What the controller sees of rollouts' steps, read for every active rollout together.

A tick judges each baking rollout's step on live records: the target's requests since the
step started, the baseline versions' since an hour (or one bake time) before the rollout
started, and the judges' scores of both sides. ``step_views`` reads them for many rollouts
with the statements of one: their versions in one query (``Store.rollout_versions``), the
step windows of all of them in one read, the baselines due in another
(``BaselineReads.read_many``), and, at a last step at 100 % where the baseline no longer
serves, the baselines of the steps so far in a third; what the judges its guards name
made of both sides, for every rollout with such guards, in two more
(``_judging.judged_windows_many``). A rollout whose own part fails (a version gone, a guard
that does not parse, one a bug meets) gets its error in place of its view, and the others
theirs. ``step_view`` is the same for one rollout (``rollout status``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from modelyard.delivery._baseline import BaselineReads
from modelyard.delivery._guards import GuardResult, TrafficSample, evaluate_guards
from modelyard.delivery._judging import JudgedWindow, StepWindow, judged_windows_many
from modelyard.errors import ModelVersionNotFound
from modelyard.metric_names import judge_name
from modelyard.store import Rollout, Store, VersionSample, utcnow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BASELINE_LOOKBACK_S = 3600.0
LATENCY_BASELINE_MIN = 30
"""Requests the baseline must have answered in the step's own window (and at least the
rollout's ``min_requests``) for latency guards to compare with those (``_latency_now``)."""

Versions = Mapping[tuple[str, int], tuple[int, str]]
"""``{(model, version number): (version id, status)}``: ``Store.rollout_versions``."""


@dataclass(frozen=True)
class StepView:
    """What the controller sees of a rollout's current step (for ``rollout status``)."""

    canary: TrafficSample
    baseline: TrafficSample
    fallbacks: int
    guards: list[GuardResult]
    elapsed_s: float
    judge_backlog: int = 0  # target records left to judge for a judge guard still pending
    latency_window: str = "lookback"  # the baseline's latencies: step, steps, lookback


def version_refs(rollouts: Sequence[Rollout]) -> set[tuple[str, int]]:
    """The versions the rollouts' ticks read: each one's target and baseline versions."""
    return {(r.model, n) for r in rollouts for n in (r.target, *r.baseline)}


def read_versions(store: Store, rollouts: Sequence[Rollout]) -> Versions:
    return store.rollout_versions(version_refs(rollouts))


def window_of(r: Rollout, versions: Versions) -> StepWindow:
    """The records a step's guards read: the target's since the step started, the baseline
    versions' since an hour (or one bake time) before the rollout started."""
    try:
        before = r.created_at - timedelta(seconds=max(r.bake_s, BASELINE_LOOKBACK_S))
    except OverflowError:  # a bake of millennia (stored before bakes were bounded): all of it
        before = EPOCH
    baseline = []
    for number in r.baseline:
        if number != r.target:
            found = versions.get((r.model, number))
            if found is None:
                raise ModelVersionNotFound(f"model {r.model!r} has no version {number}")
            baseline.append(found[0])
    return StepWindow(
        r.endpoint, r.step_started_at or r.created_at, (r.target_version_id,),
        before, tuple(baseline),
    )  # fmt: skip


def step_view(
    store: Store, r: Rollout, *, alpha: float = 0.05, baselines: BaselineReads | None = None
) -> StepView:
    """The current step's traffic and guard values (``step_views`` of ``r`` alone)."""
    got = step_views(store, [r], alpha=alpha, baselines=baselines)[r.id]
    if isinstance(got, Exception):
        raise got
    return got


def step_views(
    store: Store,
    rollouts: Sequence[Rollout],
    *,
    alpha: float = 0.05,
    baselines: BaselineReads | None = None,
    versions: Versions | None = None,
) -> dict[str, StepView | Exception]:
    """Each rollout's current step's traffic and guard values, by rollout id, or the error
    its own part met: the target's requests since the step started, against the baseline
    versions' requests since an hour (or one bake time, if longer) before the rollout
    started, so a blue-green switch still has a baseline (read through ``baselines``, the
    controller's, which keeps a costly read a while); latencies against the baseline's in
    the step's own window when it has enough there (``_latency_now``); and the scores the
    judges its guards name gave both sides. The records and the judges' scores of all of
    them are read together (a few statements however many rollouts); ``versions``: the
    caller's ``read_versions`` of them, if it has it."""
    out: dict[str, StepView | Exception] = {}
    if versions is None:
        versions = read_versions(store, rollouts)
    windows: dict[str, StepWindow] = {}
    for r in rollouts:
        try:
            windows[r.id] = window_of(r, versions)
        except Exception as exc:  # this rollout's: the others still have their views
            out[r.id] = exc
    reads = baselines or BaselineReads()
    live = [r for r in rollouts if r.id in windows]
    try:
        now = _read_steps(store, [windows[r.id] for r in live])
        base = reads.read_many(store, {r.id: windows[r.id] for r in live})
        steps = reads.read_many(store, {
            f"{r.id}/steps": replace(windows[r.id], baseline_since=r.created_at)
            for r, sampled in zip(live, now, strict=True)
            if r.step_index > 0 and not _enough_beside(r, windows[r.id], sampled)
        })  # fmt: skip
    except Exception as exc:  # the read of them all: each rollout meets it
        return out | {r.id: exc for r in live}
    judged = judged_windows_many(store, {r.id: (r.guards, windows[r.id]) for r in live})
    for r, sampled in zip(live, now, strict=True):
        try:
            scored = judged[r.id]
            if isinstance(scored, Exception):
                raise scored
            earlier = steps.get(f"{r.id}/steps")
            out[r.id] = _view(r, windows[r.id], sampled, base[r.id], earlier, scored, alpha)
        except Exception as exc:  # a bug in one rollout's guards: the others' views stand
            out[r.id] = exc
    return out


def _read_steps(store: Store, windows: Sequence[StepWindow]) -> list[dict[int, VersionSample]]:
    """Each step window's samples: the target's and the baseline versions' since the step
    started, every window in one read."""
    return store.rollout_samples_many(
        [(w.endpoint, w.canary_since, [*w.canary_ids, *w.baseline_ids]) for w in windows]
    )


def _enough(r: Rollout) -> int:
    return max(r.min_requests, LATENCY_BASELINE_MIN)


def _enough_beside(r: Rollout, window: StepWindow, now: Mapping[int, VersionSample]) -> bool:
    """Whether the baseline answered enough requests ok beside the canary in the step."""
    return len(TrafficSample.of(now[i] for i in window.baseline_ids).latencies_ms) >= _enough(r)


def _view(
    r: Rollout,
    window: StepWindow,
    now: Mapping[int, VersionSample],
    base: Mapping[int, VersionSample],
    earlier: Mapping[int, VersionSample] | None,
    judged: Mapping[str, JudgedWindow],
    alpha: float,
) -> StepView:
    target = now[r.target_version_id]
    baseline_ids = window.baseline_ids
    canary = TrafficSample.of([target])
    side_by_side = [("step", TrafficSample.of(now[i] for i in baseline_ids))]
    if earlier is not None:
        # the last step at 100 %: the baseline served beside the canary in the steps before
        side_by_side.append(("steps", TrafficSample.of(earlier[i] for i in baseline_ids)))
    baseline, latency_window = _latency_now(
        TrafficSample.of(base[i] for i in baseline_ids), side_by_side, _enough(r)
    )
    if judged:  # what the judges named by guards scored of each side so far
        canary = replace(
            canary, judged={n: w.canary.scores for n, w in judged.items()},
            judge_failed={n: w.canary.failed for n, w in judged.items()},
        )  # fmt: skip
        baseline = replace(
            baseline, judged={n: w.baseline.scores for n, w in judged.items()},
            judge_failed={n: w.baseline.failed for n, w in judged.items()},
        )  # fmt: skip
    guards = evaluate_guards(r.guards, canary, baseline, min_requests=r.min_requests, alpha=alpha)
    elapsed = (utcnow() - window.canary_since).total_seconds()
    pending = {judge_name(g.metric) for g in guards if g.status == "pending"}
    backlog = sum(w.canary.unjudged for name, w in judged.items() if name in pending)
    return StepView(canary, baseline, target.fallbacks, guards, elapsed, backlog, latency_window)


def _latency_now(
    lookback: TrafficSample, side_by_side: list[tuple[str, TrafficSample]], enough: int
) -> tuple[TrafficSample, str]:
    """The baseline a step's guards compare with, and where its latencies come from.

    Latency depends on the moment: a machine busier now (a traffic peak, a neighbour's
    job) slows every version at once, and a canary judged against the past hour's quiet
    latencies was rolled back for it. So latencies (and times to first token) are the
    baseline's of the first window of ``side_by_side`` in which it answered ``enough``
    requests beside the canary: the step's own (``"step"``), else, at the last step
    (100 %, where the baseline serves no more), the rollout's steps so far
    (``"steps"``); else (a blue-green switch, a quiet endpoint) those since an hour
    before the rollout (``"lookback"``). Error rates and feedback keep the longer
    window: they do not move with the load, and more requests make their tests firmer."""
    for name, sample in side_by_side:
        if len(sample.latencies_ms) >= enough:
            ttfts = sample.ttfts_ms if len(sample.ttfts_ms) >= enough else lookback.ttfts_ms
            return replace(lookback, latencies_ms=sample.latencies_ms, ttfts_ms=ttfts), name
    return lookback, "lookback"
