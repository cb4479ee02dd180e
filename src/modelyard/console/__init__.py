"""The web console (``/console``): pages for people over the admin API.

``create_console_app(store, sessions)`` builds the app that ``modelyard serve``
mounts at ``CONSOLE_PREFIX`` beside the admin API, which shares its
``ConsoleSessions`` (``create_admin_app(..., sessions=...)``): a login with a
personal access token or an OpenID Connect token opens a server-side session
whose random id is the only thing the browser keeps (an HttpOnly, SameSite=Strict
cookie, Secure over TLS); the pages (static HTML, CSS and JavaScript under a
strict Content-Security-Policy) then call the admin API with that cookie and the
session's CSRF token. ``LoginLimiter`` answers 429 to an address after too many
failed logins. ``shared_tables(redis_url)`` keeps both in Redis for every replica
(``serve --redis-url``). docs/console.md.
"""

from modelyard.console._app import (
    CONSOLE_PREFIX,
    CONTENT_SECURITY_POLICY,
    SECURITY_HEADERS,
    create_console_app,
)
from modelyard.console._limits import LoginLimiter
from modelyard.console._sessions import (
    CSRF_HEADER,
    SECURE_SESSION_COOKIE,
    SESSION_COOKIE,
    ConsoleSessions,
    CSRFRejected,
)
from modelyard.console._shared import shared_tables

__all__ = [
    "CONSOLE_PREFIX",
    "CONTENT_SECURITY_POLICY",
    "CSRF_HEADER",
    "SECURE_SESSION_COOKIE",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "CSRFRejected",
    "ConsoleSessions",
    "LoginLimiter",
    "create_console_app",
    "shared_tables",
]
