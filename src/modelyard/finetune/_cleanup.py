"""After a failed or interrupted fine-tune: mark the run, remove what no row needs.

A run that fails before its version is registered is marked ``failed`` (or
``interrupted`` on Ctrl-C), and the blob it stored and the registered model it
created are removed unless a row references them. A process killed outright
cannot do this; ``modelyard doctor`` finds what it left.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.registry import discard_unreferenced, drop_if_empty
from modelyard.store import Store


@dataclass
class Written:
    """What a run has written so far, for cleaning up after a failure."""

    blob: str | None = None
    model_created: bool = False
    registered: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


def clean_up(
    store: Store,
    artifacts: ArtifactStore,
    run_id: str,
    state: Written,
    exc: BaseException,
    history: list[dict[str, float]],
    model: str,
) -> None:
    """After a failure: the run is marked, and a blob or model no row needs is removed."""
    if state.registered:
        return  # the version exists: what failed later (gates, alias) leaves it in place
    status = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
    reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
    with contextlib.suppress(Exception):  # the store may be what failed: keep that error
        store.finish_run(
            run_id,
            status=status,
            metrics={**state.metrics, "history": history, "error": reason},
        )
    if state.blob is not None:
        discard_unreferenced(store, artifacts, state.blob)
    if state.model_created:
        drop_if_empty(store, model, reason=f"run {run_id} {status}: {reason}")
