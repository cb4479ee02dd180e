"""Audit routes: the log with filters, the chain's verification, its export for auditors,
and who is calling."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from modelyard.admin._auth import Acting
from modelyard.admin._encode import jsonable
from modelyard.admin._params import utc
from modelyard.audit import (
    AuditEvent,
    AuditHead,
    write_events,
)
from modelyard.errors import ConfigError

router = APIRouter(tags=["audit"])

EXPORT_PAGE = 1000  # events per chunk of an export
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


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
    exclude_action: list[str] = Query(
        [], max_length=20, description="Leave out this action, or 'records.*' for a prefix."
    ),
    limit: int = Query(50, ge=1, le=1000),
    before: int | None = Query(
        None,
        ge=1,
        le=2**63 - 1,  # a sequence number is a 64-bit integer in every store
        description="Only events older than this seq: the next page is the one "
        "before the last seq of this one.",
    ),
) -> list[dict[str, Any]]:
    events = caller.store.list_audit_events(
        since=utc(since, "since"), action=action, subject=subject, actor=actor, limit=limit,
        before_seq=before, exclude_actions=exclude_action,
    )  # fmt: skip
    return [jsonable(e) for e in events]


@router.get("/audit/verify", summary="Recompute the whole chain (a break found is recorded)")
def audit_verify(
    caller: Acting,
    head: str | None = Query(None, max_length=200, description="SEQ:HASH kept outside the store."),
) -> dict[str, Any]:
    """A break the chain itself shows is recorded, whoever asks. A break that only the
    caller's ``head`` shows is recorded for an admin only: for anyone else it is reported
    and not recorded, so that nobody with a read token can stop every audited change with
    a made-up head (a recorded break refuses them until an admin acknowledges it)."""
    try:
        expected = None if head is None else AuditHead.parse(head)
    except ConfigError as exc:  # a malformed head: name the parameter
        raise ConfigError(exc.message, hint=exc.hint, field="head") from None
    return jsonable(caller.store.verify_audit_chain(expected))  # type: ignore[no-any-return]


def _chunks(
    first: list[AuditEvent], rest: Iterator[AuditEvent], fmt: Literal["jsonl", "csv"]
) -> Iterator[str]:
    """``write_events``' output, a page of events at a time (a CSV's header once)."""
    page, header = first, True
    while header or page:
        buffer = io.StringIO()
        write_events(page, fmt, buffer)
        text = buffer.getvalue()
        yield text if header or fmt == "jsonl" else text.partition("\n")[2]
        header = False
        page = list(islice(rest, EXPORT_PAGE))


@router.get(
    "/audit/export",
    summary="Export events with their hashes for auditors, as modelyard audit export",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                     "description": "JSON Lines (one event a line) or CSV"}},
)  # fmt: skip
def audit_export(
    caller: Acting,
    format: Literal["jsonl", "csv"] = Query("jsonl", description="jsonl or csv."),
    since: datetime | None = Query(None, description="Only events at or after this time."),
) -> StreamingResponse:
    events = caller.store.iter_audit_events(since=utc(since, "since"), page=EXPORT_PAGE)
    first = list(islice(events, EXPORT_PAGE))  # a store that fails, fails before the 200
    return StreamingResponse(
        _chunks(first, events, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="audit.{format}"'},
    )


__all__ = ["router"]
