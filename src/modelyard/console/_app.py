"""The console app, mounted at ``/console``: its pages, static files, login and logout.

The pages are static files (HTML, CSS and JavaScript modules under ``static/``,
no inline script or style) that read and change everything through the admin API
(``/admin/v1``) with the session cookie this app sets at login; the admin API
checks the role and audits as it does for a bearer token. This app only opens
and closes sessions:

- ``GET /api/login``: a login CSRF token, also set in a short-lived cookie
  (double submit: a page of another site can neither read it nor send the header);
- ``POST /api/login`` ``{"token"}`` (JSON, with that token in ``X-CSRF-Token``):
  rate-limited per client address (``LoginLimiter``); sets the session cookie
  (HttpOnly, SameSite=Strict, Secure over TLS) and audits ``console.login``;
- ``GET /api/session``: who is logged in and the session's CSRF token, for the
  page's script (same origin only: no CORS);
- ``POST /api/logout`` (with the CSRF token): ends the session, audited; after a
  single sign-on, the answer names the identity provider's logout to go to;
- with single sign-on configured, ``GET /oidc/login`` and ``GET /oidc/callback``
  (``_sso``): the identity provider's login page and the way back.

Every answer carries a strict Content-Security-Policy and the other headers of
``SECURITY_HEADERS``.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import modelyard
from modelyard.access import OIDCLogin, Principal
from modelyard.admin import ADMIN_PREFIX, store_for
from modelyard.console._limits import LoginLimiter
from modelyard.console._sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    ConsoleSessions,
    CSRFRejected,
    Session,
    csrf_matches,
)
from modelyard.console._sso import add_sso_routes
from modelyard.errors import (
    AuthError,
    ConfigError,
    ModelyardError,
    SessionsUnavailable,
    status_of,
)
from modelyard.store import Store

log = logging.getLogger(__name__)

CONSOLE_PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
LOGIN_COOKIE = "modelyard_login"
MAX_TOKEN_CHARS = 16_384  # an OIDC token with many groups is a few kB

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` (and HSTS over TLS) to every answer of the console."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        headers = dict(SECURITY_HEADERS)
        if hsts:
            headers["strict-transport-security"] = "max-age=31536000"
        self.headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _error(exc: ModelyardError) -> JSONResponse:
    found = status_of(exc)
    retry = exc.context.get("retry_after")
    headers = {"Retry-After": str(retry)} if isinstance(retry, int) else None
    param = exc.context.get("field")
    body = {"error": {"message": exc.one_line(), "type": found.type, "code": exc.code,
                      "param": param if isinstance(param, str) else None}}  # fmt: skip
    return JSONResponse(body, status_code=found.http_status, headers=headers)


def _route_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A path the console has no route for (404), or not for this method (405), in the
    error body of every other refusal, not FastAPI's ``{"detail": "Not Found"}``."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        kind = "console API route" if "/api/" in request.url.path else "console page"
        message, code = f"no {kind} {where}", "unknown_route"
    elif exc.status_code == 405:
        message, code = f"{request.url.path} does not take {request.method}", "method_not_allowed"
    else:
        message, code = f"{exc.detail} ({where})", None
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code,
                      "param": None}}  # fmt: skip
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_console_app(
    store: Store,
    sessions: ConsoleSessions,
    *,
    limiter: LoginLimiter | None = None,
    admin_prefix: str = ADMIN_PREFIX,
    oidc: bool = False,
    sso: OIDCLogin | None = None,
) -> ASGIApp:
    """The console, to mount at ``CONSOLE_PREFIX`` beside the admin API at ``admin_prefix``,
    which must share ``sessions`` (``create_admin_app(..., sessions=sessions)``).
    ``oidc``: the login form takes OIDC tokens; ``sso``: the login page offers single
    sign-on (``sessions`` then renews its tokens with ``refresh``)."""
    limiter = limiter or LoginLimiter()
    app = FastAPI(
        title="modelyard console", version=modelyard.__version__,
        docs_url=None, redoc_url=None, openapi_url=None,
    )  # fmt: skip

    @app.exception_handler(ModelyardError)
    async def modelyard_error(_req: Request, exc: ModelyardError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _route_error(request, exc)

    def set_cookie(
        request: Request, response: Response, name: str, value: str, *,
        samesite: Literal["strict", "lax"] = "strict", **kw: Any,
    ) -> None:  # fmt: skip
        secure = sessions.secure or request.url.scheme == "https"
        cookie = f"__Host-{name}" if sessions.secure else name
        response.set_cookie(
            cookie, value, path="/", secure=secure, httponly=True, samesite=samesite, **kw
        )

    def clear_cookie(request: Request, response: Response, name: str) -> None:
        set_cookie(request, response, name, "", max_age=0)

    def login_cookie(request: Request) -> str | None:
        return request.cookies.get(f"__Host-{LOGIN_COOKIE}" if sessions.secure else LOGIN_COOKIE)

    def session_of(request: Request) -> tuple[str, Session, Principal]:
        session_id = request.cookies.get(sessions.cookie_name)
        if not session_id:
            raise AuthError("not logged in to the console", hint="Log in at /console/login.")
        return (session_id, *sessions.find(session_id))

    def audit(principal: Principal, action: str, payload: dict[str, Any]) -> None:
        try:
            acting = store_for(store, principal)
            acting.record_audit_event(action, principal.actor, {"via": principal.via, **payload})
        except ModelyardError as exc:  # the login stands, though unrecorded
            log.error("console: could not record %s: %s", action, exc.one_line())

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        try:
            session_of(request)
        except AuthError:
            return RedirectResponse(f"{CONSOLE_PREFIX}/login", status_code=303)
        except SessionsUnavailable as exc:  # a page for a person, not the API's JSON
            wait = {"Retry-After": str(exc.context.get("retry_after", 1))}
            page = STATIC / "unavailable.html"
            return FileResponse(page, status_code=503, media_type="text/html", headers=wait)
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/login", include_in_schema=False)
    def login_page() -> Response:
        return FileResponse(STATIC / "login.html", media_type="text/html")

    @app.get("/api/login")
    def login_token(request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        offered = {"issuer": sso.issuer_host} if sso is not None else None
        response = JSONResponse({"csrf_token": token, "oidc": oidc, "sso": offered})
        set_cookie(request, response, LOGIN_COOKIE, token, max_age=600)
        return response

    @app.post("/api/login")
    async def login(request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":  # media types are case-insensitive (RFC 9110)
            raise ConfigError(
                f'a login is a JSON body {{"token": ...}} sent as application/json, not '
                f"{media or 'a body without Content-Type'}",
                field="content-type",
            )
        expected, sent = login_cookie(request), request.headers.get(CSRF_HEADER)
        if not expected or not sent or not secrets.compare_digest(expected.encode(), sent.encode()):
            raise CSRFRejected(f"a login needs the login page's token in {CSRF_HEADER}")
        address = _client(request)
        limiter.check(address)
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            body = None
        if not isinstance(body, dict):
            raise ConfigError('a login is a JSON object {"token": ...}', field="body")
        extra = sorted(set(body) - {"token"})
        if extra:  # e.g. an "actor": the actor is the token's, nobody names it
            raise ConfigError(
                f"unknown field {extra[0]!r}: a login takes only 'token' (the actor and the "
                "role are the token's)",
                field=extra[0],
            )
        token = body.get("token")
        if not isinstance(token, str) or not 0 < len(token.strip()) <= MAX_TOKEN_CHARS:
            raise ConfigError("send the token as a string in the field 'token'", field="token")
        try:
            session_id, session, principal = sessions.start(token.strip())
        except AuthError as exc:
            limiter.failed(address)
            log.warning("console: failed login from %s: %s", address, exc.message)
            raise
        # The session this browser had ends here: a login never leaves one alive behind it
        # (a person who logs in as someone else, or again, is no longer the one before).
        carried = request.cookies.get(sessions.cookie_name)
        replaced = sessions.end(carried) if carried else None
        details = {"session": session.short_id, "client": address, "token_id": principal.token_id}
        if replaced is not None:
            details["replaced_session"] = replaced.short_id
        audit(principal, "console.login", details)
        response = JSONResponse({"actor": principal.actor, "via": principal.via})
        set_cookie(request, response, SESSION_COOKIE, session_id)
        clear_cookie(request, response, LOGIN_COOKIE)
        return response

    @app.get("/api/session")
    def session_info(request: Request) -> dict[str, Any]:
        _, session, principal = session_of(request)
        return {
            "actor": principal.actor,
            "via": principal.via,
            "scopes": list(principal.scopes),
            "csrf_token": session.csrf_token,
            "admin_api": admin_prefix,
        }

    @app.post("/api/logout")
    def logout(request: Request) -> Response:
        session_id, session, principal = session_of(request)
        if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            raise CSRFRejected(f"a logout needs the session's CSRF token in {CSRF_HEADER}")
        sessions.end(session_id)
        audit(principal, "console.logout", {"session": session.short_id})
        # A single sign-on session: the identity provider's own logout, back to the login
        # page (RP-Initiated Logout; the page goes there once this answer says "ended").
        after = str(request.url.replace(path=f"{CONSOLE_PREFIX}/login", query=""))
        elsewhere = sso.logout_url(session.id_token, after) if sso and session.id_token else None
        response = JSONResponse({"ended": True, "sso_logout": elsewhere})
        clear_cookie(request, response, SESSION_COOKIE)
        return response

    if sso is not None:
        add_sso_routes(
            app, sso, sessions, limiter=limiter, set_cookie=set_cookie, audit=audit,
            login_path=f"{CONSOLE_PREFIX}/login", signed_in_page=STATIC / "signed-in.html",
        )  # fmt: skip
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return SecurityHeaders(app, hsts=sessions.secure)


__all__ = ["CONSOLE_PREFIX", "CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "create_console_app"]
