"""The baseline side of a rollout step, read at most about a tenth of the controller's time.

A step's guards compare the target's requests since the step started with the baseline
versions' requests since an hour (or one bake time) before the rollout started. That
window is the larger read of a tick and grows as the rollout goes on: on a busy endpoint
it holds millions of records, and reading them takes more than the tick's second. So a
read that took ``KEEP_AFTER_S`` or longer is kept for ``KEEP_FACTOR`` times as long as
it took, and the ticks meanwhile judge the step against it: an hour of baseline traffic
changes little in the seconds it is kept. A quicker read is never kept, so a small
endpoint's baseline is as fresh as before at every tick. The target's side is always
read afresh: a breach must be seen at the next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from modelyard.delivery._judging import StepWindow
from modelyard.store import Store, VersionSample

KEEP_AFTER_S = 0.2
"""A baseline read that took this long or longer is kept."""
KEEP_FACTOR = 10.0
"""For this many times as long as the read took: the reads then take about a tenth of
the controller's time, whatever the endpoint's traffic."""


@dataclass(frozen=True)
class _Kept:
    window: tuple[str, object, object, tuple[int, ...]]
    until: float
    samples: dict[int, VersionSample]


class BaselineReads:
    """Each active rollout's last baseline read, kept while it is recent enough for its cost."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: dict[str, _Kept] = {}

    def read(self, store: Store, rollout_id: str, window: StepWindow) -> dict[int, VersionSample]:
        """The baseline versions' samples of ``window``: the kept ones while they last and
        are of the same step and baseline (a new step, whose start is ``canary_since``, or
        another baseline reads again), else read now. ``rollout_id`` names what is kept: a
        rollout's id, or its id, ``/`` and a name for another window of the same rollout."""
        key = (window.endpoint, window.canary_since, window.baseline_since, window.baseline_ids)
        kept = self._kept.get(rollout_id)
        if kept is not None and kept.window == key and self._clock() < kept.until:
            return kept.samples
        started = self._clock()
        samples = store.rollout_samples(
            window.endpoint, window.baseline_since, list(window.baseline_ids)
        )
        took = self._clock() - started
        if took >= KEEP_AFTER_S:
            self._kept[rollout_id] = _Kept(key, self._clock() + KEEP_FACTOR * took, samples)
        else:
            self._kept.pop(rollout_id, None)
        return samples

    def keep_only(self, rollout_ids: Collection[str]) -> None:
        """Forget the reads of rollouts that are no longer active (a rollout's reads are
        kept under its id, or its id and ``/`` and a name of the window)."""
        active = set(rollout_ids)
        for gone in [k for k in self._kept if k.split("/", 1)[0] not in active]:
            del self._kept[gone]


__all__ = ["KEEP_AFTER_S", "KEEP_FACTOR", "BaselineReads"]
