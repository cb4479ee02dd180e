"""After a failed or interrupted fine-tune: mark the run, remove what no row needs.

A run that fails before its version is registered is marked ``failed`` (or
``interrupted`` on Ctrl-C), and the blob it stored and the registered model it
created are removed unless a row references them. A process killed outright
cannot do this; ``modelyard doctor`` finds what it left.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ModelyardError
from modelyard.registry import discard_unreferenced, drop_if_empty
from modelyard.store import Store
from modelyard.training import last_checkpoint


class FinetuneInterrupted(ModelyardError):
    """Ctrl-C (or SIGTERM) stopped a fine-tune: its run is marked ``interrupted``.

    ``step`` is the last optimizer step logged, ``checkpoint_step`` the step of
    the newest checkpoint a ``--resume`` continues from (None: none was saved).
    The CLI exits 130 with the resume command.
    """

    code = "interrupted"

    def __init__(
        self, run_id: str, *, step: int | None, checkpoint_step: int | None, status: str
    ) -> None:
        at = f" at step {step}" if step else ""
        super().__init__(f"fine-tuning interrupted{at}; run {run_id} is marked {status}")
        self.run_id = run_id
        self.step = step
        self.checkpoint_step = checkpoint_step


def interrupted(
    run_id: str, checkpoints: Path, history: list[dict[str, float]], status: str
) -> FinetuneInterrupted:
    """The error to raise after an interruption, with where a resume would start."""
    steps = [int(e["step"]) for e in history if "step" in e]
    saved = last_checkpoint(checkpoints)
    return FinetuneInterrupted(
        run_id,
        step=max(steps) if steps else None,
        checkpoint_step=saved[1] if saved else None,
        status=status,
    )


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the body runs, then deliver the first one held to the
    handler it would have met (Ctrl-C's KeyboardInterrupt, the CLI's SIGTERM handler, or
    the default, which ends the process). Python runs signal handlers in the main thread
    only, so outside it (an embedding caller's thread) nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, hold) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        signal.raise_signal(held[0])


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
) -> str | None:
    """After a failure: the run is marked, and a blob or model no row needs is removed.

    Returns the status the run was given (None when its version exists already).
    """
    if state.registered:
        return None  # the version exists: what failed later (gates, alias) leaves it in place
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
    return status
