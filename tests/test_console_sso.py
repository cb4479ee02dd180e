"""The console's single sign-on: the authorization code flow with PKCE against an issuer
on 127.0.0.1 (``oidc_idp``, named ``localhost``: another site than the server, as a
real identity provider is), over HTTP with httpx and in Debian's chromium.

A real server (``create_app`` with the admin API and the console mounted, as
``modelyard serve`` wires them in ``control_plane``) over a SQLite store."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect

from modelyard.access import (
    OIDCConfig,
    OIDCLogin,
    OIDCVerifier,
    PeopleAuthenticator,
    SSOConfig,
)
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.console import CONSOLE_PREFIX, ConsoleSessions, LoginLimiter, create_console_app
from modelyard.errors import ConfigError, IdentityProviderUnavailable
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.settings import Settings
from modelyard.store import Store
from oidc_idp import AUDIENCE, CLIENT_ID, IdP, running_idp

KEY = "console-sso-test-key-console-sso"
WAIT_MS = 15_000
TIMEOUT_S = 30.0  # a sign-in is three HTTP exchanges and RSA signatures: slow on a busy CI


def _browser_like() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT_S)


@dataclass
class World:
    store: Store
    url: str
    idp: IdP


def _serve(
    ops: Store, idp: IdP, *, audience: str = AUDIENCE, secret: str | None = None,
    leeway_s: int = 30, max_failures: int = 5,
) -> BackgroundServer:  # fmt: skip
    """The server as ``control_plane`` builds it, with single sign-on at ``idp``."""
    config = OIDCConfig(issuer=idp.url, audience=audience, leeway_s=leeway_s)
    verifier = OIDCVerifier(config)
    people = PeopleAuthenticator(ops, verifier)
    login = OIDCLogin(config, SSOConfig(CLIENT_ID, client_secret=secret), people.actor_of,
                      verifier=verifier)  # fmt: skip
    sessions = ConsoleSessions(people, refresh=login.renew)
    limiter = LoginLimiter(max_failures=max_failures, window_s=300)
    mounts = {
        ADMIN_PREFIX: create_admin_app(ops, people, sessions),
        CONSOLE_PREFIX: create_console_app(ops, sessions, limiter=limiter, oidc=True, sso=login),
    }
    return BackgroundServer(create_app(ops, EchoEngine(), mounts=mounts))


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(
        url, actor="ops", audit_key=KEY, policy=AccessPolicy(bootstrap_admin="ops")
    ) as s:
        s.add_actor("ops", "admin")
        yield s


@pytest.fixture
def world(ops: Store) -> Iterator[World]:
    with running_idp("localhost") as idp, _serve(ops, idp) as server:
        yield World(ops, server.base_url, idp)


def _sign_in(url: str, idp: IdP, client: httpx.Client) -> httpx.Response:
    """What a browser does: the console's redirect, the issuer's, then the callback."""
    start = client.get(f"{url}{CONSOLE_PREFIX}/oidc/login")
    assert start.status_code == 303, start.text
    assert start.headers["location"].startswith(f"{idp.url}/authorize?")
    # the issuer: no cookies of the console
    back = httpx.get(start.headers["location"], timeout=TIMEOUT_S)
    assert back.status_code == 302
    return client.get(back.headers["location"])


def _error_of(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert location.path == f"{CONSOLE_PREFIX}/login"
    return {k: v[0] for k, v in parse_qs(location.query).items()}


def test_a_person_signs_in_with_pkce_and_the_session_opens_the_admin_api(world: World) -> None:
    with _browser_like() as client:
        offered = client.get(f"{world.url}{CONSOLE_PREFIX}/api/login").json()
        assert offered["sso"] == {"issuer": world.idp.url.split("//")[1]} and offered["oidc"]
        start = client.get(f"{world.url}{CONSOLE_PREFIX}/oidc/login")
        cookie = start.headers["set-cookie"]
        assert "modelyard_sso=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        query = parse_qs(urlsplit(start.headers["location"]).query)
        assert query["response_type"] == ["code"] and query["client_id"] == [CLIENT_ID]
        assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
        assert "openid" in query["scope"][0].split() and query["nonce"][0] and query["state"][0]
        assert query["redirect_uri"] == [f"{world.url}{CONSOLE_PREFIX}/oidc/callback"]
        back = httpx.get(start.headers["location"], timeout=TIMEOUT_S)
        page = client.get(back.headers["location"])
        assert page.status_code == 200 and "Continue to the console" in page.text
        assert "HttpOnly" in page.headers["set-cookie"]
        whoami = client.get(f"{world.url}{ADMIN_PREFIX}/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["actor"] == "alice" and whoami.json()["via"] == "oidc"
        csrf = client.get(f"{world.url}{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
        out = client.post(f"{world.url}{CONSOLE_PREFIX}/api/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200 and out.json()["ended"] is True
        logout = urlsplit(out.json()["sso_logout"])  # the identity provider's session too
        assert f"{logout.scheme}://{logout.netloc}{logout.path}" == f"{world.idp.url}/logout"
        hint = parse_qs(logout.query)
        assert hint["post_logout_redirect_uri"] == [f"{world.url}{CONSOLE_PREFIX}/login"]
        assert hint["client_id"] == [CLIENT_ID] and hint["id_token_hint"][0].count(".") == 2
        assert client.get(f"{world.url}{ADMIN_PREFIX}/whoami").status_code == 401
    exchange = world.idp.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code" and len(exchange["code_verifier"]) == 64
    assert "client_secret" not in exchange  # a public client: PKCE alone
    event = world.store.list_audit_events(action="console.login", limit=1)[0]
    assert event.actor == "alice"
    assert event.payload["flow"] == "authorization_code"
    assert event.payload["session_token"] == "access_token"


def test_a_callback_this_browser_did_not_start_logs_nobody_in(world: World) -> None:
    """Login CSRF: someone's own callback URL (their code and state) sent to a victim."""
    with _browser_like() as attacker, _browser_like() as victim:
        start = attacker.get(f"{world.url}{CONSOLE_PREFIX}/oidc/login")
        callback = httpx.get(start.headers["location"], timeout=TIMEOUT_S).headers["location"]
        refused = victim.get(callback)
        assert _error_of(refused) == {"error": "sso_state"}
        assert "modelyard_session" not in victim.cookies
        assert victim.get(f"{world.url}{ADMIN_PREFIX}/whoami").status_code == 401
        tampered = dict(attacker.cookies)["modelyard_sso"].replace(".", "x.", 1)
        victim.cookies.set("modelyard_sso", tampered)
        assert _error_of(victim.get(callback)) == {"error": "sso_state"}
        assert attacker.get(callback).status_code == 200  # its own browser: signed in


