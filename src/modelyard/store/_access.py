"""Access: tenants, their API keys, actors and their roles."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from modelyard.audit import (
    Role,
    check_role,
)
from modelyard.errors import ConfigError, Conflict, NotFound
from modelyard.store import _audit
from modelyard.store._convert import to_actor, to_api_key, to_tenant
from modelyard.store._core import StoreCore, check_name
from modelyard.store._rows import check_page_limit, get_locked, lock_name, tenant_row
from modelyard.store._schema import ActorRow, ApiKeyRow, BudgetRow, TenantRow, utcnow
from modelyard.store.entities import (
    DEFAULT_STORAGE_POLICY,
    STORAGE_POLICIES,
    Actor,
    ApiKey,
    StoragePolicy,
    Tenant,
)


class AccessStore(StoreCore):
    """Tenants, API keys, actors and their roles."""

    # -- tenants and keys ------------------------------------------------------------------

    def create_tenant(
        self, name: str, *, storage_policy: StoragePolicy = DEFAULT_STORAGE_POLICY
    ) -> Tenant:
        check_name("tenant", name)
        if storage_policy not in STORAGE_POLICIES:
            raise ConfigError(
                f"invalid storage policy {storage_policy!r}: "
                f"use one of {', '.join(STORAGE_POLICIES)}"
            )
        with self._write(f"create tenant {name!r}") as s:
            lock_name(s, "tenant", name)
            if s.scalar(select(TenantRow.id).where(TenantRow.name == name)) is not None:
                raise Conflict(f"tenant {name!r} exists already")
            self._require(s, "tenant.created", name, f"create tenant {name!r}")
            row = TenantRow(name=name, storage_policy=storage_policy)
            s.add(row)
            s.flush()
            self._audit(s, "tenant.created", name, {"storage_policy": storage_policy})
            return to_tenant(row)

    def get_tenant(self, name: str) -> Tenant:
        with self._session(f"read tenant {name!r}") as s:
            return to_tenant(tenant_row(s, name))

    def list_tenants(self, *, limit: int | None = None, after: str | None = None) -> list[Tenant]:
        """By name; with ``limit`` the first ``limit`` named after ``after`` (a page)."""
        check_page_limit(limit, "tenant")
        query = select(TenantRow).order_by(TenantRow.name).limit(limit)
        if after is not None:
            query = query.where(TenantRow.name > after)
        with self._session("list tenants") as s:
            return [to_tenant(r) for r in s.scalars(query)]

    def create_api_key(
        self,
        key_id: str,
        *,
        tenant: str,
        key_hash: str,
        scopes: Sequence[str],
        expires_at: datetime | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
    ) -> ApiKey:
        """A key for ``tenant``; ``rpm_limit``/``tpm_limit`` None use the server's defaults."""
        check_limits(rpm_limit, tpm_limit)
        with self._write(f"create an API key for tenant {tenant!r}") as s:
            trow = tenant_row(s, tenant)
            self._require(s, "api_key.created", key_id, f"create API keys for tenant {tenant!r}")
            row = ApiKeyRow(
                id=key_id,
                tenant_id=trow.id,
                key_hash=key_hash,
                scopes=list(scopes),
                expires_at=expires_at,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
            )
            s.add(row)
            s.flush()
            payload: dict[str, Any] = {
                "tenant": trow.name,
                "scopes": list(scopes),
                "expires_at": expires_at,
            }
            if rpm_limit is not None or tpm_limit is not None:
                payload.update(rpm_limit=rpm_limit, tpm_limit=tpm_limit)
            self._audit(s, "api_key.created", key_id, payload)
            return to_api_key(row, trow.name)

    def rotate_api_key(
        self,
        key_id: str,
        *,
        new_key_id: str,
        new_key_hash: str,
        grace: timedelta,
        new_expires_at: datetime | None = None,
    ) -> tuple[ApiKey, ApiKey]:
        """Replace ``key_id`` by a new key with the same tenant, scopes, limits and budgets.

        The old key keeps working for ``grace``: its expiry becomes now + grace
        (an earlier expiry stays), and ``rotated_to`` names its successor. The
        old key's budgets are the new key's too (a rotation must not lift a cap),
        and the new key's spend counts the old one's (``spent``). Both changes
        are audited (``api_key.created`` for the new key with ``rotated_from``
        and its budgets, ``api_key.rotated`` for the old). A revoked, expired or
        already rotated key cannot be rotated. Returns (old key, new key).
        """
        if grace < timedelta(0):
            raise ConfigError(f"the grace period {grace} is negative; use 0 or more")
        with self._write(f"rotate API key {key_id}") as s:
            row = get_locked(s, ApiKeyRow, key_id)  # two rotations: the second sees the first
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            tenant = s.get(TenantRow, row.tenant_id)
            tenant_name = tenant.name if tenant else "?"
            now = utcnow()
            if row.revoked_at is not None:
                raise Conflict(
                    f"API key {key_id} is revoked and cannot be rotated",
                    hint=f"Create a new key with `modelyard keys create --tenant {tenant_name}`.",
                )
            if row.rotated_to is not None:
                raise Conflict(
                    f"API key {key_id} was rotated already, to {row.rotated_to}",
                    hint=f"Rotate the newer key: `modelyard keys rotate {row.rotated_to}`.",
                )
            if row.expires_at is not None and row.expires_at <= now:
                raise Conflict(
                    f"API key {key_id} has expired and cannot be rotated",
                    hint=f"Create a new key with `modelyard keys create --tenant {tenant_name}`.",
                )
            self._require(s, "api_key.rotated", key_id, f"rotate API key {key_id}")
            new = ApiKeyRow(
                id=new_key_id,
                tenant_id=row.tenant_id,
                key_hash=new_key_hash,
                scopes=list(row.scopes),
                expires_at=new_expires_at,
                rpm_limit=row.rpm_limit,
                tpm_limit=row.tpm_limit,
            )
            s.add(new)
            budgets = s.scalars(
                select(BudgetRow)
                .where(BudgetRow.tenant_id == row.tenant_id, BudgetRow.key_id == key_id)
                .order_by(BudgetRow.period)
            ).all()
            for budget in budgets:
                s.add(BudgetRow(tenant_id=row.tenant_id, key_id=new_key_id, period=budget.period,
                                amount=budget.amount, updated_by=self.actor))  # fmt: skip
            s.flush()
            self._audit(
                s,
                "api_key.created",
                new_key_id,
                {"tenant": tenant_name, "scopes": list(row.scopes), "expires_at": new_expires_at,
                 "rpm_limit": row.rpm_limit, "tpm_limit": row.tpm_limit,
                 "rotated_from": key_id,
                 "budgets": {b.period: b.amount for b in budgets}},
            )  # fmt: skip
            cutoff = now + grace
            if row.expires_at is None or row.expires_at > cutoff:
                row.expires_at = cutoff
            row.rotated_to = new_key_id
            s.flush()
            self._audit(
                s,
                "api_key.rotated",
                key_id,
                {"tenant": tenant_name, "rotated_to": new_key_id, "expires_at": row.expires_at,
                 "grace_seconds": grace.total_seconds()},
            )  # fmt: skip
            return to_api_key(row, tenant_name), to_api_key(new, tenant_name)

    def set_api_key_limits(
        self, key_id: str, *, rpm_limit: int | None, tpm_limit: int | None
    ) -> ApiKey:
        """Set a key's requests/min and tokens/min (None: the server's default); audited.

        Servers apply the change within their key-cache time.
        """
        check_limits(rpm_limit, tpm_limit)
        with self._write(f"set the limits of API key {key_id}") as s:
            row = get_locked(s, ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            tenant = s.get(TenantRow, row.tenant_id)
            tenant_name = tenant.name if tenant else "?"
            if (row.rpm_limit, row.tpm_limit) != (rpm_limit, tpm_limit):
                self._require(
                    s, "api_key.limits_set", key_id, f"set the limits of API key {key_id}"
                )
                previous = {"rpm_limit": row.rpm_limit, "tpm_limit": row.tpm_limit}
                row.rpm_limit, row.tpm_limit = rpm_limit, tpm_limit
                s.flush()
                self._audit(
                    s,
                    "api_key.limits_set",
                    key_id,
                    {"tenant": tenant_name, "rpm_limit": rpm_limit, "tpm_limit": tpm_limit,
                     "previous": previous},
                )  # fmt: skip
            return to_api_key(row, tenant_name)

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self._session("read an API key") as s:
            found = s.execute(
                select(ApiKeyRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .where(ApiKeyRow.id == key_id)
            ).first()
            return None if found is None else to_api_key(found[0], found[1])

    def list_api_keys(
        self,
        tenant: str | None = None,
        *,
        tenants: Collection[str] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[ApiKey]:
        """Oldest first; with ``limit`` the first ``limit`` made after the key ``after``;
        ``tenants``: only these tenants' keys (a page of tenants, at most a thousand)."""
        check_page_limit(limit, "key")
        with self._session("list API keys") as s:
            query = (
                select(ApiKeyRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
                .limit(limit)
            )
            if tenant is not None:
                query = query.where(TenantRow.name == tenant)
            if tenants is not None:
                query = query.where(TenantRow.name.in_(list(tenants)))
            if after is not None:
                query = query.where(after_key(s, after))
            return [to_api_key(r, t) for r, t in s.execute(query).all()]

    def revoke_api_key(self, key_id: str) -> ApiKey:
        """``revoke_api_key_once``'s key: the key revoked, now or before."""
        return self.revoke_api_key_once(key_id)[0]

    def revoke_api_key_once(self, key_id: str) -> tuple[ApiKey, bool]:
        """Revoke ``key_id`` (audited ``api_key.revoked``); returns the key and whether this
        call revoked it. A key revoked before is left as it is, not audited again (False).

        The revocation is one conditional update (``revoked_at`` set where it is still
        NULL): of two revocations at once exactly one changes the row and writes the
        event; the other finds it revoked, as one made after it would.
        """
        with self._write(f"revoke API key {key_id}") as s:
            row = s.get(ApiKeyRow, key_id, populate_existing=True)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            tenant = s.get(TenantRow, row.tenant_id)
            tenant_name = tenant.name if tenant else "?"
            revoked = False
            if row.revoked_at is None:
                self._require(s, "api_key.revoked", key_id, f"revoke API key {key_id}")
                changed = s.execute(
                    update(ApiKeyRow)
                    .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                revoked = cast(CursorResult[Any], changed).rowcount == 1
                s.refresh(row)  # this call's time, or the one that revoked it first
                if revoked:
                    self._audit(s, "api_key.revoked", key_id, {"tenant": tenant_name})
            return to_api_key(row, tenant_name), revoked

    # -- actors and roles ------------------------------------------------------------------

    def add_actor(self, name: str, role: str) -> Actor:
        """Record ``name`` with ``role`` (or change its role); needs role admin.

        While no admin is recorded, the bootstrap admin (the OS user) is admin;
        the last admin cannot be demoted.
        """
        _audit.check_actor(name)
        wanted = check_role(role)
        with self._write(f"set the role of actor {name!r}") as s:
            lock_name(s, "actors", "roles")  # role changes one at a time: the last admin stays
            row = s.get(ActorRow, name, populate_existing=True)
            action = "actor.added" if row is None else "actor.role_changed"
            what = f"add actor {name!r}" if row is None else f"change the role of actor {name!r}"
            self._require(s, action, name, what)
            if row is not None and row.role == wanted:
                return to_actor(row)
            previous = None if row is None else row.role
            if previous == "admin":
                admins = s.scalar(
                    select(func.count()).select_from(ActorRow).where(ActorRow.role == "admin")
                )
                if (admins or 0) <= 1:
                    raise Conflict(
                        f"actor {name!r} is the last admin and cannot become {wanted}",
                        hint="Make another actor admin first.",
                    )
            if row is None:
                row = ActorRow(name=name, role=wanted)
                s.add(row)
            else:
                row.role = wanted
                row.updated_at = utcnow()
            s.flush()
            self._audit(s, action, name, {"role": wanted, "previous_role": previous})
            return to_actor(row)

    def bootstrap_admin(self) -> str | None:
        """Record the acting actor as admin if it is admin only by bootstrap; returns its name."""
        with self._write("record the first admin") as s:
            lock_name(s, "actors", "roles")
            if _audit.has_admin(s) or s.get(ActorRow, self.actor) is not None:
                return None
            if _audit.effective_role(s, self.policy, self.actor) != "admin":
                return None
            s.add(ActorRow(name=self.actor, role="admin"))
            s.flush()
            self._audit(
                s, "actor.added", self.actor, {"role": "admin", "previous_role": None,
                                               "bootstrap": True}
            )  # fmt: skip
            return self.actor

    def list_actors(self) -> list[Actor]:
        with self._session("list actors") as s:
            return [to_actor(r) for r in s.scalars(select(ActorRow).order_by(ActorRow.name))]

    def role_of(self, name: str | None = None) -> Role:
        """The role ``name`` (default: the acting actor) has now."""
        with self._session("read a role") as s:
            return _audit.effective_role(s, self.policy, name or self.actor)

    def has_admin(self) -> bool:
        with self._session("read the actors") as s:
            return _audit.has_admin(s)


def check_limits(rpm_limit: int | None, tpm_limit: int | None) -> None:
    for name, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        if value is not None and value < 1:
            raise ConfigError(
                f"{name} is {value}; it must be at least 1 (or unset for the server's default)",
                field=name,
            )


def after_key(s: Session, key_id: str) -> ColumnElement[bool]:
    """The keys listed after ``key_id`` (by creation, then id): a page's next."""
    mark = s.execute(select(ApiKeyRow.created_at).where(ApiKeyRow.id == key_id)).first()
    if mark is None:
        raise ConfigError(f"no API key with id {key_id!r} to list the keys after", field="after")
    made = ApiKeyRow.created_at
    return or_(made > mark[0], and_(made == mark[0], ApiKeyRow.id > key_id))
