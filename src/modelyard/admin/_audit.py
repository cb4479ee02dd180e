"""Audit routes: the log with filters, the chain's verification, and who is calling."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from modelyard.admin._auth import Acting
from modelyard.admin._encode import jsonable

router = APIRouter(tags=["audit"])


@router.get("/whoami", summary="The authenticated actor, its role and the token's scopes")
def whoami(caller: Acting) -> dict[str, Any]:
    p = caller.principal
    return {
        "actor": p.actor,
        "role": caller.store.role_of(),
        "via": p.via,
        "scopes": list(p.scopes),
        "token_id": p.token_id,
    }


@router.get("/audit/events", summary="Audit events, newest first")
def audit_events(
    caller: Acting,
    since: datetime | None = Query(None, description="Only events at or after this time."),
    action: str | None = Query(None, max_length=200, description="e.g. alias.set or 'alias.*'."),
    subject: str | None = Query(None, max_length=300, description="A trailing * is a prefix."),
    actor: str | None = Query(None, max_length=200, description="Only this actor's events."),
    limit: int = Query(50, ge=1, le=1000),
) -> list[dict[str, Any]]:
    events = caller.store.list_audit_events(
        since=since, action=action, subject=subject, actor=actor, limit=limit
    )
    return [jsonable(e) for e in events]


@router.get("/audit/verify", summary="Recompute the whole chain (a break found is recorded)")
def audit_verify(
    caller: Acting,
    head: str | None = Query(None, max_length=200, description="SEQ:HASH kept outside the store."),
) -> dict[str, Any]:
    return jsonable(caller.store.verify_audit_chain(head))  # type: ignore[no-any-return]


__all__ = ["router"]
