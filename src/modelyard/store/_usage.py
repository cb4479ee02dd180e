"""Token usage per tenant, key, version and UTC day: what budgets' spend is summed from.

Every path that writes, closes or discards an inference record adds its tokens here
in the same transaction (``add_usage``), so the sums always equal those of the
records: a record counts once it has ended (``running`` ones not yet), and only if a
user sent it (``user_facing``: shadow copies cost the tenant nothing). Purging raw
records (``_retention``) leaves their usage: what a tenant spent this month does not
drop because its prompts were deleted after a day. Reading a month's spend then reads
at most 31 rows per key and version instead of the month's records (migration 0027,
which also filled the table from the records there were).

``recount_usage`` computes the days' usage again from the records, for the days whose
records are all still there: after a rolling upgrade across 0027, the replicas of the
older release wrote records without their usage until they were replaced.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Insert,
    Integer,
    String,
    Table,
    case,
    delete,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelyard.errors import ConfigError
from modelyard.store._core import StoreCore
from modelyard.store._rows import tenant_row, version_info
from modelyard.store._samples import user_facing
from modelyard.store._schema import (
    Base,
    BaseModelRow,
    InferenceRecordRow,
    ModelVersionRow,
    TenantRow,
    TokenPriceRow,
)

# the record columns ``add_usage`` reads, from a row's dict or a selected mapping
USAGE_COLUMNS = (
    "created_at",
    "tenant_id",
    "api_key_id",
    "version_id",
    "status",
    "shadow",
    "prompt_tokens",
    "completion_tokens",
)


class UsageDayRow(Base):
    """The tokens of a tenant's requests through one key (``key_id`` empty: none) to one
    version in one UTC day, and how many requests they were; shadow copies and requests
    still running not counted."""

    __tablename__ = "usage_days"
    __table_args__ = (Index("ix_usage_days_tenant_day", "tenant_id", "day"),)
    day: Mapped[datetime] = mapped_column(primary_key=True)  # 00:00 UTC
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


def day_of(moment: datetime) -> datetime:
    """00:00 UTC of the day ``moment`` falls in."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


Key = tuple[date, int, str, int]  # UTC day, tenant id, key id, version id


def usage_of(records: Iterable[Mapping[Any, Any]], sign: int = 1) -> dict[Key, list[int]]:
    """The usage ``records`` (their ``USAGE_COLUMNS``) add, per day, tenant, key and
    version: ``[requests, prompt tokens, completion tokens]``, times ``sign`` (a mapping
    with ``requests`` stands for that many records, its tokens their sums). Records
    without a tenant or version (refused before either was known) cost nothing and are
    left out, as the records still running and the shadow copies."""
    out: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in records:
        if r["status"] == "running" or not user_facing(bool(r["shadow"])):
            continue
        if r["tenant_id"] is None or r["version_id"] is None:
            continue
        at = r["created_at"]
        day = (at if at.tzinfo is UTC else at.astimezone(UTC)).date()
        sums = out[(day, r["tenant_id"], r["api_key_id"] or "", r["version_id"])]
        sums[0] += sign * int(r.get("requests", 1))
        sums[1] += sign * int(r["prompt_tokens"] or 0)
        sums[2] += sign * int(r["completion_tokens"] or 0)
    return out


def add_usage(s: Session, records: Iterable[Mapping[Any, Any]], sign: int = 1) -> None:
    """Add (``sign`` -1: take away) the usage of ``records`` in ``s``'s transaction:
    one upsert per day, tenant, key and version, in key order (two writers' transactions
    lock the rows they share in the same order, so neither waits on the other in turn)."""
    usage = usage_of(records, sign)
    if not usage:
        return
    rows = [
        {"day": datetime(day.year, day.month, day.day, tzinfo=UTC), "tenant_id": tenant,
         "key_id": key, "version_id": version, "requests": v[0], "prompt_tokens": v[1],
         "completion_tokens": v[2]}
        for (day, tenant, key, version), v in sorted(usage.items())
    ]  # fmt: skip
    s.execute(_upsert(s.get_bind().dialect.name), rows)


@functools.cache
def _upsert(dialect: str) -> Insert:
    """The statement adding a row's sums to the day's (built once: Core, not the ORM's bulk
    path, which costs a millisecond a call)."""
    table = cast(Table, UsageDayRow.__table__)
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return stmt.on_conflict_do_update(
        index_elements=["day", "tenant_id", "key_id", "version_id"],
        set_={
            name: table.c[name] + stmt.excluded[name]
            for name in ("requests", "prompt_tokens", "completion_tokens")
        },
    )


