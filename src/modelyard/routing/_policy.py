"""Which replica a request goes to: the one that holds the endpoint's adapters.

The router cannot pick the version itself: which versions a caller may reach
depends on its key's tenant, and the weighted (per-``user`` sticky) pick is the
server's. So it routes by the endpoint's traffic plan, read from the store
without any key: every version the plan may answer with, weighted.

``AdapterAffinity`` orders the replicas for one request:

1. **resident**: the replicas predicted to hold the plan's versions, the most
   plan weight held first (a canary's two versions both count);
2. **home**: when none holds any, the endpoint's home: rendezvous hashing of the
   plan's heaviest version over the replicas (ties: the lowest version number),
   so every adapter has one home that moves only when its replica leaves, and
   two endpoints on one version share it;
3. **least_loaded**: a replica chosen above that has ``max_imbalance`` or more
   requests in flight beyond the least loaded one gives way to that one (a hot
   adapter spreads instead of queueing); a request for no known endpoint goes
   there too (the server answers it, 404 included).

The rest of the order is where a failed connection is retried (``retry``).
``RoundRobin`` is the baseline without routing, as a plain load balancer sends.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from modelyard.routing._replicas import Replica
from modelyard.store import Endpoint

Reason = Literal["resident", "home", "least_loaded", "round_robin", "retry"]
REASONS: tuple[Reason, ...] = ("resident", "home", "least_loaded", "round_robin", "retry")


@dataclass(frozen=True)
class Plan:
    """An endpoint's versions that take traffic: ``(ref, weight)``, the heaviest first."""

    endpoint: str
    versions: tuple[tuple[str, int], ...]

    @property
    def key(self) -> str:
        """What the home is hashed from: the heaviest version."""
        return self.versions[0][0]


def plans_of(endpoints: Iterable[Endpoint]) -> dict[str, Plan]:
    """Each endpoint's plan, by name (endpoints with no weighted version left out)."""
    plans = {}
    for ep in endpoints:
        routes = sorted(
            (r for r in ep.routes if r.weight > 0), key=lambda r: (-r.weight, r.version)
        )
        if routes:
            plans[ep.name] = Plan(ep.name, tuple((f"{ep.model}:{r.version}", r.weight)
                                                 for r in routes))  # fmt: skip
    return plans


def rendezvous(key: str, replicas: Sequence[Replica]) -> list[Replica]:
    """``replicas`` by their highest-random-weight score for ``key``, best first."""

    def score(replica: Replica) -> bytes:
        return hashlib.blake2b(f"{key}\0{replica.id}".encode(), digest_size=8).digest()

    return sorted(replicas, key=score, reverse=True)


class Policy(Protocol):
    def order(self, plan: Plan | None, replicas: Sequence[Replica]) -> tuple[list[Replica], Reason]:
        """``replicas`` in the order to try them, and why the first was chosen."""


class AdapterAffinity:
    """Resident, else home, else least loaded (see the module's docstring)."""

    def __init__(self, max_imbalance: int = 8) -> None:
        self.max_imbalance = max_imbalance
        self._turn = itertools.count()

    def order(self, plan: Plan | None, replicas: Sequence[Replica]) -> tuple[list[Replica], Reason]:
        if not replicas:
            return [], "least_loaded"
        if plan is None:
            return self._least_loaded(replicas), "least_loaded"
        held = {r.id: sum(w for ref, w in plan.versions if r.holds(ref)) for r in replicas}
        ranked = sorted(rendezvous(plan.key, replicas), key=lambda r: -held[r.id])  # stable
        floor = min(r.inflight for r in replicas)
        for i, replica in enumerate(ranked):
            if i > 0 and not held[replica.id]:
                break  # only the home (or a holder) is worth a wait
            if replica.inflight < floor + self.max_imbalance:
                reason: Reason = "resident" if held[replica.id] else "home"
                return _first(replica, ranked), reason
        least = min(ranked, key=lambda r: r.inflight)  # ties: the better-ranked one
        return _first(least, ranked), "least_loaded"

    def _least_loaded(self, replicas: Sequence[Replica]) -> list[Replica]:
        start = next(self._turn) % len(replicas)  # ties rotate
        rotated = [*replicas[start:], *replicas[:start]]
        return sorted(rotated, key=lambda r: r.inflight)


class RoundRobin:
    """Each request to the next replica, whatever it holds."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def order(self, plan: Plan | None, replicas: Sequence[Replica]) -> tuple[list[Replica], Reason]:
        if not replicas:
            return [], "round_robin"
        start = next(self._turn) % len(replicas)
        return [*replicas[start:], *replicas[:start]], "round_robin"


def _first(replica: Replica, ranked: list[Replica]) -> list[Replica]:
    return [replica, *(r for r in ranked if r is not replica)]
