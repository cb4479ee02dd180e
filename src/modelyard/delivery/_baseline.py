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
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from modelyard.delivery._judging import StepWindow
from modelyard.store import Store, VersionSample

KEEP_AFTER_S = 0.2
"""A baseline read that took this long or longer is kept."""
KEEP_FACTOR = 10.0
"""For this many times as long as the read took: the reads then take about a tenth of
the controller's time, whatever the endpoint's traffic."""


_Window = tuple[str, object, object, tuple[int, ...]]


def _window_key(window: StepWindow) -> _Window:
    return (window.endpoint, window.canary_since, window.baseline_since, window.baseline_ids)


def _rows(samples: Mapping[int, VersionSample]) -> int:
    """The records a read of these samples went through (every status, and fallbacks)."""
    return sum(sum(s.statuses.values()) + s.fallbacks for s in samples.values())


@dataclass(frozen=True)
class _Kept:
    window: _Window
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
        return self.read_many(store, {rollout_id: window})[rollout_id]

    def read_many(
        self, store: Store, windows: Mapping[str, StepWindow]
    ) -> dict[str, dict[int, VersionSample]]:
        """``read`` of each window (by the name it is kept under), those not kept read
        together (``Store.rollout_samples_many``: the statements of one read, however many
        rollouts). Each is kept as if it had been read alone: for its share of the time the
        read took, in proportion to its rows (and one), so a small endpoint's baseline read
        beside a busy one's is still read afresh at every tick."""
        out: dict[str, dict[int, VersionSample]] = {}
        due: dict[str, tuple[_Window, StepWindow]] = {}
        for name, window in windows.items():
            key = _window_key(window)
            kept = self._kept.get(name)
            if kept is not None and kept.window == key and self._clock() < kept.until:
                out[name] = kept.samples
            else:
                due[name] = (key, window)
        if not due:
            return out
        started = self._clock()
        read = store.rollout_samples_many(
            [(w.endpoint, w.baseline_since, list(w.baseline_ids)) for _, w in due.values()]
        )
        took = self._clock() - started
        rows = [_rows(samples) for samples in read] if len(read) > 1 else [0]  # all of it
        total = sum(rows) + len(rows)
        for (name, (key, _)), samples, n in zip(due.items(), read, rows, strict=True):
            share = took * (n + 1) / total
            if share >= KEEP_AFTER_S:
                self._kept[name] = _Kept(key, self._clock() + KEEP_FACTOR * share, samples)
            else:
                self._kept.pop(name, None)
            out[name] = samples
        return out

    def keep_only(self, rollout_ids: Collection[str]) -> None:
        """Forget the reads of rollouts that are no longer active (a rollout's reads are
        kept under its id, or its id and ``/`` and a name of the window)."""
        active = set(rollout_ids)
        for gone in [k for k in self._kept if k.split("/", 1)[0] not in active]:
            del self._kept[gone]


__all__ = ["KEEP_AFTER_S", "KEEP_FACTOR", "BaselineReads"]
