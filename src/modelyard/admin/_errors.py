"""Errors of the admin API in the OpenAI error body the data plane uses.

``{"error": {"message", "type", "code", "param"}}``, the status and ``type`` from
``modelyard.errors.status_of`` (looked up along the class's MRO), so a refusal
reads the same on ``/v1`` and ``/admin/v1``. A store error says nothing of the
store to the caller; the server's log has it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.errors import ModelyardError, StoreError, status_of

log = logging.getLogger(__name__)

STORE_TROUBLE = "the server cannot use its store right now; the server's log has the details"


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "invalid request"),
        (401, "no token, or not a valid person's token (tenants' API keys are refused)"),
        (403, "the token's scope or the actor's role does not allow it (audited)"),
        (404, "no such model, version, endpoint or rollout"),
        (409, "a conflict with the current state"),
    )
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelyardError)
    async def modelyard_error(_req: Request, exc: ModelyardError) -> JSONResponse:
        found = status_of(exc)
        if found.http_status >= 500:
            log.error("admin request failed: %s", exc.one_line())
        message = STORE_TROUBLE if isinstance(exc, StoreError) else exc.one_line()
        param = exc.context.get("field") or exc.context.get("param")
        headers = {"WWW-Authenticate": "Bearer"} if found.http_status == 401 else {}
        retry = exc.context.get("retry_after")
        if isinstance(retry, int):  # a 503 that passes (shared sessions while Redis is down)
            headers["Retry-After"] = str(retry)
        return JSONResponse(
            error_body(message, found.type, exc.code, param if isinstance(param, str) else None),
            status_code=found.http_status,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = tuple(first.get("loc", ()))
        loc = [str(p) for p in where if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        message = f"invalid request: {param + ': ' if param else ''}{msg}"
        if first.get("type") == "json_invalid":  # loc is ("body", offset): not a field
            why = (first.get("ctx") or {}).get("error", "not JSON")
            message = (
                f"the body is not valid JSON ({why} at character {where[-1]}): send a JSON "
                "object with Content-Type: application/json"
            )
            param = "body"
        elif where == ("body",):  # JSON, but not an object, or not sent as JSON
            message = (
                "the body must be a JSON object sent with Content-Type: application/json "
                f"({msg[:1].lower() + msg[1:]})"
            )
            param = "body"
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # a path with no route, or not for this method: say which, as the console does
        where = f"{req.method} {req.url.path}"
        if exc.status_code == 404:
            message = f"no admin API route {where} (/admin/v1/openapi.json lists them)"
            code = "unknown_route"  # not NotFound's not_found: no route, not no object
        elif exc.status_code == 405:
            message, code = f"{req.url.path} does not take {req.method}", "method_not_allowed"
        else:
            message, code = f"{exc.detail} ({where})", None
        return JSONResponse(
            error_body(message, "invalid_request_error", code),
            status_code=exc.status_code,
            headers=exc.headers,
        )


__all__ = ["ERROR_RESPONSES", "ErrorBody", "error_body", "install_error_handlers"]
