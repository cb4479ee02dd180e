"""Errors as HTTP responses: every one in OpenAI's error body, its status from the table.

The status and OpenAI ``type`` of a ``ModelyardError`` come from
``modelyard.errors.status_of``; request validation errors are 400s and
Starlette's own (404 for an unknown path, 405) keep their status.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.errors import (
    BudgetExceeded,
    EngineOverloaded,
    ModelyardError,
    RateLimited,
    StoreError,
    StoreUnavailable,
    UpstreamBusy,
    status_of,
)

log = logging.getLogger(__name__)


def param_of(exc: ModelyardError) -> str | None:
    """The request parameter an error is about (OpenAI's ``param``), when it names one."""
    param = exc.context.get("param")
    return param if isinstance(param, str) else None


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    """OpenAI's error body: ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


STORE_TROUBLE = (
    "the server cannot use its store right now. Try again shortly; the operator finds "
    "the details in the server's log"
)


def error_of(exc: ModelyardError) -> Any:
    """The OpenAI error body of ``exc``. A store error says nothing of the store (its host,
    database, settings) to the caller: that is for the server's log."""
    message = STORE_TROUBLE if isinstance(exc, StoreError) else exc.one_line()
    return error_body(message, status_of(exc).type, exc.code, param_of(exc))


def validation_message(errors: Sequence[Any]) -> tuple[str | None, str]:
    """The parameter (a dotted path, e.g. ``messages.0.content``) and the message of a
    request body that failed validation: our own checks' messages first (a field with
    several accepted types fails once per type; the check that says why is the one)."""
    if not errors:
        return None, "invalid request"
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    # pydantic names the alternatives of a union in the path ("list[str]"): not a field
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not re.search(r"[\[(]", str(p))]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return param, (
            f"invalid request: {param} is not a parameter this server accepts; remove it "
            "(docs/serving.md lists what is accepted)"
        )
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") == "string_unicode":  # a lone surrogate, found by pydantic's core
        msg = "the text holds a lone surrogate, which is not valid Unicode; send UTF-8 text"
    return param, f"invalid request: {param + ': ' if param else ''}{msg}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the OpenAI error body; client mistakes are 4xx, never 500."""

    @app.exception_handler(ModelyardError)
    async def modelyard_error(_req: Request, exc: ModelyardError) -> JSONResponse:
        found = status_of(exc)
        status = found.http_status
        if status >= 500:
            log.error("request failed: %s", exc.one_line())
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc.context.get("retry_after"), int):  # an upstream's, passed on
            headers = {"Retry-After": str(exc.context["retry_after"])}
            if isinstance(exc, BudgetExceeded):  # the openai SDK honours it: no retry storm
                headers["x-should-retry"] = "false"
        elif isinstance(exc, EngineOverloaded | StoreUnavailable | UpstreamBusy):
            headers = {"Retry-After": "1"}
        return JSONResponse(
            error_of(exc),
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        param, message = validation_message(exc.errors())
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code
        )


__all__ = [
    "error_body",
    "error_of",
    "install_error_handlers",
    "param_of",
    "validation_message",
]
