"""The console's single sign-on: a redirect to the identity provider and back.

``GET /oidc/login`` sends the browser to the issuer's authorization endpoint
(``access.OIDCLogin.begin``: code flow, PKCE S256, state and nonce) and keeps the
flow's secrets in a cookie of its own (``modelyard_sso``: HttpOnly, 10 minutes,
signed so the browser cannot alter it, with the key of the sessions' table: this
process's, or one kept in Redis for every replica, since the identity provider's
redirect back may reach another replica than the one the sign-in began at;
``SameSite=Lax`` because the identity provider's redirect back is a navigation
from another site, which a Strict cookie would not join).

``GET /oidc/callback`` checks that the ``state`` is the one in that cookie (so a
callback URL someone else started cannot log this browser in as them), exchanges
the code and checks the ID token (``OIDCLogin.finish``), then opens a session
exactly as a token login does: the same limiter, the same ``console.login``
audit event (with ``flow: authorization_code``), the browser's earlier session
ended. It answers a page that moves on to the console by script, not a redirect:
the session cookie is ``SameSite=Strict``, and a redirect that continues the
identity provider's cross-site navigation would arrive without it.

A failed sign-in goes back to the login page with a short error code
(``?error=sso_…``) that the page turns into a fixed sentence; the details are in
the server's log, never in the URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from modelyard.access import OIDCLogin, PendingLogin, Principal
from modelyard.console._limits import LoginLimiter
from modelyard.console._sessions import SESSION_COOKIE, ConsoleSessions
from modelyard.errors import (
    AuthError,
    IdentityProviderUnavailable,
    RateLimited,
    SessionsUnavailable,
)

log = logging.getLogger(__name__)

SSO_COOKIE = "modelyard_sso"
FLOW_TTL_S = 600
_IDP_ERROR = re.compile(r"[a-z_]{1,40}")  # OAuth error codes (RFC 6749 §4.1.2.1)

SetCookie = Callable[..., None]
Audit = Callable[[Principal, str, dict[str, Any]], None]


class FlowCookie:
    """A ``PendingLogin`` in a cookie: JSON, its expiry and an HMAC-SHA256 over both."""

    def __init__(self, key: Callable[[], bytes], clock: Callable[[], float] = time.time) -> None:
        """``key()``: the signing key (``SessionTable.flow_key``), asked at each use."""
        self._key = key
        self._clock = clock

    def dump(self, pending: PendingLogin) -> str:
        body = {
            "state": pending.state,
            "nonce": pending.nonce,
            "verifier": pending.code_verifier,
            "redirect": pending.redirect_url,
            "exp": int(self._clock()) + FLOW_TTL_S,
        }
        payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def load(self, value: str | None) -> PendingLogin | None:
        """The flow the cookie holds; None when absent, altered or older than 10 minutes."""
        if not value or value.count(".") != 1:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if int(body["exp"]) < self._clock():
                return None
            return PendingLogin(
                str(body["state"]), str(body["nonce"]), str(body["verifier"]), str(body["redirect"])
            )
        except (ValueError, KeyError, TypeError):
            return None

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key(), payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def add_sso_routes(
    app: FastAPI,
    login: OIDCLogin,
    sessions: ConsoleSessions,
    *,
    limiter: LoginLimiter,
    set_cookie: SetCookie,
    audit: Audit,
    login_path: str,
    signed_in_page: Path,
) -> None:
    """``GET /oidc/login`` and ``GET /oidc/callback`` on the console ``app``."""
    flows = FlowCookie(sessions.table.flow_key)

    def cookie_of(request: Request) -> str | None:
        return request.cookies.get(f"__Host-{SSO_COOKIE}" if sessions.secure else SSO_COOKIE)

    def back_to_login(request: Request, code: str, **extra: str) -> Response:
        query = "&".join(f"{k}={v}" for k, v in {"error": code, **extra}.items())
        response = RedirectResponse(f"{login_path}?{query}", status_code=303)
        set_cookie(request, response, SSO_COOKIE, "", max_age=0, samesite="lax")
        return response

    @app.get("/oidc/login", include_in_schema=False)
    def sso_login(request: Request) -> Response:
        try:
            callback = request.url.path.removesuffix("/login") + "/callback"
            url, pending = login.begin(str(request.url.replace(path=callback, query="")))
        except IdentityProviderUnavailable as exc:
            log.warning("console: single sign-on cannot start: %s", exc.message)
            return back_to_login(request, "sso_unavailable")
        response = RedirectResponse(url, status_code=303)
        try:
            flow = flows.dump(pending)
        except SessionsUnavailable:  # its signing key is in Redis, which cannot be reached
            return back_to_login(request, "sso_sessions_unavailable")
        set_cookie(request, response, SSO_COOKIE, flow, max_age=FLOW_TTL_S, samesite="lax")
        return response

    @app.get("/oidc/callback", include_in_schema=False)
    def sso_callback(request: Request) -> Response:
        try:
            return callback(request)
        except SessionsUnavailable as exc:  # Redis, where the sessions and flow key live
            log.warning("console: a sign-in could not finish: %s", exc.message)
            return back_to_login(request, "sso_sessions_unavailable")

    def callback(request: Request) -> Response:
        params = request.query_params
        address = request.client.host if request.client else "unknown"
        pending = flows.load(cookie_of(request))
        error = params.get("error")
        if error is not None:  # the identity provider did not sign the person in
            log.warning("console: sign-in refused by the identity provider for %s: %s %s",
                        address, error[:40], params.get("error_description", "")[:200])  # fmt: skip
            if error == "access_denied":
                return back_to_login(request, "sso_denied")
            return back_to_login(
                request, "sso_idp_error", idp=error if _IDP_ERROR.fullmatch(error) else "other"
            )
        try:
            limiter.check(address)
        except RateLimited:
            return back_to_login(request, "sso_limited")
        state, code = params.get("state"), params.get("code")
        if (
            pending is None
            or not state
            or not hmac.compare_digest(state.encode(), pending.state.encode())
        ):  # not counted as a failed login: any page can send a browser here, by address
            log.warning("console: a sign-in callback from %s matched no sign-in this browser "
                        "started (expired, another tab, or not its own)", address)  # fmt: skip
            return back_to_login(request, "sso_state")
        if not code:
            return back_to_login(request, "sso_idp_error", idp="no_code")
        try:
            signed = login.finish(pending, code)
            session_id, session, principal = sessions.start(
                signed.token, refresh_token=signed.refresh_token, id_token=signed.id_token
            )
        except IdentityProviderUnavailable as exc:
            log.warning("console: single sign-on for %s failed: %s", address, exc.message)
            return back_to_login(request, "sso_unavailable")
        except AuthError as exc:
            limiter.failed(address)
            log.warning("console: single sign-on for %s refused: %s", address, exc.one_line())
            return back_to_login(request, "sso_refused")
        carried = request.cookies.get(sessions.cookie_name)
        replaced = sessions.end(carried) if carried else None
        details: dict[str, Any] = {
            "session": session.short_id, "client": address, "token_id": principal.token_id,
            "flow": "authorization_code", "session_token": signed.which,
        }  # fmt: skip
        if replaced is not None:
            details["replaced_session"] = replaced.short_id
        audit(principal, "console.login", details)
        response = FileResponse(signed_in_page, media_type="text/html")
        set_cookie(request, response, SESSION_COOKIE, session_id)
        set_cookie(request, response, SSO_COOKIE, "", max_age=0, samesite="lax")
        return response


__all__ = ["FLOW_TTL_S", "SSO_COOKIE", "FlowCookie", "add_sso_routes"]
