"""Money budgets per tenant and per API key, per day or per month, and what was spent.

A budget caps what a tenant (or one of its keys) may spend in the current UTC
day or month, in the currency of the token prices (``set_token_price``).
Setting and removing one is audited. What was spent is the tokens of the users'
requests (``_usage``: kept per tenant, key, version and day on every record path;
shadow copies not counted) at their base model's price today, so it survives
restarts and retention purges; servers keep running totals of it (``serving``'s
budget guard) and seed them from here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError, NotFound
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name, tenant_row
from modelyard.store._schema import (
    ApiKeyRow,
    BaseModelRow,
    BudgetRow,
    ModelVersionRow,
    TenantRow,
    TokenPriceRow,
    utcnow,
)
from modelyard.store._usage import UsageDayRow, day_of
from modelyard.store.entities import BUDGET_PERIODS, Budget, BudgetPeriod


def period_start(period: BudgetPeriod, now: datetime) -> datetime:
    """The start (UTC) of the day or month ``now`` falls in."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_end(period: BudgetPeriod, now: datetime) -> datetime:
    """The start (UTC) of the next day or month."""
    start = period_start(period, now)
    if period == "day":
        return start.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


NAMED_TENANTS = 1000
"""``budget_statuses`` names at most this many tenants in its queries (a page of
``GET /tenants`` at most); past that it reads the spend of every tenant in the window."""

# What a day's usage cost: its tokens at its base model's price per 1,000.
_PRICE = (
    UsageDayRow.prompt_tokens * TokenPriceRow.input_per_1k
    + UsageDayRow.completion_tokens * TokenPriceRow.output_per_1k
) / 1000.0


def check_period(period: str) -> BudgetPeriod:
    if period not in BUDGET_PERIODS:
        raise ConfigError(f"unknown budget period {period!r}: use day or month", field="period")
    return period