def recount_usage(s: Session, tenant_id: int, since: datetime, until: datetime) -> int:
    """Compute the usage of tenant ``tenant_id`` in the days from ``since``'s to the one
    before ``until``'s again from their records (deleted and written anew), a day at a
    time, summed in the database; returns how many records were counted. Only where
    every record of those days is still there (``_retention`` knows)."""
    r = InferenceRecordRow
    counted = 0
    day, end = day_of(since), day_of(until)
    while day < end:
        after = day + timedelta(days=1)
        s.execute(
            delete(UsageDayRow).where(UsageDayRow.tenant_id == tenant_id, UsageDayRow.day == day)
        )
        groups = (r.tenant_id, r.api_key_id, r.version_id, r.status, r.shadow)
        query = (
            select(*groups, func.count().label("requests"),
                   func.sum(r.prompt_tokens).label("prompt_tokens"),
                   func.sum(r.completion_tokens).label("completion_tokens"))
            .where(r.tenant_id == tenant_id, r.created_at >= day, r.created_at < after)
            .group_by(*groups)
        )  # fmt: skip
        rows = [dict(m) | {"created_at": day} for m in s.execute(query).mappings()]
        add_usage(s, rows)
        counted += sum(int(m["requests"]) for m in rows)
        day = after
    return counted


USAGE_GROUPS = ("day", "tenant", "key", "version")
"""What ``usage`` may sum by."""


class UsageStore(StoreCore):
    """The token usage per day, tenant, key and version, and what it cost: chargeback."""

    def usage(
        self,
        *,
        since: datetime,
        until: datetime | None = None,
        tenant: str | None = None,
        by: Sequence[str] = ("day",),
    ) -> list[dict[str, Any]]:
        """The users' requests and their tokens from ``since``'s UTC day to before
        ``until``'s (None: to now), of ``tenant`` (None: every tenant), summed by ``by``
        (some of ``USAGE_GROUPS``; none: one total), with their ``cost`` at today's prices
        (versions without one cost nothing: ``unpriced_tokens`` counts their tokens), as
        budgets count them. Sorted by day, tenant, key and version."""
        unknown = [b for b in by if b not in USAGE_GROUPS]
        if unknown:
            raise ConfigError(
                f"cannot sum usage by {', '.join(map(repr, unknown))}: by any of "
                f"{', '.join(USAGE_GROUPS)}",
                field="by",
            )
        u, price = UsageDayRow, TokenPriceRow
        columns = {
            "day": u.day, "tenant": TenantRow.name, "key": u.key_id, "version": u.version_id,
        }  # fmt: skip
        names = [b for b in USAGE_GROUPS if b in by]
        groups = [columns[b] for b in names]
        cost = u.prompt_tokens * price.input_per_1k + u.completion_tokens * price.output_per_1k
        unpriced = case(
            (price.base_model.is_(None), u.prompt_tokens + u.completion_tokens), else_=0
        )
        query = (
            select(
                *groups,
                func.sum(u.requests),
                func.sum(u.prompt_tokens),
                func.sum(u.completion_tokens),
                func.coalesce(func.sum(cost), 0.0) / 1000.0,
                func.sum(unpriced),
            )
            .select_from(u)
            .join(TenantRow, TenantRow.id == u.tenant_id)
            .join(ModelVersionRow, ModelVersionRow.id == u.version_id)
            .join(BaseModelRow, BaseModelRow.id == ModelVersionRow.base_model_id)
            .outerjoin(price, price.base_model == BaseModelRow.name)
            .where(u.day >= day_of(since))
            .group_by(*groups)
            .order_by(*groups)
        )
        if until is not None:
            query = query.where(u.day < day_of(until))
        with self._session("read the token usage") as s:
            if tenant is not None:
                query = query.where(u.tenant_id == tenant_row(s, tenant).id)
            rows = s.execute(query).all()
            at = names.index("version") if "version" in names else None
            refs = version_info(s, [cast(int, r[at]) for r in rows]) if at is not None else {}
        out = []
        for row in rows:
            named: dict[str, Any] = dict(zip(names, row, strict=False))
            if "day" in named:
                named["day"] = named["day"].date().isoformat()
            if "key" in named:
                named["key"] = named["key"] or None
            if "version" in named:
                named["version"] = refs.get(named["version"], ("?", "?"))[0]
            sums: tuple[Any, ...] = tuple(row[len(groups) :])
            requests, prompt, completion, money, unpriced_tokens = sums
            out.append(named | {
                "requests": int(requests or 0), "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0), "cost": float(money or 0.0),
                "unpriced_tokens": int(unpriced_tokens or 0),
            })  # fmt: skip
        return out


__all__ = [
    "USAGE_COLUMNS",
    "USAGE_GROUPS",
    "UsageDayRow",
    "UsageStore",
    "add_usage",
    "day_of",
    "recount_usage",
    "usage_of",
]
