"""The admin API app: routes over the store's methods, for people with tokens."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant

import modelyard
from modelyard.access import PeopleAuthenticator
from modelyard.admin import _audit, _delivery, _monitoring, _registry, _tenants
from modelyard.admin._auth import BrowserSessions
from modelyard.admin._errors import ERROR_RESPONSES, install_error_handlers
from modelyard.artifacts import ArtifactStore
from modelyard.errors import ConfigError
from modelyard.store import Store

ADMIN_PREFIX = "/admin/v1"


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route (and its dependencies) reads."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_query(request: Request) -> None:
    """Refuse a query parameter the route does not read (a misspelt ``endpont=`` filter
    would otherwise be ignored, and the answer would silently cover everything): 400
    naming it and the ones the route takes."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _query_names(dependant)
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "no query parameters"
        raise ConfigError(
            f"unknown query parameter {unknown[0]!r} for {request.method} "
            f"{getattr(route, 'path', request.url.path)}: it takes {takes}",
            field=unknown[0],
        )


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
    api = APIRouter(responses=ERROR_RESPONSES, dependencies=[Depends(known_query)])
    for module in (_registry, _delivery, _tenants, _monitoring, _audit):
        api.include_router(module.router)
    app.include_router(api)
    return app


__all__ = ["ADMIN_PREFIX", "create_admin_app"]
