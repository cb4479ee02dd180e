"""Row lookups shared by the stages (inside a session): NotFound when a name has no row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Integer, Select, cast, func, select, text
from sqlalchemy.orm import Session

from modelyard.errors import (
    ConfigError,
    Conflict,
    EndpointNotFound,
    ModelVersionNotFound,
    NotFound,
    TenantNotFound,
)
from modelyard.store._schema import (
    BaseModelRow,
    EndpointRow,
    ModelVersionRow,
    RegisteredModelRow,
    RolloutRow,
    TenantRow,
    TrafficRouteRow,
    utcnow,
)
from modelyard.store.entities import ROLLOUT_ACTIVE

T = TypeVar("T")
Q = TypeVar("Q", bound=Select[Any])


def for_update(query: Q, lock: bool = True) -> Q:
    """``query`` taking a row lock until commit (``FOR NO KEY UPDATE`` on PostgreSQL), re-read.

    A read-modify-write (merging tags, checking a state then changing it) locks the
    rows it reads, so a concurrent writer waits and then sees the committed change
    instead of overwriting it. ``NO KEY`` lets inserts that reference the row (its
    foreign keys) proceed. SQLite ignores the clause: its write transactions are
    serialized by ``BEGIN IMMEDIATE`` already. Lock order, to avoid deadlocks:
    registered model, then endpoint, then rollout, then other rows, then the audit
    chain (taken by the first audited event).
    """
    if not lock:
        return query
    return query.with_for_update(key_share=True).execution_options(populate_existing=True)


def get_locked(s: Session, model: type[T], key: Any) -> T | None:
    """``s.get(model, key)`` under a row lock (see ``for_update``), re-read from the database."""
    return s.get(model, key, with_for_update={"key_share": True}, populate_existing=True)


def lock_name(s: Session, kind: str, name: str) -> None:
    """Serialize transactions creating ``kind`` ``name`` (no row exists to lock yet).

    A transaction-scoped advisory lock on PostgreSQL; a no-op on SQLite, whose
    write transactions are serialized already.
    """
    if s.get_bind().dialect.name == "postgresql":
        s.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:kind), hashtext(:name))"),
            {"kind": kind, "name": name},
        )


def require_row(s: Session, model: type[T], where: Any, what: str, *, lock: bool = False) -> T:
    row = s.scalar(for_update(select(model).where(where), lock))
    if row is None:
        raise NotFound(f"no {what} in the store")
    return row


def tenant_row(s: Session, name: str, *, lock: bool = False) -> TenantRow:
    row = s.scalar(for_update(select(TenantRow).where(TenantRow.name == name), lock))
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


def model_row(s: Session, name: str, *, lock: bool = False) -> RegisteredModelRow:
    """The registered model ``name``; ``lock``: the lock for its versions and aliases."""
    query = select(RegisteredModelRow).where(RegisteredModelRow.name == name)
    row = s.scalar(for_update(query, lock))
    if row is None:  # an endpoint's name given for its model's: say which model it serves
        served = s.execute(
            select(EndpointRow.model_ref, RegisteredModelRow.name)
            .join(RegisteredModelRow, RegisteredModelRow.id == EndpointRow.registered_model_id)
            .where(EndpointRow.name == name)
        ).first()
        if served is not None:
            raise ModelVersionNotFound(
                f"no registered model named {name!r}: {name!r} is an endpoint, serving {served[0]}",
                hint=f"Give its model's name, {served[1]!r}.",
            )
        raise ModelVersionNotFound(f"no registered model named {name!r}")
    return row


MAX_VERSION = 2**63 - 1
"""The largest version number a store can hold (a 64-bit integer in every database)."""


def version_row(
    s: Session, mrow: RegisteredModelRow, version: int, *, lock: bool = False
) -> ModelVersionRow:
    hint = f"List its versions with `modelyard registry list {mrow.name}`."
    if not 0 < version <= MAX_VERSION:  # never stored, and past what the database can compare
        raise ModelVersionNotFound(f"model {mrow.name!r} has no version {version}", hint=hint)
    query = select(ModelVersionRow).where(
        ModelVersionRow.registered_model_id == mrow.id, ModelVersionRow.version == version
    )
    row = s.scalar(for_update(query, lock))
    if row is None:
        raise ModelVersionNotFound(f"model {mrow.name!r} has no version {version}", hint=hint)
    return row


def endpoint_row(s: Session, name: str, *, lock: bool = False) -> EndpointRow:
    """The endpoint ``name``; ``lock``: the lock for its plan, shadow, policy and rollouts."""
    row = s.scalar(for_update(select(EndpointRow).where(EndpointRow.name == name), lock))
    if row is None:
        raise EndpointNotFound(f"no endpoint named {name!r}")
    return row


def replace_routes(s: Session, erow: EndpointRow, weights: Mapping[int, int]) -> None:
    """Make ``{version number: weight}`` the endpoint's plan (in the caller's transaction)."""
    mrow = s.get(RegisteredModelRow, erow.registered_model_id)
    assert mrow is not None  # guaranteed by the foreign key
    new_routes = []
    for number, weight in sorted(weights.items()):
        vrow = version_row(s, mrow, number)
        if vrow.status == "archived" and weight > 0:
            raise Conflict(f"{mrow.name}:{number} is archived and cannot take traffic")
        new_routes.append(TrafficRouteRow(version_id=vrow.id, weight=weight))
    for old in s.scalars(select(TrafficRouteRow).where(TrafficRouteRow.endpoint_id == erow.id)):
        s.delete(old)
    s.flush()
    for route in new_routes:
        route.endpoint_id = erow.id
        s.add(route)
    erow.updated_at = utcnow()
    s.flush()


def active_rollout_row(s: Session, endpoint_id: int) -> RolloutRow | None:
    return s.scalar(
        select(RolloutRow)
        .where(RolloutRow.endpoint_id == endpoint_id, RolloutRow.status.in_(ROLLOUT_ACTIVE))
        .execution_options(populate_existing=True)
    )


def current_plan(s: Session, endpoint_id: int) -> dict[int, int]:
    """The endpoint's current plan as {version number: weight} (weights above 0)."""
    query = (
        select(ModelVersionRow.version, TrafficRouteRow.weight)
        .join(ModelVersionRow, ModelVersionRow.id == TrafficRouteRow.version_id)
        .where(TrafficRouteRow.endpoint_id == endpoint_id, TrafficRouteRow.weight > 0)
    )
    return dict(s.execute(query).all())


