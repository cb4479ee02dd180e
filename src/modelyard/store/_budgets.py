"""Money budgets per tenant and per API key, per day or per month, and what was spent.

A budget caps what a tenant (or one of its keys) may spend in the current UTC
day or month, in the currency of the token prices (``set_token_price``).
Setting and removing one is audited. What was spent is derived from the
inference records (their tokens at their base model's price, shadow copies not
counted), so it survives restarts and can always be computed again; servers
keep running totals of it (``serving``'s budget guard) and seed them from here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError, NotFound
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name, tenant_row
from modelyard.store._schema import (
    ApiKeyRow,
    BaseModelRow,
    BudgetRow,
    InferenceRecordRow,
    ModelVersionRow,
    TenantRow,
    TokenPriceRow,
    utcnow,
)
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

    def list_budgets(self, tenant: str | None = None) -> list[Budget]:
        with self._session("list budgets") as s:
            query = (
                select(BudgetRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == BudgetRow.tenant_id)
                .order_by(TenantRow.name, BudgetRow.key_id, BudgetRow.period)
            )
            if tenant is not None:
                query = query.where(TenantRow.name == tenant)
            return [_to_budget(row, name) for row, name in s.execute(query)]

    def spent(
        self,
        tenant: str,
        since: datetime,
        *,
        key_id: str | None = None,
        until: datetime | None = None,
    ) -> float:
        """What ``tenant`` (or its key) spent from ``since``: its records' tokens at their
        base model's prices (versions without a price cost nothing; shadows not counted).
        A key's spend counts the keys it was rotated from: rotating must not reset it."""
        price = (
            InferenceRecordRow.prompt_tokens * TokenPriceRow.input_per_1k
            + InferenceRecordRow.completion_tokens * TokenPriceRow.output_per_1k
        ) / 1000.0
        with self._session(f"read the spend of {tenant}") as s:
            query = (
                select(func.coalesce(func.sum(price), 0.0))
                .select_from(InferenceRecordRow)
                .join(TenantRow, TenantRow.id == InferenceRecordRow.tenant_id)
                .join(ModelVersionRow, ModelVersionRow.id == InferenceRecordRow.version_id)
                .join(BaseModelRow, BaseModelRow.id == ModelVersionRow.base_model_id)
                .join(TokenPriceRow, TokenPriceRow.base_model == BaseModelRow.name)
                .where(
                    TenantRow.name == tenant,
                    InferenceRecordRow.created_at >= since,
                    InferenceRecordRow.shadow.is_(False),
                )
            )
            if key_id is not None:
                query = query.where(InferenceRecordRow.api_key_id.in_(_rotated_from(s, key_id)))
            if until is not None:
                query = query.where(InferenceRecordRow.created_at < until)
            return float(s.scalar(query) or 0.0)

    def budget_status(self, budget: Budget, now: datetime) -> dict[str, Any]:
        """A budget and what was spent in its current period, as ``budgets list --json``
        and the admin API show it."""
        spent = self.spent(budget.tenant, period_start(budget.period, now), key_id=budget.key_id)
        return {
            "tenant": budget.tenant,
            "key_id": budget.key_id,
            "period": budget.period,
            "amount": budget.amount,
            "spent": spent,
            "used_percent": 100 * spent / budget.amount,
            "renews_at": period_end(budget.period, now).isoformat(),
            "updated_at": budget.updated_at.isoformat(),
            "updated_by": budget.updated_by,
        }

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


__all__ = ["BudgetStore", "check_period", "period_end", "period_start"]


def _rotated_from(s: Session, key_id: str) -> list[str]:
    """``key_id`` and the keys it replaced, newest first (``rotated_to`` links them)."""
    chain = [key_id]
    while len(chain) < 1000:  # a cycle cannot be made through rotation; bounded anyway
        before = s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.rotated_to == chain[-1]))
        if before is None or before in chain:
            break
        chain.append(before)
    return chain
