"""Console replicas over one Redis, for the tests of shared console sessions: a store with
three people (``console_store``), a replica as ``control_plane`` builds it with
``--redis-url`` (``replica``, ``replicas``), and a token login as the page does it
(``login``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from modelyard.access import OIDCConfig, OIDCLogin, OIDCVerifier, PeopleAuthenticator, SSOConfig
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.console import (
    CONSOLE_PREFIX,
    ConsoleSessions,
    LoginLimiter,
    create_console_app,
    shared_tables,
)
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from oidc_idp import AUDIENCE, CLIENT_ID, IdP

KEY = "console-replicas-test-key-consol"
TIMEOUT_S = 30.0


@contextmanager
def console_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store as the admin ``ops``, with ``viv`` (viewer) and ``dev`` (developer)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as store:
        store.add_actor("ops", "admin")
        store.add_actor("viv", "viewer")
        store.add_actor("dev", "developer")
        yield store


def replica(
    ops: Store, redis_url: str, *, idp: IdP | None = None, max_failures: int = 5,
    **rules: Any,
) -> BackgroundServer:  # fmt: skip
    """One replica as ``control_plane`` builds it with ``--redis-url`` (``rules``: the
    sessions' ``ttl_s``, ``idle_s``, ``max_sessions``, ``max_per_actor``)."""
    verifier = login = None
    if idp is not None:
        config = OIDCConfig(issuer=idp.url, audience=AUDIENCE, leeway_s=0)
        verifier = OIDCVerifier(config)
    people = PeopleAuthenticator(ops, verifier)
    if idp is not None:
        login = OIDCLogin(config, SSOConfig(CLIENT_ID), people.actor_of, verifier=verifier)
    table, shared = shared_tables(redis_url)
    sessions = ConsoleSessions(people, refresh=login.renew if login else None, table=table, **rules)
    limiter = LoginLimiter(max_failures=max_failures, window_s=300, shared=shared)
    mounts = {
        ADMIN_PREFIX: create_admin_app(ops, people, sessions),
        CONSOLE_PREFIX: create_console_app(
            ops, sessions, limiter=limiter, oidc=idp is not None, sso=login
        ),
    }
    return BackgroundServer(create_app(ops, EchoEngine(), mounts=mounts))


@contextmanager
def replicas(ops: Store, redis_url: str, n: int = 2, **kw: Any) -> Iterator[list[str]]:
    """``n`` replicas over one Redis: their base URLs."""
    with ExitStack() as stack:
        yield [stack.enter_context(replica(ops, redis_url, **kw)).base_url for _ in range(n)]


def login(client: httpx.Client, url: str, token: str) -> httpx.Response:
    """A token login at ``url`` as the login page makes it (its CSRF token first)."""
    csrf = client.get(f"{url}{CONSOLE_PREFIX}/api/login").json()["csrf_token"]
    return client.post(f"{url}{CONSOLE_PREFIX}/api/login", json={"token": token},
                       headers={"X-CSRF-Token": csrf})  # fmt: skip
