"""Errors as HTTP responses: every one in OpenAI's error body, its status from the table.

The status and OpenAI ``type`` of a ``ModelyardError`` come from
``modelyard.errors.status_of``; request validation errors are 400s and
Starlette's own (404 for an unknown path, 405) keep their status.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.errors import (
    BudgetExceeded,
    EndpointNotFound,
    EngineOverloaded,
    ModelyardError,
    RateLimited,
    StoreError,
    StoreUnavailable,
    TooManyBatches,
    UpstreamBusy,
    UpstreamError,
    status_of,
)
from modelyard.serving._request_id import request_id_of
from modelyard.serving._types import ClientGone

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


def public_message(exc: ModelyardError) -> str:
    """What a client of the API is told of ``exc``: its ``public`` text where it has one
    (an upstream's failure: its message names the upstream's host and where the key comes
    from, which are the operator's), else its message and hint. A store error says nothing
    of the store (its host, database, settings). The rest is for the server's log."""
    if isinstance(exc, StoreError):
        return STORE_TROUBLE
    public = exc.context.get("public")
    return public if isinstance(public, str) else exc.one_line()


def error_of(exc: ModelyardError) -> Any:
    """The OpenAI error body of ``exc``, with its ``public_message``."""
    message = public_message(exc)
    # OpenAI's code for a name the key cannot call; clients and gateways match on it
    code = "model_not_found" if isinstance(exc, EndpointNotFound) else exc.code
    return error_body(message, status_of(exc).type, code, param_of(exc))


_JSON_HINT = "send one JSON object with 'Content-Type: application/json'"


def body_problem(errors: Sequence[Any], content_type: str | None) -> str | None:
    """What is wrong with a request body that is not a JSON object at all (not JSON, empty,
    sent as another content type, an array): None when the body is one (its fields are
    then what failed)."""
    for error in errors:
        loc, kind = tuple(error.get("loc", ())), error.get("type")
        if kind == "json_invalid":
            why = (error.get("ctx") or {}).get("error") or "JSON decode error"
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            return f"the request body is not valid JSON ({why}{at}); {_JSON_HINT}"
        if loc != ("body",):
            continue
        if isinstance(error.get("input"), bytes | bytearray) or kind == "missing":
            if content_type and "json" not in content_type.lower():
                return (
                    f"the request body was sent as {content_type.split(';')[0]!r}, not JSON; "
                    f"{_JSON_HINT}"
                )
            if not content_type:
                return f"the request has no Content-Type; {_JSON_HINT}"
            if kind == "missing" or not error.get("input"):
                return f"the request body is empty; {_JSON_HINT}"
            return f"the request body is not a JSON object; {_JSON_HINT}"
        if kind in ("model_attributes_type", "dict_type", "model_type"):
            sent = type(error.get("input")).__name__
            what = {"list": "an array", "str": "a string", "NoneType": "null"}.get(sent, sent)
            return f"the request body is {what}, not a JSON object; {_JSON_HINT}"
    return None


_TYPE_ERRORS = frozenset(
    {"int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type"}
)


def _json_kind(value: Any) -> str:
    """How a JSON value of the wrong type reads in a message: ``a string ("5")``."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a value"
    )
    shown = json.dumps(value) if isinstance(value, bool | int | float | str) else ""
    return f"{kind} ({shown})" if shown and len(shown) <= 40 else kind


def _field_path(error: Any) -> list[str]:
    """Where in the body an error is, without pydantic's names of a union's alternatives
    (``str``, ``list[TextPart]``): ``["messages", "0", "content", "0", "text"]``."""
    return (
        [str(p) for p in error.get("loc", ()) if p != "body" and not re.search(r"[\[(]", str(p))]
        if isinstance(error.get("loc"), tuple | list)
        else []
    )


def validation_message(errors: Sequence[Any]) -> tuple[str | None, str]:
    """The parameter (a dotted path, e.g. ``messages.0.content``) and the message of a
    request body that failed validation: our own checks' messages first (a field with
    several accepted types fails once per type; the check that says why is the one)."""
    if not errors:
        return None, "invalid request"
    first = next((e for e in errors if e.get("type") == "value_error"), None)
    if first is None:  # a field of several types: the alternative that got furthest says why
        first = max(errors, key=lambda e: len(_field_path(e)))
    param = ".".join(_field_path(first)) or None
    if first.get("type") == "extra_forbidden":
        return param, (
            f"invalid request: {param} is not a parameter this server accepts; remove it "
            "(docs/serving.md lists what is accepted)"
        )
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") in _TYPE_ERRORS and "input" in first:  # what was sent instead
        msg = f"{msg}, not {_json_kind(first['input'])}"
    if first.get("type") in ("too_long", "too_short") and isinstance(first.get("input"), str):
        # a text checked after validation (Text) reads as "items" in pydantic's words
        bound = (first.get("ctx") or {}).get(
            "max_length" if first["type"] == "too_long" else "min_length"
        )
        most = "at most" if first["type"] == "too_long" else "at least"
        msg = f"should have {most} {bound} characters, not {len(first['input'])}"
    if first.get("type") == "string_unicode":  # a lone surrogate, found by pydantic's core
        msg = "the text holds a lone surrogate, which is not valid Unicode; send UTF-8 text"
    return param, f"invalid request: {param + ': ' if param else ''}{msg}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the OpenAI error body; client mistakes are 4xx, never 500."""

    @app.exception_handler(ModelyardError)
    async def modelyard_error(req: Request, exc: ModelyardError) -> JSONResponse:
        found = status_of(exc)
        status = found.http_status
        if status >= 500 and not isinstance(exc, UpstreamError):  # the client logged those
            log.error("request %s failed: %s", request_id_of(req), exc.one_line())
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
            if exc.never_fits:  # larger than the limit itself: waiting changes nothing
                headers["x-should-retry"] = "false"
        elif isinstance(exc.context.get("retry_after"), int):  # an upstream's, passed on
            headers = {"Retry-After": str(exc.context["retry_after"])}
            if isinstance(exc, BudgetExceeded):  # the openai SDK honours it: no retry storm
                headers["x-should-retry"] = "false"
        elif isinstance(exc, EngineOverloaded | StoreUnavailable | UpstreamBusy):
            headers = {"Retry-After": "1"}
        elif isinstance(exc, TooManyBatches):  # room comes when a batch ends, not in seconds
            headers = {"x-should-retry": "false"}
        return JSONResponse(
            error_of(exc),
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(req: Request, exc: Exception) -> JSONResponse:
        # a bug: OpenAI's 500 body (the SDKs read its type), never Starlette's plain text;
        # the traceback is logged by the server (Starlette raises the exception on)
        rid = request_id_of(req)
        log.error("request %s failed: %s: %s", rid, type(exc).__name__, exc)
        return JSONResponse(
            error_body(
                f"the server failed on this request ({rid}); the operator finds the details "
                "in the server's log",
                "server_error",
                "server_error",
            ),
            status_code=500,
            headers={"x-request-id": rid},  # answered outside RequestIdMiddleware
        )

    @app.exception_handler(ClientGone)
    async def client_gone(_req: Request, _exc: ClientGone) -> Response:
        # nobody reads it (the connection is closed); 499 is nginx's "client closed request"
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(req: Request, exc: RequestValidationError) -> JSONResponse:
        problem = body_problem(exc.errors(), req.headers.get("content-type"))
        param, message = (None, problem) if problem else validation_message(exc.errors())
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        unparsable = exc.status_code == 400 and exc.detail == "There was an error parsing the body"
        return JSONResponse(
            error_body(
                http_message(req, exc),
                "invalid_request_error",
                "invalid_request" if unparsable else None,
            ),
            status_code=exc.status_code,
            headers=exc.headers,
        )


def http_message(req: Request, exc: StarletteHTTPException) -> str:
    """The message of Starlette's own errors, saying what to do: an unknown route (OpenAI
    words it ``Invalid URL (POST /v1/...)``), a method the route does not take, a body that
    is not UTF-8."""
    where = f"{req.method} {req.url.path}"
    if exc.status_code == 404 and exc.detail == "Not Found":
        path = req.url.path.rstrip("/")
        served = served_routes(req.app)
        if not path.startswith("/v1/") and any(r.startswith("/v1" + path) for r in served):
            return (  # an OpenAI client whose base_url lacks /v1: say so, first
                f"Invalid URL ({where}): this server serves it as /v1{path}. An OpenAI "
                "client's base_url ends in /v1, e.g. http://HOST:PORT/v1"
            )
        return (
            f"Invalid URL ({where}): this server has no such route. It serves "
            f"{', '.join(served)}; embeddings, images, audio, fine-tuning and "
            "other routes are not served (docs/serving.md, compatibility with the OpenAI API)"
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        return f"{req.method} is not allowed on {req.url.path}" + (
            f"; use {allowed}" if allowed else ""
        )
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return f"the request body could not be read: {_unparsable(exc.__cause__)}; {_JSON_HINT}"
    return str(exc.detail)


def _unparsable(cause: BaseException | None) -> str:
    """Why a body that is JSON text could not be parsed (FastAPI says only that it failed)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "its JSON is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "it holds an integer too long to read (more than 4300 digits)"
    return "it must be UTF-8 JSON"


def served_routes(app: Any) -> list[str]:
    """The API's resources this app serves (``/v1/files`` and ``/v1/batches`` only where it
    keeps files), in the order they were added: each route's path up to its first parameter."""
    found: list[str] = []
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path", "")
        if not path.startswith("/v1/"):
            continue
        resource = path.split("/{", 1)[0]
        if resource not in found:
            found.append(resource)
    return found


__all__ = [
    "body_problem",
    "error_body",
    "error_of",
    "http_message",
    "install_error_handlers",
    "param_of",
    "public_message",
    "served_routes",
    "validation_message",
]
