"""Who is calling, and the store that acts as them for this one request.

``acting`` is the FastAPI dependency of every admin route: it authenticates the
``Authorization`` header (``access.PeopleAuthenticator``: 401 without a valid
person's token) or, without that header, the web console's session cookie
(``BrowserSessions``: the session's CSRF token must come in a header on every
change, else 403), checks the token's scope (``read`` for GET, ``write`` for any
change: 403, audited), and hands the route a ``Caller`` whose ``store`` is a
handle on the server's store acting as the authenticated actor. The handle is
a copy made for this request (``Store.as_actor``, same connections), never the
shared object changed in place, so one request's actor cannot leak into
another's on the server's worker threads. Its policy has no bootstrap admin (an
actor authenticated over HTTP is never admin for sharing the OS user's name)
and takes the role the IdP's groups grant as the default role: a role recorded
in the actors table still wins.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, cast

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from modelyard.access import PeopleAuthenticator, Principal
from modelyard.errors import AuthError, MissingScope, ModelyardError, PermissionDenied
from modelyard.store import Store

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A personal access token (`modelyard tokens create`, myp_…) or an OpenID "
    "Connect token of the configured issuer. Tenants' API keys are refused.",
)
SESSION_COOKIE = "modelyard_session"
console_session = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="console_session",
    description="The web console's session (`/console`), instead of a bearer token: a change "
    "also needs the session's CSRF token in the X-CSRF-Token header. Behind TLS the cookie "
    "is named __Host-modelyard_session.",
)


class BrowserSessions(Protocol):
    """The web console's sessions, as the admin API sees them (``console.ConsoleSessions``)."""

    @property
    def cookie_name(self) -> str: ...

    def authenticate(self, session_id: str, csrf_token: str | None, *, changing: bool) -> Principal:
        """The session's principal; AuthError (401) for an unknown or ended session, a
        403 for a change without the session's CSRF token."""
        ...


@dataclass(frozen=True)
class Caller:
    """The authenticated principal and the store acting as it for this request."""

    principal: Principal
    store: Store

    @property
    def actor(self) -> str:
        return self.principal.actor


def store_for(store: Store, principal: Principal) -> Store:
    """A handle on ``store`` acting as ``principal`` (see the module's docstring)."""
    handle = cast(Store, store.as_actor(principal.actor))
    handle.policy = dataclasses.replace(
        store.policy,
        bootstrap_admin=None,
        default_role=principal.role or store.policy.default_role,
    )
    return handle


def _principal(request: Request, needed: str) -> Principal:
    """From the Authorization header; without one, from the console's session cookie."""
    authorization = request.headers.get("authorization")
    sessions: BrowserSessions | None = getattr(request.app.state, "sessions", None)
    if authorization is None and sessions is not None:
        session_id = request.cookies.get(sessions.cookie_name)
        if session_id:
            return sessions.authenticate(
                session_id, request.headers.get("x-csrf-token"), changing=needed == "write"
            )
    authenticator: PeopleAuthenticator = request.app.state.authenticator
    return authenticator.authenticate(authorization)


def acting(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[str | None, Depends(console_session)],
) -> Caller:
    store: Store = request.app.state.store
    del credentials, session  # declared for the OpenAPI security schemes; read in _principal
    needed = "read" if request.method in READ_METHODS else "write"
    try:
        principal = _principal(request, needed)
    except (AuthError, PermissionDenied) as exc:
        log.warning("admin API: %s %s refused: %s", request.method, request.url.path, exc.message)
        raise
    caller = Caller(principal, store_for(store, principal))
    if not principal.may(needed):
        refusal = MissingScope(
            f"this token has scopes {', '.join(principal.scopes)}; "
            f"{request.method} {request.url.path} needs scope {needed}",
            hint=f"Create a token with scope {needed}: `modelyard tokens create --scopes "
            "read,write`.",
        )
        _record_refusal(caller, request, refusal, needed)
        raise refusal
    return caller


def _record_refusal(caller: Caller, request: Request, refusal: ModelyardError, needed: str) -> None:
    """A refusal by scope goes on the audit chain, as the store records refusals by role."""
    payload: dict[str, Any] = {
        "attempted": f"{request.method} {request.url.path}",
        "required_scope": needed,
        "scopes": list(caller.principal.scopes),
        "via": caller.principal.via,
        "reason": refusal.message,
    }
    try:
        caller.store.record_audit_event("permission.denied", request.url.path[:300], payload)
    except ModelyardError as exc:  # the refusal stands, though unrecorded
        log.error("could not record a refusal in the audit chain: %s", exc.one_line())


Acting = Annotated[Caller, Depends(acting)]

__all__ = [
    "SESSION_COOKIE",
    "Acting",
    "BrowserSessions",
    "Caller",
    "acting",
    "bearer",
    "console_session",
    "store_for",
]
