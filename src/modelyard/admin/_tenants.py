"""Tenant and API key routes: tenants with their storage policy, retention and budgets;
keys created (the secret shown once), listed (never a secret or its hash), revoked,
rotated, and their rate limits. Changes call the ``access`` and store functions the
CLI's ``tenants``, ``keys`` and ``budgets`` commands call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from modelyard.access import create_api_key, rotate_api_key
from modelyard.admin._auth import Acting
from modelyard.admin._encode import jsonable
from modelyard.admin._params import duration, page_after, page_limit, utc
from modelyard.errors import NotFound
from modelyard.store import (
    DEFAULT_STORAGE_POLICY,
    ApiKey,
    Budget,
    StoragePolicy,
    Store,
    Tenant,
)

router = APIRouter(tags=["tenants and keys"])

TenantName = Path(description="The tenant's name.", max_length=100)
KeyId = Path(description="The key's id (not its secret).", max_length=64)
TENANT_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # store.check_name's rule
KEY_LIFETIME = timedelta(days=10 * 366)
Scope = Literal["infer", "feedback"]
SCOPES: tuple[Scope, ...] = ("infer", "feedback")  # access.SCOPES


class TenantBody(BaseModel):
    """A tenant to create (audited: ``tenant.created``; role admin)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=TENANT_NAME, description="Lowercase letters, digits, '.', '_', '-'.")
    storage_policy: StoragePolicy = Field(
        default=DEFAULT_STORAGE_POLICY,
        description="What inference records keep of prompts and responses (redacted: "
        "personal data masked).",
    )


class KeyBody(BaseModel):
    """A key to create for the tenant (audited: ``api_key.created``); its secret is in the
    answer only."""

    model_config = ConfigDict(extra="forbid", strict=True)
    scopes: list[Scope] = Field(
        default_factory=lambda: list(SCOPES), min_length=1, max_length=2,
        description="What the key may do: infer, feedback.",
    )  # fmt: skip
    expires_in: str | None = Field(
        default=None, max_length=40, description="Lifetime such as 90d or 12h; none: never."
    )
    rpm_limit: int | None = Field(
        default=None, ge=1, le=10**9, description="Requests/min; none: the server's default."
    )
    tpm_limit: int | None = Field(
        default=None, ge=1, le=10**9, description="Tokens/min; none: the server's default."
    )


class RotateBody(BaseModel):
    """How to replace the key: the old one keeps working for ``grace``, then expires."""

    model_config = ConfigDict(extra="forbid", strict=True)
    grace: str = Field(default="24h", max_length=40, description="Such as 24h, 7d, or 0.")
    expires_in: str | None = Field(
        default=None, max_length=40, description="The new key's lifetime; none: the old one's."
    )


class LimitsBody(BaseModel):
    """New rate limits; a field left out stays, ``null`` is the server's default."""

    model_config = ConfigDict(extra="forbid", strict=True)
    rpm_limit: int | None = Field(default=None, ge=1, le=10**9)
    tpm_limit: int | None = Field(default=None, ge=1, le=10**9)


def key_json(key: ApiKey, now: datetime | None = None) -> dict[str, Any]:
    """A key as ``keys list --json`` shows it (never its hash), and its state now."""
    out: dict[str, Any] = {k: v for k, v in jsonable(key).items() if k != "key_hash"}
    out["state"] = _state(key, now or datetime.now(UTC))
    return out


def _state(key: ApiKey, now: datetime) -> str:
    expired = key.expires_at is not None and key.expires_at <= now
    return "revoked" if key.revoked_at else "expired" if expired else "active"


def _tenants_json(
    store: Store, tenants: list[Tenant], keys: list[ApiKey], budgets: list[Budget], now: datetime
) -> list[dict[str, Any]]:
    """``tenants`` with their retention, key counts and budgets (``keys`` and ``budgets``
    may hold other tenants'): the retention policies read once, each key looked at once,
    the budgets' statuses read together (``budget_statuses``: a fixed few queries)."""
    retention = {p.tenant: p.raw_days for p in store.list_retention()}
    counts: dict[str, list[int]] = {t.name: [0, 0] for t in tenants}  # active, total
    for k in keys:
        if k.tenant in counts:
            counts[k.tenant][0] += _state(k, now) == "active"
            counts[k.tenant][1] += 1
    statuses: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tenants}
    mine = [b for b in budgets if b.tenant in statuses]
    for status in store.budget_statuses(mine, now):
        statuses[status["tenant"]].append(status)
    return [
        {
            **jsonable(t),
            "retention_days": retention.get(t.name),
            "keys": {"active": counts[t.name][0], "total": counts[t.name][1]},
            "budgets": statuses[t.name],
        }
        for t in tenants
    ]


@router.get("/tenants", summary="List tenants with storage policy, retention and budgets")
def list_tenants(
    caller: Acting,
    limit: int = page_limit("tenants"),
    after: str | None = page_after("tenants", "name"),
) -> list[dict[str, Any]]:
    """The first ``limit`` tenants by name (named after ``after``)."""
    store, now = caller.store, datetime.now(UTC)
    tenants = store.list_tenants(limit=limit, after=after)
    if not tenants:
        return []
    names = [t.name for t in tenants]  # the page's keys and budgets only
    keys, budgets = store.list_api_keys(tenants=names), store.list_budgets(tenants=names)
    return _tenants_json(store, tenants, keys, budgets, now)


