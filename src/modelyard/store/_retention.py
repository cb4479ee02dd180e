"""Retention of raw inference records: a policy per tenant, and the purge (both audited).

Purging deletes records with their features and feedback; the hourly and daily profiles
stay, and the audit chain keeps one event per purge naming how many records went.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select

from modelyard.audit import PURGE_ACTION
from modelyard.errors import ConfigError
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name, tenant_id_of
from modelyard.store._schema import (
    FeedbackRow,
    InferenceRecordRow,
    RecordFeaturesRow,
    RetentionPolicyRow,
    TenantRow,
    utcnow,
)
from modelyard.store.entities import RetentionPolicy


class RetentionStore(StoreCore):
    """Retention policies and purges."""

    def set_retention(self, tenant: str, raw_days: int) -> RetentionPolicy:
        """Keep ``tenant``'s raw records ``raw_days`` days (their profiles stay); audited."""
        if raw_days < 1:
            raise ConfigError(
                f"retention of {raw_days} days: keep raw records at least 1 day",
                field="raw_days",
            )
        with self._write(f"set the retention of tenant {tenant!r}") as s:
            self._require(s, "retention.set", tenant, f"set the retention of {tenant!r}")
            tid = tenant_id_of(s, tenant)
            lock_name(s, "retention", tenant)
            row = s.get(RetentionPolicyRow, tid, populate_existing=True)
            before = row.raw_days if row is not None else None
            if row is None:
                row = RetentionPolicyRow(tenant_id=tid, raw_days=raw_days, updated_at=utcnow())
                s.add(row)
            else:
                row.raw_days, row.updated_at = raw_days, utcnow()
            self._audit(s, "retention.set", tenant, {"raw_days": raw_days, "before": before})
            return RetentionPolicy(tenant, row.raw_days, row.updated_at)

    def list_retention(self) -> list[RetentionPolicy]:
        with self._session("list retention policies") as s:
            return [
                RetentionPolicy(name, days, updated)
                for name, days, updated in s.execute(
                    select(
                        TenantRow.name, RetentionPolicyRow.raw_days, RetentionPolicyRow.updated_at
                    )
                    .join(TenantRow, TenantRow.id == RetentionPolicyRow.tenant_id)
                    .order_by(TenantRow.name)
                ).all()
            ]

    def purge_records(self, tenant: str, before: datetime) -> int:
        """Delete ``tenant``'s raw records (features, feedback) created before ``before``.

        The caller makes sure their profiles are final first. One audit event
        names how many went; audit events themselves are never deleted.
        """
        r = InferenceRecordRow
        with self._write(f"purge records of tenant {tenant!r}") as s:
            tid = tenant_id_of(s, tenant)
            ids = select(r.id).where(r.tenant_id == tid, r.created_at < before)
            # counted in the database: a purge of a million records reads no million ids
            n = int(s.scalar(select(func.count()).select_from(ids.subquery())) or 0)
            if n == 0:
                return 0
            self._require(s, "records.purged", tenant, f"purge the records of {tenant!r}")
            s.execute(delete(RecordFeaturesRow).where(RecordFeaturesRow.record_id.in_(ids)))
            s.execute(delete(FeedbackRow).where(FeedbackRow.record_id.in_(ids)))
            s.execute(delete(r).where(r.tenant_id == tid, r.created_at < before))
            # tenant_id: the seals' indexes name records by tenant id (``_seal_check``)
            self._audit(
                s, PURGE_ACTION, tenant,
                {"records": n, "before": before.isoformat(), "tenant_id": tid},
            )  # fmt: skip
            return n


__all__ = ["RetentionStore"]
