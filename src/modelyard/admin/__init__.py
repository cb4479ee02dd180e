"""The admin API (``/admin/v1``): the control plane over HTTP, for people.

``create_admin_app(store, authenticator)`` builds the app that ``modelyard
serve`` mounts at ``ADMIN_PREFIX``: registry, endpoints and traffic, rollouts,
and audit, each change through the same store (and ``delivery``) methods as the
CLI, so the role checks and the audit event happen in the change's transaction,
with the authenticated actor (``access.PeopleAuthenticator``: personal access
tokens and OpenID Connect). ``admin_enabled`` decides whether ``serve`` may
mount it on an address: only 127.0.0.1 unless TLS protects the tokens.
"""

from modelyard.admin._app import ADMIN_PREFIX, create_admin_app
from modelyard.admin._auth import Caller, store_for
from modelyard.admin._listen import admin_enabled, is_loopback

__all__ = [
    "ADMIN_PREFIX",
    "Caller",
    "admin_enabled",
    "create_admin_app",
    "is_loopback",
    "store_for",
]