@router.get("/tenants/{tenant}", summary="Show a tenant, its keys (no secrets) and budgets")
def show_tenant(caller: Acting, tenant: str = TenantName) -> dict[str, Any]:
    store, now = caller.store, datetime.now(UTC)
    found = store.get_tenant(tenant)
    keys = store.list_api_keys(tenant)
    out = _tenants_json(store, [found], keys, store.list_budgets(tenant), now)[0]
    out["key_list"] = [key_json(k, now) for k in keys]
    return out


@router.post("/tenants", summary="Create a tenant (audited)", status_code=201)
def create_tenant(body: TenantBody, caller: Acting) -> dict[str, Any]:
    made = caller.store.create_tenant(body.name, storage_policy=body.storage_policy)
    return jsonable(made)  # type: ignore[no-any-return]


@router.get("/keys", summary="List API keys (never their secrets)")
def list_keys(
    caller: Acting,
    tenant: str | None = Query(None, max_length=100, description="Only this tenant's keys."),
    limit: int = page_limit("keys"),
    after: str | None = page_after("keys (oldest first)", "key id"),
) -> list[dict[str, Any]]:
    """The first ``limit`` keys, oldest first (made after the key ``after``)."""
    if tenant is not None:
        caller.store.get_tenant(tenant)  # a misspelt tenant is a 404, not "no keys"
    now = datetime.now(UTC)
    return [key_json(k, now) for k in caller.store.list_api_keys(tenant, limit=limit, after=after)]


@router.post(
    "/tenants/{tenant}/keys",
    summary="Create an API key; the secret is in this answer only (audited)",
    status_code=201,
)
def create_key(body: KeyBody, caller: Acting, tenant: str = TenantName) -> dict[str, Any]:
    lifetime = (
        duration(body.expires_in, "expires_in", most=KEY_LIFETIME) if body.expires_in else None
    )
    key, secret = create_api_key(
        caller.store, tenant, scopes=body.scopes, expires_in=lifetime,
        rpm_limit=body.rpm_limit, tpm_limit=body.tpm_limit,
    )  # fmt: skip
    return {**key_json(key), "key": secret}


@router.post(
    "/keys/{key_id}/revoke",
    summary="Revoke an API key (audited); a key revoked before is left as it is, and "
    "already_revoked says so",
)
def revoke_key(caller: Acting, key_id: str = KeyId) -> dict[str, Any]:
    # a no-op (not audited) when revoked before, or by a revocation at the same time
    key, revoked = caller.store.revoke_api_key_once(key_id)
    return {**key_json(key), "already_revoked": not revoked}


@router.post(
    "/keys/{key_id}/rotate",
    summary="Replace an API key by a new one, shown once; the old one works for the grace "
    "period (audited)",
    status_code=201,
)
def rotate_key(
    caller: Acting, key_id: str = KeyId, body: RotateBody | None = None
) -> dict[str, Any]:
    body = body or RotateBody()
    grace = duration(body.grace, "grace", allow_zero=True)
    lifetime = (
        duration(body.expires_in, "expires_in", most=KEY_LIFETIME) if body.expires_in else None
    )
    key, secret = rotate_api_key(caller.store, key_id, grace, expires_in=lifetime)
    old = caller.store.get_api_key(key_id)
    return {
        **key_json(key),
        "key": secret,
        "rotated_from": key_id,
        "old_expires_at": jsonable(old.expires_at) if old else None,
    }


@router.patch("/keys/{key_id}/limits", summary="Change an API key's rate limits (audited)")
def set_limits(body: LimitsBody, caller: Acting, key_id: str = KeyId) -> dict[str, Any]:
    key = caller.store.get_api_key(key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}", hint="See GET /keys.")
    given = body.model_fields_set
    changed = caller.store.set_api_key_limits(
        key_id,
        rpm_limit=body.rpm_limit if "rpm_limit" in given else key.rpm_limit,
        tpm_limit=body.tpm_limit if "tpm_limit" in given else key.tpm_limit,
    )
    return key_json(changed)


@router.get("/budgets", summary="Budgets with what was spent in their current period")
def list_budgets(
    caller: Acting, tenant: str | None = Query(None, max_length=100)
) -> list[dict[str, Any]]:
    if tenant is not None:
        caller.store.get_tenant(tenant)  # a misspelt tenant is a 404, not "no budgets"
    return caller.store.budget_statuses(caller.store.list_budgets(tenant), datetime.now(UTC))


@router.get("/usage", summary="Token usage and what it cost, by day, tenant, key or version")
def read_usage(
    caller: Acting,
    since: datetime | None = Query(
        None, description="From this UTC day (default: the month's first)."
    ),
    until: datetime | None = Query(None, description="Before this UTC day (default: up to now)."),
    tenant: str | None = Query(None, max_length=100),
    by: str = Query(
        "day", max_length=100, description="Comma-separated: day, tenant, key, version."
    ),
) -> list[dict[str, Any]]:
    """The users' requests and tokens (shadow copies, no user's, and requests still running
    not counted), and their cost at today's token prices: what budgets count as spent,
    read from the usage kept per day."""
    start = utc(since, "since") or datetime.now(UTC).replace(day=1)
    groups = [b.strip() for b in by.split(",") if b.strip()]
    return caller.store.usage(since=start, until=utc(until, "until"), tenant=tenant, by=groups)


__all__ = ["key_json", "router"]
