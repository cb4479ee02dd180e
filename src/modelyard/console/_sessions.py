"""The web console's sessions: a random id in a cookie, everything else on the server.

A login hands ``ConsoleSessions.start`` the person's token (a personal access
token or an OpenID Connect token); it is checked like a bearer token
(``access.PeopleAuthenticator``), then kept on the server next to the session,
in a ``SessionTable`` (``console._tables``): this process's memory, or Redis
when the server has ``--redis-url`` (``console._shared``), where every replica
finds it and the tokens are sealed with a key only the browser's cookie yields.
The browser holds nothing but a random session id (256 bits) in an HttpOnly
cookie, and tables key sessions by the SHA-256 of that id. Every request through
the session checks the token again, so revoking the token, or its expiry (an
OIDC token's ``exp``), ends the session at once, as it would end a bearer
token's access; the principal must stay the one that logged in. A single
sign-on session (``console._sso``) also keeps the identity provider's refresh
token: when its token expires, ``refresh`` trades it for a fresh one (once, for
all the session's requests at that moment, on every replica), and the session
ends only when the identity provider refuses.

A session ends at logout, after ``idle_s`` without a request, after ``ttl_s``
whatever happens, or when its token stops authenticating. Each one has a CSRF
token (synchronizer pattern): a change through the session (any method but GET,
HEAD, OPTIONS) must send it in ``X-CSRF-Token``, else 403. In memory, a restart
ends every session and replicas behind a load balancer need sticky sessions; in
Redis neither is true (docs/console.md).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable

from modelyard.access import PeopleAuthenticator, Principal
from modelyard.console._tables import (
    MemoryTable,
    Session,
    SessionRules,
    SessionTable,
    session_key,
)
from modelyard.errors import AuthError, IdentityProviderUnavailable, PermissionDenied

SESSION_COOKIE = "modelyard_session"  # over plain HTTP (127.0.0.1)
SECURE_SESSION_COOKIE = "__Host-modelyard_session"  # over TLS: Secure, Path=/, no Domain
CSRF_HEADER = "X-CSRF-Token"


class CSRFRejected(PermissionDenied):
    """A change through a console session without the session's CSRF token (HTTP 403)."""

    code = "csrf_failed"
    default_hint = "Reload the console; a script that calls the admin API sends a bearer token."


TableFactory = Callable[[SessionRules], SessionTable]