class BudgetStore(StoreCore):
    """Budgets and spend."""

    def set_budget(
        self, tenant: str, period: str, amount: float, *, key_id: str | None = None
    ) -> Budget:
        """Cap ``tenant``'s (or its key ``key_id``'s) spend per ``period`` at ``amount``;
        replaces the budget there was; audited."""
        checked = check_period(period)
        if not math.isfinite(amount) or amount <= 0:
            raise ConfigError(f"amount is {amount}: a budget is a number above 0", field="amount")
        subject = f"{tenant}/{key_id}" if key_id else tenant
        with self._write(f"set the {period} budget of {subject}") as s:
            self._require(s, "budget.set", subject, f"set the budget of {subject}")
            trow = tenant_row(s, tenant)
            self._check_key(s, trow, key_id)
            lock_name(s, "budget", f"{subject}/{period}")
            row = s.scalar(
                select(BudgetRow).where(
                    BudgetRow.tenant_id == trow.id,
                    BudgetRow.key_id == (key_id or ""),
                    BudgetRow.period == checked,
                )
            )
            previous = None if row is None else row.amount
            if row is None:
                row = BudgetRow(tenant_id=trow.id, key_id=key_id or "", period=checked)
                s.add(row)
            row.amount, row.updated_at, row.updated_by = amount, utcnow(), self.actor
            s.flush()
            self._audit(s, "budget.set", subject,
                        {"tenant": tenant, "key_id": key_id, "period": checked,
                         "amount": amount, "previous": previous})  # fmt: skip
            return _to_budget(row, tenant)

    def remove_budget(self, tenant: str, period: str, *, key_id: str | None = None) -> bool:
        """Remove a budget; False when there was none. Audited."""
        checked = check_period(period)
        subject = f"{tenant}/{key_id}" if key_id else tenant
        with self._write(f"remove the {period} budget of {subject}") as s:
            # the role first: an actor who may not remove one is told so, budget or none
            self._require(s, "budget.removed", subject, f"remove the budget of {subject}")
            trow = tenant_row(s, tenant)
            row = s.scalar(
                select(BudgetRow).where(
                    BudgetRow.tenant_id == trow.id,
                    BudgetRow.key_id == (key_id or ""),
                    BudgetRow.period == checked,
                )
            )
            if row is None:
                return False
            s.delete(row)
            self._audit(s, "budget.removed", subject,
                        {"tenant": tenant, "key_id": key_id, "period": checked,
                         "amount": row.amount})  # fmt: skip
            return True

    def list_budgets(
        self, tenant: str | None = None, *, tenants: Collection[str] | None = None
    ) -> list[Budget]:
        """By tenant, key and period; ``tenants``: only these tenants' (at most a thousand)."""
        with self._session("list budgets") as s:
            query = (
                select(BudgetRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == BudgetRow.tenant_id)
                .order_by(TenantRow.name, BudgetRow.key_id, BudgetRow.period)
            )
            if tenant is not None:
                query = query.where(TenantRow.name == tenant)
            if tenants is not None:
                query = query.where(TenantRow.name.in_(list(tenants)))
            return [_to_budget(row, name) for row, name in s.execute(query)]

    def spent(self, tenant: str, since: datetime, *, key_id: str | None = None) -> float:
        """What ``tenant`` (or its key) spent from the start of ``since``'s UTC day (usage
        is kept by the day; periods start at midnight): its requests' tokens at their
        base model's prices (versions without a price cost nothing; shadow copies, no
        user's, not counted; requests still running not yet).
        A key's spend counts the keys it was rotated from: rotating must not reset it."""
        with self._session(f"read the spend of {tenant}") as s:
            query = (
                _priced(select(func.coalesce(func.sum(_PRICE), 0.0)))
                .join(TenantRow, TenantRow.id == UsageDayRow.tenant_id)
                .where(TenantRow.name == tenant, UsageDayRow.day >= day_of(since))
            )
            if key_id is not None:
                query = query.where(UsageDayRow.key_id.in_(_rotated_from(s, key_id)))
            return float(s.scalar(query) or 0.0)

    def budget_status(self, budget: Budget, now: datetime) -> dict[str, Any]:
        """A budget and what was spent in its current period, as ``budgets list --json``
        and the admin API show it (``budget_statuses`` of one)."""
        return self.budget_statuses([budget], now)[0]

    def budget_statuses(self, budgets: Sequence[Budget], now: datetime) -> list[dict[str, Any]]:
        """``budget_status`` of each of ``budgets``, in their order, in two queries however
        many they are: the rotations among their tenants' keys (only for budgets of a key)
        and their tenants' spend since the earliest of their periods' starts, summed per
        tenant and key and per period (a budget of a key adds its rotation chain's; those
        sums are added with ``math.fsum``, so they equal ``spent``'s to the last bit only
        where the database adds in that order too, e.g. prices exact in binary)."""
        if not budgets:
            return []
        starts = {p: period_start(p, now) for p in sorted({b.period for b in budgets})}
        tenants = sorted({b.tenant for b in budgets})
        named = tenants if len(tenants) <= NAMED_TENANTS else None
        with self._session(f"read the spend of {len(budgets)} budgets") as s:
            chains = _rotation_chains(s, named) if any(b.key_id for b in budgets) else {}
            spend = _spend_per_key(s, named, starts)
        per_tenant: dict[tuple[BudgetPeriod, str], list[float]] = defaultdict(list)
        for period, sums in spend.items():
            for (tenant, _), total in sums.items():
                per_tenant[(period, tenant)].append(total)
        out = []
        for b in budgets:
            if b.key_id is None:
                parts = per_tenant.get((b.period, b.tenant), [])
            else:
                chain = _chain(chains.get(b.tenant, {}), b.key_id)
                parts = [spend[b.period].get((b.tenant, k), 0.0) for k in chain]
            spent = math.fsum(parts)
            out.append({
                "tenant": b.tenant,
                "key_id": b.key_id,
                "period": b.period,
                "amount": b.amount,
                "spent": spent,
                "used_percent": 100 * spent / b.amount,
                "renews_at": period_end(b.period, now).isoformat(),
                "updated_at": b.updated_at.isoformat(),
                "updated_by": b.updated_by,
            })  # fmt: skip
        return out

    @staticmethod
    def _check_key(s: Session, trow: TenantRow, key_id: str | None) -> None:
        if key_id is None:
            return
        key = s.get(ApiKeyRow, key_id)
        if key is None or key.tenant_id != trow.id:
            raise NotFound(f"tenant {trow.name!r} has no API key {key_id!r}",
                           hint=f"See `modelyard keys list --tenant {trow.name}`.")  # fmt: skip


