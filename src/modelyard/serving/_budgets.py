"""Money budgets, enforced where requests are admitted.

A tenant's budget (``modelyard budgets set``) caps what the tenant, or one of
its keys, spends in the current UTC day or month; a request's cost is its
tokens at its version's base-model price (``monitor price set``, or an
upstream's prices). ``BudgetGuard.check`` refuses a request of a tenant or key
that has spent its budget (``BudgetExceeded``: OpenAI's 429
``insufficient_quota``, which its clients do not retry, with ``Retry-After``
until the period ends); ``charge`` adds a finished request's cost to the
running totals. A request admitted just before the budget ran out may take it
past the budget by its own cost: the check is made before a request runs, when
its cost is not known yet.

The running totals live in Redis when the server shares limits (``--redis-url``:
every replica adds to and reads the same totals, under the same outage rules)
and in this server otherwise. A total the server has not seen yet (a new day,
a restart, a flushed Redis) starts from the store's records
(``Store.spent``), so a restart never resets what a tenant spent; what a server
counted alone while Redis was down is added to the shared total when it answers
again. Budgets and
prices are read from the store at most every ``refresh_s`` seconds (a new or
changed budget applies within that time).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import redis

from modelyard.errors import BudgetExceeded, LimitsUnavailable, ModelyardError
from modelyard.serving._shared_limits import SharedRateLimiter
from modelyard.serving._types import Generation
from modelyard.store import ApiKey, Budget, ModelVersion, Store, period_end, period_start

log = logging.getLogger(__name__)

SpendObserver = Callable[[ApiKey, str, ModelVersion, float], None]


class BudgetGuard:
    """Budgets per tenant and key, checked before and charged after requests (module doc)."""

    def __init__(
        self,
        store: Store,
        *,
        shared: SharedRateLimiter | None = None,
        refresh_s: float = 10.0,
        observer: SpendObserver | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prefix: str = "modelyard:spend:",
    ) -> None:
        self.store, self.shared, self.refresh_s = store, shared, refresh_s
        self._observer, self._clock, self._prefix = observer, clock, prefix
        self._lock = threading.Lock()
        self._budgets: dict[str, list[Budget]] = {}  # by tenant
        self._prices: dict[str, tuple[float, float]] = {}  # base model -> (in, out) per 1k
        self._loaded_at = -math.inf
        self._totals: dict[str, float] = {}  # this server's running totals, by counter name
        self._unsent: dict[str, float] = {}  # counted here while Redis was down, not there
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="budgets")

    # -- what the data plane calls ----------------------------------------------------------

    def check(self, key: ApiKey) -> None:
        """Refuse (``BudgetExceeded``) a request of a tenant or key whose budget is spent."""
        now = self._clock()
        for budget in self._applying(key):
            try:
                spent = self._total(budget, now)
            except LimitsUnavailable as down:  # Redis down, failing closed: say it is the budget
                who = f"API key {key.id}" if budget.key_id else f"tenant {key.tenant!r}"
                raise LimitsUnavailable(
                    f"the {_PERIODS[budget.period]} budget of {who} cannot be checked: the "
                    "spend shared by the replicas (Redis) cannot be reached",
                    hint="Retry shortly; an operator should check Redis (--redis-url).",
                    retry_after=down.context.get("retry_after", 1),
                ) from None
            if spent >= budget.amount:
                who = f"API key {key.id}" if budget.key_id else f"tenant {key.tenant!r}"
                until = period_end(budget.period, now)
                seconds = max(1, math.ceil((until - now).total_seconds()))
                raise BudgetExceeded(
                    f"{who} has spent {spent:.4g} of its {_PERIODS[budget.period]} budget of "
                    f"{budget.amount:g}; it is renewed at {until:%Y-%m-%d %H:%M} UTC",
                    hint="Ask an operator to raise the budget (`modelyard budgets set`).",
                    retry_after=seconds,
                )

    def charge(self, key: ApiKey, endpoint: str, version: ModelVersion, gen: Generation) -> None:
        """Add a finished request's cost to its tenant's and key's totals, on the guard's
        own thread (the totals may need Redis or the store: never on the event loop)."""
        try:
            self._worker.submit(self.charge_now, key, endpoint, version, gen)
        except RuntimeError:  # closed: a request that ended after its server stopped
            log.warning("a request of %s ended after the server stopped: its cost is not "
                        "counted here (the store's records still hold it)", key.tenant)  # fmt: skip

    def charge_now(
        self, key: ApiKey, endpoint: str, version: ModelVersion, gen: Generation
    ) -> float:
        """``charge``, in this thread; the request's cost."""
        self._refresh()
        with self._lock:
            price = self._prices.get(version.base_model)
        if price is None:
            return 0.0
        cost = (gen.prompt_tokens * price[0] + gen.completion_tokens * price[1]) / 1000
        if cost <= 0:
            return 0.0
        now = self._clock()
        for budget in self._applying(key):
            self._add(budget, now, cost)
        if self._observer is not None:  # after the totals: once it shows, checks see it
            self._observer(key, endpoint, version, cost)
        return cost

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the charges handed over so far are counted."""
        self._worker.submit(lambda: None).result(timeout)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    # -- budgets and prices -----------------------------------------------------------------

    def _applying(self, key: ApiKey) -> list[Budget]:
        self._refresh()
        with self._lock:
            found = self._budgets.get(key.tenant, [])
        return [b for b in found if b.key_id in (None, key.id)]

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self.refresh_s:
            return
        try:
            budgets, prices = self.store.list_budgets(), self.store.list_token_prices()
        except ModelyardError as exc:  # keep enforcing the last ones read
            log.warning("cannot reload budgets from the store: %s", exc.one_line())
            self._loaded_at = time.monotonic()
            return
        by_tenant: dict[str, list[Budget]] = {}
        for budget in budgets:
            by_tenant.setdefault(budget.tenant, []).append(budget)
        with self._lock:
            before, self._budgets = self._budgets, by_tenant
            self._prices = {p.base_model: (p.input_per_1k, p.output_per_1k) for p in prices}
            self._loaded_at = time.monotonic()
        self._forget_removed(before, by_tenant)

    def _forget_removed(
        self, before: dict[str, list[Budget]], after: dict[str, list[Budget]]
    ) -> None:
        """Forget the running totals of budgets that were removed: while a tenant has no
        budget its requests are not added to them, so a budget set again later must start
        from the store's records, not from a total that missed what was spent meanwhile."""
        kept = {_ident(b) for found in after.values() for b in found}
        gone = [b for found in before.values() for b in found if _ident(b) not in kept]
        if not gone:
            return
        now = self._clock()
        for budget in gone:
            stem = self._name(budget, now).rsplit(":", 1)[0] + ":"
            with self._lock:
                for name in [n for n in self._totals if n.startswith(stem)]:
                    del self._totals[name]
                for name in [n for n in self._unsent if n.startswith(stem)]:
                    del self._unsent[name]
            if self.shared is not None:
                self._forget_shared(self.shared, self._name(budget, now))

    @staticmethod
    def _forget_shared(shared: SharedRateLimiter, name: str) -> None:
        try:
            shared.call(lambda r: r.delete(name))
        except ModelyardError as exc:  # Redis down and closed: the total expires anyway
            log.warning("cannot forget the spend total %s: %s", name, exc.one_line())

    # -- running totals ---------------------------------------------------------------------

    def _name(self, budget: Budget, now: datetime) -> str:
        start = period_start(budget.period, now)
        stamp = f"{start:%Y-%m-%d}" if budget.period == "day" else f"{start:%Y-%m}"
        return f"{self._prefix}{budget.tenant}:{budget.key_id or '*'}:{budget.period}:{stamp}"

    def _seed(self, budget: Budget, now: datetime) -> float:
        """What the store's records say was spent in the budget's current period."""
        return self.store.spent(budget.tenant, period_start(budget.period, now),
                                key_id=budget.key_id)  # fmt: skip

    def _ttl_s(self, budget: Budget, now: datetime) -> int:
        """A total is kept a day past its period's end, then forgotten."""
        return math.ceil((period_end(budget.period, now) - now).total_seconds()) + 86_400

    def _total(self, budget: Budget, now: datetime) -> float:
        name = self._name(budget, now)
        if self.shared is not None:
            found = self.shared.call(lambda r: self._shared_total(r, name, budget, now))
            if found is not None:
                return found
        with self._lock:
            known = self._totals.get(name)
        if known is None:
            known = self._seed(budget, now)
            with self._lock:
                known = self._totals.setdefault(name, known)
        return known

    def _shared_total(self, r: redis.Redis, name: str, budget: Budget, now: datetime) -> float:
        value = r.get(name)
        if value is not None:
            return float(value)
        seeded = self._seed(budget, now)
        r.set(name, seeded, nx=True, ex=self._ttl_s(budget, now))  # another may be first
        value = r.get(name)
        return float(value) if value is not None else seeded

    def _add(self, budget: Budget, now: datetime, cost: float) -> None:
        name = self._name(budget, now)
        try:
            if self.shared is not None:
                shared = self.shared
                if shared.call(lambda r: self._shared_add(r, name, budget, now, cost)) is not None:
                    return
            self._total(budget, now)
        except ModelyardError as exc:  # Redis down and closed, or the store: count it here
            log.warning("the spend of %s is counted by this server alone for now: %s",
                        budget.tenant, exc.one_line())  # fmt: skip
        with self._lock:
            self._totals[name] = self._totals.get(name, 0.0) + cost
            if self.shared is not None:  # owed to the shared total once Redis answers again
                self._unsent[name] = self._unsent.get(name, 0.0) + cost

    def _shared_add(
        self, r: redis.Redis, name: str, budget: Budget, now: datetime, cost: float
    ) -> float:
        """Add ``cost`` to the shared total, with what this server counted alone while Redis
        was down (unless the total is seeded now: the store's records hold that already)."""
        with self._lock:
            owed = self._unsent.get(name, 0.0)
        if not r.exists(name):
            self._shared_total(r, name, budget, now)  # seeded first: the whole period
            owed_sent = 0.0
        else:
            owed_sent = owed
        total = float(r.incrbyfloat(name, cost + owed_sent))
        with self._lock:
            left = self._unsent.pop(name, 0.0) - owed
            if left > 0:
                self._unsent[name] = left
            self._totals.pop(name, None)  # a later outage starts again from the store
        return total


_PERIODS = {"day": "daily", "month": "monthly"}


def _ident(budget: Budget) -> tuple[str, str | None, str]:
    return budget.tenant, budget.key_id, budget.period


__all__ = ["BudgetGuard", "SpendObserver"]
