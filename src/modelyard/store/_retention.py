"""Retention of raw inference records: a policy per tenant, and the purge (both audited).

Purging deletes records with their features and feedback; the hourly and daily profiles
and the usage budgets count (``_usage``) stay, and the audit chain keeps one event per
purge naming how many records went (and before when), which is what tells
``recount_usage`` the days it may count again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from modelyard.audit import PURGE_ACTION
from modelyard.errors import ConfigError
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name, tenant_id_of
from modelyard.store._schema import (
    AuditEventRow,
    FeedbackRow,
    InferenceRecordRow,
    RecordFeaturesRow,
    RetentionPolicyRow,
    TenantRow,
    utcnow,
)
from modelyard.store._usage import day_of, recount_usage
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

    def recount_usage(self, tenant: str, since: datetime) -> dict[str, Any]:
        """Count ``tenant``'s usage (``_usage``: what budgets' spend is summed from) again
        from its records, from the start of ``since``'s UTC day to the end of today;
        audited (``usage.recounted``). Refused (naming the first day it can start) where
        a purge deleted records of those days: their usage was kept and the records that
        would count it again are gone."""
        now = utcnow()
        start = day_of(since)
        if start > now:
            raise ConfigError(f"--since {start:%Y-%m-%d} is in the future", field="since")
        with self._write(f"recount the usage of tenant {tenant!r}") as s:
            self._require(s, USAGE_RECOUNTED, tenant, f"recount the usage of {tenant!r}")
            _lock_usage(s, "SHARE ROW EXCLUSIVE")  # before the purges are read
            tid = tenant_id_of(s, tenant)
            purged = _purged_before(s, tid)
            if purged is not None and start < purged:
                first = day_of(purged) + timedelta(days=1 if purged > day_of(purged) else 0)
                raise ConfigError(
                    f"the records of {tenant!r} before {purged:%Y-%m-%d %H:%M} UTC were "
                    f"purged (retention), so the usage of those days cannot be counted "
                    f"again: recount from {first:%Y-%m-%d} on",
                    field="since",
                )
            days = (day_of(now) - start) // timedelta(days=1) + 1
            counted = recount_usage(s, tid, start, day_of(now) + timedelta(days=1))
            details = {"since": start.isoformat(), "days": days, "records": counted}
            self._audit(s, USAGE_RECOUNTED, tenant, details)
            return {"tenant": tenant} | details

    def purge_boundaries(self) -> dict[int, datetime]:
        """Each tenant a retention purge has deleted records of (by id), and the time its
        records before which may be gone: what derived numbers (usage, profiles) must not
        be computed again from before."""
        with self._session("read the purges") as s:
            return _purge_boundaries(s)

    def purge_records(self, tenant: str, before: datetime) -> int:
        """Delete ``tenant``'s raw records (features, feedback) created before ``before``.

        The caller makes sure their profiles are final first. One audit event
        names how many went; audit events themselves are never deleted.
        """
        r = InferenceRecordRow
        with self._write(f"purge records of tenant {tenant!r}") as s:
            _lock_usage(s, "ROW EXCLUSIVE")  # a recount under way counts the records first
            tid = tenant_id_of(s, tenant)
            ids = select(r.id).where(r.tenant_id == tid, r.created_at < before)
            # counted in the database (a purge of a million records reads no million ids),
            # and on PostgreSQL locked as counted, by id: the order of every record path
            # (``_record_locks``), before their feedback and features. Deleting those first
            # locked them before the records: a verdict (the record's lock, then its
            # feedback row's) or an end in the meantime deadlocked with the purge.
            locked = ids.order_by(r.id).with_for_update() if _postgres(s) else ids
            n = int(s.scalar(select(func.count()).select_from(locked.subquery())) or 0)
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


USAGE_RECOUNTED = "usage.recounted"


def _lock_usage(s: Session, mode: str) -> None:
    """PostgreSQL: a recount (``SHARE ROW EXCLUSIVE``) waits for the transactions writing
    usage or purging records (``ROW EXCLUSIVE``, which record paths take by their upsert)
    to end, and they for it: under READ COMMITTED a write committed between the recount's
    delete of a day and its read of the day's records was counted twice (its row made
    anew, then the recount's sums added to it), and a purge committed there lost the
    usage of the records it deleted. SQLite's write transactions are one at a time."""
    if _postgres(s):
        s.execute(text(f"LOCK TABLE usage_days IN {mode} MODE"))


def _postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def _purged_before(s: Session, tenant_id: int) -> datetime | None:
    """The latest ``before`` of the purges of tenant ``tenant_id`` (records created
    before it may be gone), from the audit chain; None: never purged."""
    return _purge_boundaries(s).get(tenant_id)


def _purge_boundaries(s: Session) -> dict[int, datetime]:
    """Each purged tenant's id and the latest ``before`` of its purges, from the chain."""
    query = select(AuditEventRow.subject, AuditEventRow.payload).where(
        AuditEventRow.action == PURGE_ACTION
    )
    ids: dict[str, int] | None = None
    latest: dict[int, datetime] = {}
    for subject, payload in s.execute(query):
        tid, before = payload.get("tenant_id"), payload.get("before")
        if tid is None:  # a purge by a release before the records' seals named its tenant
            if ids is None:
                ids = {name: id_ for id_, name in s.execute(select(TenantRow.id, TenantRow.name))}
            tid = ids.get(subject)
        if tid is None or not before:
            continue
        when = datetime.fromisoformat(before)
        latest[tid] = max(latest.get(tid, when), when)
    return latest


__all__ = ["RetentionStore"]