def _to_budget(row: BudgetRow, tenant: str) -> Budget:
    return Budget(tenant, row.key_id or None, row.period, row.amount,  # type: ignore[arg-type]
                  row.updated_at, row.updated_by)  # fmt: skip


def _spend_per_key(
    s: Session, tenants: list[str] | None, starts: dict[BudgetPeriod, datetime]
) -> dict[BudgetPeriod, dict[tuple[str, str | None], float]]:
    """What each key of ``tenants`` (None: of every tenant) spent from each period's start
    (records without a key under None), as ``spent`` counts it; keys without spend left
    out."""
    columns: list[ColumnElement[Any]] = [
        func.sum(case((UsageDayRow.day >= day_of(start), _PRICE), else_=0.0))
        for start in starts.values()
    ]
    query = (
        _priced(select(TenantRow.name, UsageDayRow.key_id, *columns))
        .join(TenantRow, TenantRow.id == UsageDayRow.tenant_id)
        .where(UsageDayRow.day >= day_of(min(starts.values())))
        .group_by(TenantRow.name, UsageDayRow.key_id)
    )
    if tenants is not None:
        query = query.where(TenantRow.name.in_(tenants))
    out: dict[BudgetPeriod, dict[tuple[str, str | None], float]] = {p: {} for p in starts}
    for tenant, key, *sums in s.execute(query):
        for period, total in zip(starts, sums, strict=True):
            out[period][(tenant, key or None)] = float(total or 0.0)
    return out


def _priced(query: Select[Any]) -> Select[Any]:
    """``query`` over the usage, each day's row beside its version's base-model price
    (versions without one left out: they cost nothing)."""
    return (
        query.select_from(UsageDayRow)
        .join(ModelVersionRow, ModelVersionRow.id == UsageDayRow.version_id)
        .join(BaseModelRow, BaseModelRow.id == ModelVersionRow.base_model_id)
        .join(TokenPriceRow, TokenPriceRow.base_model == BaseModelRow.name)
    )


def _rotation_chains(s: Session, tenants: list[str] | None) -> dict[str, dict[str, str]]:
    """Per tenant of ``tenants`` (None: every tenant), each rotated key's successor
    mapped to it (``rotated_to`` reversed)."""
    query = (
        select(TenantRow.name, ApiKeyRow.id, ApiKeyRow.rotated_to)
        .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
        .where(ApiKeyRow.rotated_to.is_not(None))
    )
    if tenants is not None:
        query = query.where(TenantRow.name.in_(tenants))
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for tenant, key_id, successor in s.execute(query):
        out[tenant][str(successor)] = key_id  # never None: filtered
    return out


def _chain(before: dict[str, str], key_id: str) -> list[str]:
    """``key_id`` and the keys it replaced, newest first, from ``_rotation_chains``."""
    chain = [key_id]
    while len(chain) < 1000 and chain[-1] in before and before[chain[-1]] not in chain:
        chain.append(before[chain[-1]])
    return chain


def _rotated_from(s: Session, key_id: str) -> list[str]:
    """``key_id`` and the keys it replaced, newest first (``rotated_to`` links them)."""
    chain = [key_id]
    while len(chain) < 1000:  # a cycle cannot be made through rotation; bounded anyway
        before = s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.rotated_to == chain[-1]))
        if before is None or before in chain:
            break
        chain.append(before)
    return chain


__all__ = ["BudgetStore", "check_period", "period_end", "period_start"]