def test_a_code_works_once_and_a_wrong_nonce_is_refused(world: World) -> None:
    with _browser_like() as client:
        start = client.get(f"{world.url}{CONSOLE_PREFIX}/oidc/login")
        flow = dict(client.cookies)["modelyard_sso"]
        callback = httpx.get(start.headers["location"], timeout=TIMEOUT_S).headers["location"]
        assert client.get(callback).status_code == 200
        client.cookies.set("modelyard_sso", flow)  # the same callback again
        assert _error_of(client.get(callback)) == {"error": "sso_refused"}
    world.idp.wrong_nonce = True
    with _browser_like() as client:
        assert _error_of(_sign_in(world.url, world.idp, client)) == {"error": "sso_refused"}
        assert client.get(f"{world.url}{ADMIN_PREFIX}/whoami").status_code == 401


def test_what_the_identity_provider_refuses_comes_back_as_a_fixed_error(world: World) -> None:
    world.idp.deny = True
    with _browser_like() as client:
        assert _error_of(_sign_in(world.url, world.idp, client)) == {"error": "sso_denied"}
        callback = f"{world.url}{CONSOLE_PREFIX}/oidc/callback"
        odd = client.get(callback, params={"error": "temporarily_unavailable", "state": "x"})
        assert _error_of(odd) == {"error": "sso_idp_error", "idp": "temporarily_unavailable"}
        words = client.get(callback, params={"error": "Call 555-0100 to unlock <b>"})
        assert _error_of(words) == {"error": "sso_idp_error", "idp": "other"}


