"""Who asks a batch's line: the batch's key and the line's record ids, for this task only.

A batch's line is asked through the app itself (its routes, guard, limits,
records), in this process, without HTTP and without the raw API key (the store
keeps only its hash). The runner sets ``CURRENT`` in the task that asks one line:
the key dependency (``_auth``) then takes the batch's key (its scopes still
checked), and the data plane (``_plane.enter``) gives the line's requests their
origin: source ``batch``, the batch's id, and a record id derived from the batch
and the line (``rid``; ``rid-2``... for the other choices of ``n``), so a line
asked again after a restart keeps one record. A context variable is local to the
task that set it (and what it starts): no client request can carry one.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from modelyard.serving._types import Origin
from modelyard.store import ApiKey

MAX_CHOICES = 8  # the most choices a request may ask for (``n``)


@dataclass
class BatchCall:
    """One line of batch ``job_id`` being asked as ``key``; its first record is ``record_id``."""

    key: ApiKey
    job_id: str
    record_id: str
    _entered: list[int] = field(default_factory=list)

    def origin(self) -> Origin:
        """The origin of the line's next request (one per choice)."""
        self._entered.append(1)
        n = len(self._entered)
        return Origin("batch", self.job_id, self.record_id if n == 1 else f"{self.record_id}-{n}")


def record_ids(record_id: str) -> list[str]:
    """Every id a line's records may have: each choice's, and its shadow's."""
    own = [record_id] + [f"{record_id}-{n}" for n in range(2, MAX_CHOICES + 1)]
    return own + [f"{rid}-shadow" for rid in own]


CURRENT: ContextVar[BatchCall | None] = ContextVar("modelyard_batch_call", default=None)


def batch_origin() -> Origin | None:
    """The origin of a request asked for a batch's line in this task, else None."""
    call = CURRENT.get()
    return None if call is None else call.origin()


__all__ = ["CURRENT", "MAX_CHOICES", "BatchCall", "batch_origin", "record_ids"]
