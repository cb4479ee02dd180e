"""Reading the records a shadow comparison pairs: an endpoint's shadow answers in a window,
and the production records that may have answered the same requests.

A shadow record is the answer of a mirrored copy of a request (``shadow`` true). The
production record of the same request is found by id when the shadow's id is the
production record's followed by ``-shadow`` (batch and stream rows), otherwise among
the production records of the same API key in the window, widened by ``margin_s`` on
both sides (a record's time is when it ended, and either answer may end first). Which
of them is the same request is ``modelyard.delivery``'s decision; the store only reads.
Reads only: nothing here is audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.store._core import StoreCore
from modelyard.store._rows import in_scope, version_info
from modelyard.store._samples import user_facing
from modelyard.store._schema import InferenceRecordRow, TenantRow

SHADOW_SUFFIX = "-shadow"
"""A shadow record's id is its production record's id followed by this (when it has one)."""

_CHUNK = 500


@dataclass(frozen=True)
class PairedRecord:
    """One side of a shadow comparison: an inference record with its text as stored.

    ``storage_policy`` is its tenant's (``full``, ``redacted``, ``hash``, ``none``): what
    ``prompt`` and ``response`` can hold.
    """

    id: str
    created_at: datetime
    tenant: str | None
    storage_policy: str | None
    api_key_id: str | None
    version: str | None  # NAME:N
    version_id: int | None
    route: str
    prompt: str | None
    response: str | None
    status: str
    shadow: bool
    source: str
    job_id: str | None


@dataclass(frozen=True)
class ShadowWindow:
    """An endpoint's shadow records in ``[since, until)`` (oldest first) and the
    production records that may be their requests'."""

    endpoint: str
    since: datetime
    until: datetime | None
    shadows: list[PairedRecord]
    productions: list[PairedRecord]


def _columns() -> list[Any]:
    r = InferenceRecordRow
    return [
        r.id, r.created_at, r.tenant_id, r.api_key_id, r.version_id, r.route, r.prompt,
        r.response, r.status, r.shadow, r.source, r.job_id,
    ]  # fmt: skip


def _to_records(s: Session, rows: Sequence[Any]) -> list[PairedRecord]:
    tenants = {
        tid: (name, policy)
        for tid, name, policy in s.execute(
            select(TenantRow.id, TenantRow.name, TenantRow.storage_policy)
        ).all()
    }
    refs = version_info(s, {row.version_id for row in rows})
    out = []
    for row in rows:
        tenant, policy = tenants.get(row.tenant_id, (None, None))
        info = refs.get(row.version_id)
        out.append(
            PairedRecord(
                id=row.id, created_at=row.created_at, tenant=tenant, storage_policy=policy,
                api_key_id=row.api_key_id, version=info[0] if info else None,
                version_id=row.version_id, route=row.route, prompt=row.prompt,
                response=row.response, status=row.status, shadow=bool(row.shadow),
                source=row.source, job_id=row.job_id,
            )
        )  # fmt: skip
    return out


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class PairStore(StoreCore):
    """The reads of ``modelyard rollout compare --shadow``."""

    def shadow_window(
        self,
        endpoint: str,
        since: datetime,
        until: datetime | None = None,
        *,
        margin_s: float = 300.0,
    ) -> ShadowWindow:
        """``endpoint``'s shadow records created in ``[since, until)``, and the production
        records that may be their requests': by id (``ID-shadow`` → ``ID``), and every
        production record of the shadows' API keys from ``margin_s`` before the first
        shadow to ``margin_s`` after the last one."""
        r = InferenceRecordRow
        with self._session(f"read the shadow records of {endpoint!r}") as s:
            query = select(*_columns()).where(r.shadow.is_(True))
            query = in_scope(query, s, r, r.created_at, tenant=None, endpoint=endpoint,
                             version_id=None, since=since, until=until)  # fmt: skip
            shadow_rows = s.execute(query.order_by(r.created_at, r.id)).all()
            shadows = _to_records(s, shadow_rows)
            productions: dict[str, Any] = {}
            if shadows:
                ids = [x.id[: -len(SHADOW_SUFFIX)] for x in shadows if x.id.endswith(SHADOW_SUFFIX)]
                keys = {x.api_key_id for x in shadows if x.api_key_id is not None}
                first = min(x.created_at for x in shadows) - timedelta(seconds=margin_s)
                last = max(x.created_at for x in shadows) + timedelta(seconds=margin_s)
                base = select(*_columns()).where(r.endpoint_name == endpoint, user_facing(r.shadow))
                for chunk in _chunks(ids):
                    for row in s.execute(base.where(r.id.in_(chunk))).all():
                        productions[row.id] = row
                for chunk in _chunks(keys):
                    query = base.where(
                        r.api_key_id.in_(chunk), r.created_at >= first, r.created_at <= last
                    )
                    for row in s.execute(query).all():
                        productions[row.id] = row
            ordered = sorted(productions.values(), key=lambda row: (row.created_at, row.id))
            return ShadowWindow(endpoint, since, until, shadows, _to_records(s, ordered))