def test_a_confidential_client_authenticates_with_its_secret(ops: Store) -> None:
    with running_idp("localhost") as idp:
        idp.client_secret = "s3cret-of-the-console"
        with _serve(ops, idp, secret="s3cret-of-the-console") as server, _browser_like() as c:
            assert _sign_in(server.base_url, idp, c).status_code == 200
        with _serve(ops, idp, secret="an-old-secret") as server, _browser_like() as c:
            assert _error_of(_sign_in(server.base_url, idp, c)) == {"error": "sso_refused"}


def test_the_session_token_is_the_id_token_when_access_tokens_are_not_for_this_server(
    ops: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with running_idp("localhost") as idp:
        idp.opaque_access_tokens = True  # many issuers' access tokens are not JWTs
        with _serve(ops, idp, audience=CLIENT_ID) as server, _browser_like() as c:
            assert _sign_in(server.base_url, idp, c).status_code == 200
            assert c.get(f"{server.base_url}{ADMIN_PREFIX}/whoami").json()["actor"] == "alice"
        event = ops.list_audit_events(action="console.login", limit=1)[0]
        assert event.payload["session_token"] == "id_token"
        with (
            caplog.at_level(logging.WARNING, logger="modelyard.console._sso"),
            _serve(ops, idp, audience=AUDIENCE) as server,
            _browser_like() as c,
        ):
            assert _error_of(_sign_in(server.base_url, idp, c)) == {"error": "sso_refused"}
        assert "MODELYARD_OIDC_AUDIENCE" in caplog.text and CLIENT_ID in caplog.text


def test_an_expired_token_is_renewed_and_a_revoked_sign_in_ends_the_session(ops: Store) -> None:
    with running_idp("localhost") as idp, _serve(ops, idp, leeway_s=0) as server:
        idp.access_ttl_s = 3  # exp is whole seconds: at least 2 s ahead when issued
        with _browser_like() as client:
            assert _sign_in(server.base_url, idp, client).status_code == 200
            whoami = f"{server.base_url}{ADMIN_PREFIX}/whoami"
            assert client.get(whoami).status_code == 200
            time.sleep(3.2)  # past the token's exp (no leeway)
            assert client.get(whoami).status_code == 200  # renewed with the refresh token
            grants = [r["grant_type"] for r in idp.token_requests]
            assert grants == ["authorization_code", "refresh_token"]
            idp.revoke_refresh_tokens()  # the person was disabled at the identity provider
            time.sleep(3.2)
            ended = client.get(whoami)
            assert ended.status_code == 401
            assert "single sign-on ended" in ended.json()["error"]["message"]
            assert "no console session" in client.get(whoami).json()["error"]["message"]


def test_an_unreachable_identity_provider_is_a_message_not_a_500(ops: Store) -> None:
    with running_idp("localhost") as idp:
        gone = replace(idp, url="http://127.0.0.1:9")  # nothing listens there
    with _serve(ops, gone) as server, _browser_like() as client:
        started = client.get(f"{server.base_url}{CONSOLE_PREFIX}/oidc/login")
        assert _error_of(started) == {"error": "sso_unavailable"}


def test_without_a_client_id_there_is_no_single_sign_on(tmp_path: Path) -> None:
    assert SSOConfig.from_settings(Settings(oidc_issuer="https://idp.example")) is None
    with pytest.raises(ConfigError, match="MODELYARD_OIDC_CLIENT_ID"):
        SSOConfig.from_settings(Settings(oidc_client_secret="x"))
    with pytest.raises(ConfigError, match="MODELYARD_OIDC_ISSUER"):
        SSOConfig.from_settings(Settings(oidc_client_id="console"))
    with pytest.raises(ConfigError, match="openid"):
        SSOConfig.from_settings(Settings(oidc_issuer="https://idp.example",
                                         oidc_client_id="c", oidc_scopes="profile"))  # fmt: skip
    both = Settings(oidc_issuer="https://idp.example", oidc_client_id="console")
    config = OIDCConfig.from_settings(both)
    assert config is not None and config.audience == "console"  # the ID tokens' audience
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url, actor="ops", audit_key=KEY) as plain:
        people = PeopleAuthenticator(plain)
        app = create_app(plain, EchoEngine(), mounts={
            CONSOLE_PREFIX: create_console_app(plain, ConsoleSessions(people))})  # fmt: skip
        with BackgroundServer(app) as server, _browser_like() as client:
            assert client.get(f"{server.base_url}{CONSOLE_PREFIX}/oidc/login").status_code == 404
            assert client.get(f"{server.base_url}{CONSOLE_PREFIX}/api/login").json()["sso"] is None