def tenant_id_of(s: Session, name: str) -> int:
    tid = s.scalar(select(TenantRow.id).where(TenantRow.name == name))
    if tid is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return tid


def tenant_names(s: Session) -> dict[int | None, str]:
    return dict(s.execute(select(TenantRow.id, TenantRow.name)).all())


def version_info(s: Session, ids: Iterable[int | None]) -> dict[int | None, tuple[str, str]]:
    """version id → (``model:N`` ref, base model name)."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = s.execute(
        select(
            ModelVersionRow.id, RegisteredModelRow.name, ModelVersionRow.version, BaseModelRow.name
        )
        .join(RegisteredModelRow, RegisteredModelRow.id == ModelVersionRow.registered_model_id)
        .join(BaseModelRow, BaseModelRow.id == ModelVersionRow.base_model_id)
        .where(ModelVersionRow.id.in_(wanted))
    ).all()
    return {vid: (f"{model}:{number}", base) for vid, model, number, base in rows}


def version_ref_of(s: Session, version_id: int | None) -> str | None:
    version = s.get(ModelVersionRow, version_id) if version_id else None
    if version is None:
        return None
    mrow = s.get(RegisteredModelRow, version.registered_model_id)
    return f"{mrow.name if mrow else '?'}:{version.version}"


def in_scope(
    query: Q,
    s: Session,
    row: Any,
    time: Any,
    *,
    tenant: str | None,
    endpoint: str | None,
    version_id: int | None,
    since: datetime | None,
    until: datetime | None,
) -> Q:
    """``query`` narrowed to a tenant, endpoint, version and ``[since, until)`` on ``time``
    (the scope records, profiles and drift are read in; ``row`` has the three columns)."""
    if tenant is not None:
        query = query.where(row.tenant_id == tenant_id_of(s, tenant))
    if endpoint is not None:
        query = query.where(row.endpoint_name == endpoint)
    if version_id is not None:
        query = query.where(row.version_id == version_id)
    if since is not None:
        query = query.where(time >= since)
    if until is not None:
        query = query.where(time < until)
    return query


def epoch_seconds(s: Session, column: Any) -> Any:
    """Whole seconds since 1970 of a UTC timestamp column, in this database's SQL."""
    if s.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), BigInteger)
    return cast(func.strftime("%s", column), Integer)  # SQLite keeps UTC as text


def check_page_limit(limit: int | None, what: str) -> None:
    """A listing's ``limit``: None (everything) or at least 1 (ConfigError naming it)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit is {limit}: list at least 1 {what}", field="limit")