class ConsoleSessions:
    """Sessions of the console, shared by ``/console`` and ``/admin/v1`` in one server.

    ``secure``: the server is reached over TLS (``--tls-cert`` or ``--behind-tls-proxy``);
    the cookie is then ``Secure`` and named with the ``__Host-`` prefix. An actor holds at
    most ``max_per_actor`` sessions (its oldest ends at the next login), all actors
    together ``max_sessions`` (the oldest of all ends). ``table`` makes the table they are
    kept in from these rules (default: ``MemoryTable``, this process's memory).
    """

    def __init__(
        self,
        authenticator: PeopleAuthenticator,
        *,
        secure: bool = False,
        ttl_s: float = 8 * 3600,
        idle_s: float = 1800,
        max_sessions: int = 10_000,
        max_per_actor: int = 50,
        refresh: Callable[[str], tuple[str, str | None]] | None = None,
        table: TableFactory = MemoryTable,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``refresh(refresh_token)`` → (a fresh token, the refresh token to keep), or
        AuthError: how a single sign-on session renews its token (``OIDCLogin.refresh``).
        ``clock``: by default the wall clock for a shared table (every replica reads the
        times one of them wrote), else the monotonic clock, which a step of the wall
        clock (NTP, an operator) cannot move to end sessions or keep them past ttl_s."""
        self.authenticator = authenticator
        self.refresh = refresh
        self.secure = secure
        self.rules = SessionRules(ttl_s, idle_s, max_sessions, max_per_actor)
        self.table = table(self.rules)
        self._clock = clock or (time.time if self.table.shared else time.monotonic)

    @property
    def cookie_name(self) -> str:
        return SECURE_SESSION_COOKIE if self.secure else SESSION_COOKIE

    def start(
        self, token: str, *, refresh_token: str | None = None, id_token: str | None = None
    ) -> tuple[str, Session, Principal]:
        """Check ``token`` and open a session for it: (the id for the cookie, the session,
        who it is). AuthError (401) when the token does not authenticate."""
        principal = self.authenticator.authenticate(f"Bearer {token}")
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(
            key=session_key(session_id),
            token=token,
            actor=principal.actor,
            csrf_token=secrets.token_urlsafe(32),
            started=now,
            expires=now + self.rules.ttl_s,
            last_seen=now,
            refresh_token=refresh_token,
            id_token=id_token,
        )
        self.table.add(session_id, session, now)
        return session_id, session, principal

    def find(self, session_id: str) -> tuple[Session, Principal]:
        """The live session of ``session_id`` and its principal, its token checked again;
        AuthError (401) when there is none (unknown, logged out, expired, token revoked)."""
        session = self.table.get(session_id, self._clock())
        if session is None:
            raise AuthError(
                "no console session: it ended (logout, expiry, or the server restarted)",
                hint="Log in again at /console/login.",
            )
        try:
            principal = self._principal(session_id, session)
        except IdentityProviderUnavailable:  # it may answer again soon: the session stays
            raise
        except AuthError as exc:  # revoked or expired since the login: the session ends
            self.end(session_id)
            if session.refresh_token is not None:
                raise AuthError(
                    f"the console session's single sign-on ended: {exc.message}",
                    hint="Sign in again at /console/login.",
                ) from None
            raise AuthError(
                "the token this console session logged in with no longer authenticates "
                "(revoked or expired)",
                hint="Log in again at /console/login with a valid token.",
            ) from None
        if principal.actor != session.actor:  # an IdP that renamed the person: not the same
            self.end(session_id)
            raise AuthError("the console session's actor changed", hint="Log in again.")
        return session, principal

    def _principal(self, session_id: str, session: Session) -> Principal:
        """The session's token checked again; an expired single sign-on token is renewed
        with the refresh token first: one renewal for concurrent requests, whichever
        replica they reach (refresh tokens rotate: a second use of one may be refused)."""
        presented = session.token
        try:
            return self.authenticator.authenticate(f"Bearer {presented}")
        except AuthError:
            if session.refresh_token is None or self.refresh is None:
                raise
        with self.table.renewing(session_id):
            current = self.table.get(session_id, self._clock())  # renewed meanwhile?
            if current is None:
                raise AuthError("the session ended while its token was renewed")
            if current.token == presented:  # nobody renewed it while this request waited
                assert current.refresh_token is not None
                current.token, current.refresh_token = self.refresh(current.refresh_token)
                self.table.save(session_id, current)
            session.token, session.refresh_token = current.token, current.refresh_token
        return self.authenticator.authenticate(f"Bearer {session.token}")

    def authenticate(self, session_id: str, csrf_token: str | None, *, changing: bool) -> Principal:
        """For the admin API (``admin.BrowserSessions``): the session's principal; a change
        needs the session's CSRF token (403 ``csrf_failed`` without it)."""
        session, principal = self.find(session_id)
        if changing and not csrf_matches(session, csrf_token):
            raise CSRFRejected(
                f"a change through the console session needs its CSRF token in {CSRF_HEADER}"
            )
        return principal

    def end(self, session_id: str) -> Session | None:
        """Log out: the session is gone for ``/console`` and ``/admin/v1`` alike."""
        return self.table.pop(session_id)

    def __len__(self) -> int:
        return self.table.count(self._clock())


def csrf_matches(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf_token.encode())


__all__ = [
    "CSRF_HEADER",
    "SECURE_SESSION_COOKIE",
    "SESSION_COOKIE",
    "CSRFRejected",
    "ConsoleSessions",
    "Session",
    "csrf_matches",
]