# -- in the browser --------------------------------------------------------------------------


def test_single_sign_on_in_the_browser(world: World, browser: Browser) -> None:
    """The button, the issuer on another site, back with a SameSite=Strict session cookie
    the console's next page is sent with; then a refused sign-in shown in words."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[Any] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{world.url}{CONSOLE_PREFIX}/")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    expect(page.locator("#sso-help")).to_have_text(f"at {world.idp.url.split('//')[1]}")
    world.idp.login_page = True  # the way back starts on the issuer's site
    page.click("#sso")
    page.click("#approve")
    expect(page.get_by_test_id("who")).to_contain_text("alice")
    expect(page).to_have_url(re.compile(r"/console/(#.*)?$"))
    assert world.idp.authorize_requests  # it went through the issuer
    page.click("text=Log out")  # through the identity provider's logout, back to login
    expect(page).to_have_url(re.compile(r"/console/login"))
    assert len(world.idp.logout_requests) == 1
    world.idp.deny = True
    page.click("#sso")
    page.click("#approve")
    expect(page.locator("#error")).to_contain_text("did not sign you in")
    # the session store (Redis) unreachable at the way back: a sentence, not the code
    page.goto(f"{world.url}{CONSOLE_PREFIX}/login?error=sso_sessions_unavailable")
    expect(page.locator("#error")).to_contain_text("cannot reach the store its sessions")
    page.goto(f"{world.url}{CONSOLE_PREFIX}/login?error=made_up")  # no words from a link
    expect(page.locator("#sso")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    assert errors == [], errors
    context.close()


def test_a_discovery_document_with_clear_text_endpoints_is_the_providers_fault() -> None:
    """http endpoints off this machine: sign-in is a 503-kind refusal (never a 400 for the
    person), and an http logout endpoint is ignored while sign-in works."""
    issuer = "https://sso.example.com"
    document: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": "http://sso.example.com/authorize",
        "token_endpoint": f"{issuer}/token",
    }
    config = OIDCConfig(issuer=issuer, audience=CLIENT_ID)
    login = OIDCLogin(config, SSOConfig(CLIENT_ID), lambda _t: "alice",
                      fetch=lambda _url: document)  # fmt: skip
    with pytest.raises(IdentityProviderUnavailable, match="https"):
        login.begin("https://models.example.com/console/oidc/callback")
    document["authorization_endpoint"] = f"{issuer}/authorize"
    document["end_session_endpoint"] = "http://sso.example.com/logout"
    fresh = OIDCLogin(config, SSOConfig(CLIENT_ID), lambda _t: "alice",
                      fetch=lambda _url: document)  # fmt: skip
    url, _ = fresh.begin("https://models.example.com/console/oidc/callback")
    assert url.startswith(f"{issuer}/authorize?")
    assert fresh.logout_url("a.b.c", "https://models.example.com/console/login") is None


def test_behind_a_proxy_the_logout_returns_to_the_public_url_not_the_servers() -> None:
    issuer = "https://sso.example.com"
    document = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "end_session_endpoint": f"{issuer}/logout",
    }
    config = OIDCConfig(issuer=issuer, audience=CLIENT_ID)
    public = SSOConfig(CLIENT_ID, redirect_url="https://models.example.com/console/oidc/callback")
    login = OIDCLogin(config, public, lambda _t: "alice", fetch=lambda _url: document)
    out = urlsplit(login.logout_url("a.b.c", "http://10.42.0.7:8000/console/login") or "")
    assert parse_qs(out.query)["post_logout_redirect_uri"] == [
        "https://models.example.com/console/login"
    ]
