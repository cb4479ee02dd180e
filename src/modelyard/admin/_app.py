"""The admin API app: routes over the store's methods, for people with tokens."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

import modelyard
from modelyard.access import PeopleAuthenticator
from modelyard.admin import _audit, _delivery, _monitoring, _registry, _tenants
from modelyard.admin._auth import BrowserSessions
from modelyard.admin._errors import ERROR_RESPONSES, install_error_handlers
from modelyard.artifacts import ArtifactStore
from modelyard.store import Store

ADMIN_PREFIX = "/admin/v1"


def create_admin_app(
    store: Store,
    authenticator: PeopleAuthenticator | None = None,
    sessions: BrowserSessions | None = None,
    artifacts: ArtifactStore | None = None,
) -> FastAPI:
    """The admin API, to mount at ``ADMIN_PREFIX``; its OpenAPI is at ``openapi.json`` there.

    ``store`` is the server's; each request acts through a handle of its own as the
    authenticated actor (``_auth``). ``authenticator`` defaults to access tokens only;
    with ``sessions``, the web console's session cookie is accepted too. ``artifacts``
    (read by drift's eval reference) defaults to the settings' store, opened when needed.
    """
    app = FastAPI(
        title="modelyard admin API",
        version=modelyard.__version__,
        description="The control plane over HTTP: the CLI's registry, endpoints, rollouts, "
        "tenants and keys, monitoring and audit, for people with an access token or an "
        "OpenID Connect token. Every change is checked against the actor's role and "
        "audited (docs/admin-api.md).",
        docs_url=None,
        redoc_url=None,
        servers=[{"url": ADMIN_PREFIX}],
    )
    app.state.store = store
    app.state.authenticator = authenticator or PeopleAuthenticator(store)
    app.state.artifacts = artifacts
    app.state.sessions = sessions
    install_error_handlers(app)
    api = APIRouter(responses=ERROR_RESPONSES)
    for module in (_registry, _delivery, _tenants, _monitoring, _audit):
        api.include_router(module.router)
    app.include_router(api)
    return app


__all__ = ["ADMIN_PREFIX", "create_admin_app"]
