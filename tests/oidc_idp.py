"""An OpenID Connect issuer on 127.0.0.1 for the tests: discovery, JWKS, and the
authorization code flow with PKCE. ``/authorize`` signs in ``IdP.user`` at once, or,
with ``IdP.login_page``, shows a page whose button does (so that the way back starts
on the issuer's site, as a real sign-in does). ``/token`` checks the code, the
redirect URI, the PKCE verifier and the client's secret, and renews with refresh
tokens, rotating them.

It is written from RFC 6749, RFC 7636 and OpenID Connect Core, not from modelyard's
code, so a test that passes against it passes against what a real issuer checks."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

AUDIENCE = "modelyard"
CLIENT_ID = "modelyard-console"


@dataclass
class IdP:
    """An issuer: its keys, who signs in, and what it was asked."""

    url: str
    signing: dict[str, Any] = field(default_factory=dict)  # kid → private key
    published: list[str] = field(default_factory=list)  # kids in the JWKS
    fetches: int = 0
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "alice"})
    client_secret: str | None = None  # None: a public client
    deny: bool = False  # /authorize answers error=access_denied
    login_page: bool = False  # /authorize shows a page with a "Sign in" button first
    access_ttl_s: int = 300
    access_audience: str = AUDIENCE
    opaque_access_tokens: bool = False
    wrong_nonce: bool = False
    token_delay_s: float = 0.0  # a slow token endpoint (overlapping renewals)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    logout_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_key(self, kid: str, *, publish: bool = True, kind: str = "RSA") -> None:
        params = {"kid": kid}
        key = RSAKey.generate_key(2048, parameters=params) if kind == "RSA" else (
            ECKey.generate_key("P-256", parameters=params))  # fmt: skip
        self.signing[kid] = key
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        return KeySet([self.signing[k] for k in self.published]).as_dict(private=False)

    def token(self, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": alg, "kid": kid}, body, self.signing[kid])

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": self.url + "/jwks",
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "end_session_endpoint": self.url + "/logout",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    # -- the flow ------------------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> str:
        """Where ``/authorize`` sends the browser back to."""
        self.authorize_requests.append(query)
        back = query["redirect_uri"]
        state = {"state": query["state"]} if "state" in query else {}
        if self.deny:
            return f"{back}?{urlencode({'error': 'access_denied', **state})}"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "client_id": query.get("client_id"), "redirect_uri": back,
            "challenge": query.get("code_challenge"), "method": query.get("code_challenge_method"),
            "nonce": query.get("nonce"), "user": dict(self.user),
        }  # fmt: skip
        return f"{back}?{urlencode({'code': code, **state})}"

    def exchange(
        self, form: dict[str, str], authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        time.sleep(self.token_delay_s)
        client = self._client(form, authorization)
        if client is None:
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        if grant == "authorization_code":
            issued = self.codes.pop(form.get("code", ""), None)  # a code works once
            if (
                issued is None
                or issued["client_id"] != client
                or issued["redirect_uri"] != form.get("redirect_uri")
                or issued["method"] != "S256"
                or _s256(form.get("code_verifier", "")) != issued["challenge"]
            ):
                return 400, {"error": "invalid_grant"}
            nonce = "not-the-one-sent" if self.wrong_nonce else issued["nonce"]
            return 200, self._tokens(issued["user"], nonce)
        if grant == "refresh_token":
            user = self.refresh_tokens.pop(form.get("refresh_token", ""), None)  # rotated
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "refresh token revoked"}
            return 200, self._tokens(user, None)
        return 400, {"error": "unsupported_grant_type"}

    def _client(self, form: dict[str, str], authorization: str | None) -> str | None:
        if authorization and authorization.startswith("Basic "):
            name, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            return name if name == CLIENT_ID and secret == self.client_secret else None
        if self.client_secret is not None:
            return None  # a confidential client must authenticate
        return form.get("client_id") if form.get("client_id") == CLIENT_ID else None

    def _tokens(self, user: dict[str, Any], nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        access = (
            secrets.token_urlsafe(24)
            if self.opaque_access_tokens
            else self.token(aud=self.access_audience, exp=now + self.access_ttl_s, **user)
        )
        id_claims = {"aud": CLIENT_ID, "exp": now + self.access_ttl_s, "nonce": nonce, **user}
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = user
        return {
            "access_token": access, "token_type": "Bearer", "expires_in": self.access_ttl_s,
            "id_token": self.token(**id_claims), "refresh_token": refresh,
        }  # fmt: skip


def _form(encoded: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(encoded).items()}


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@contextmanager
def running_idp(host: str = "127.0.0.1") -> Iterator[IdP]:
    """The issuer, listening on 127.0.0.1 and named ``http://<host>:<port>``: ``localhost``
    makes it another site than a server on 127.0.0.1, as a real identity provider is."""
    state: list[IdP] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider = state[0]
            parts = urlsplit(self.path)
            if parts.path == "/.well-known/openid-configuration":
                self._json(200, provider.discovery())
            elif parts.path == "/jwks":
                provider.fetches += 1
                self._json(200, provider.jwks())
            elif parts.path == "/authorize" and provider.login_page:
                self._page(parts.query)
            elif parts.path == "/authorize":
                self._back(provider.authorize(_form(parts.query)))
            elif parts.path == "/logout":  # RP-Initiated Logout: back where it was asked
                query = _form(parts.query)
                provider.logout_requests.append(query)
                self._back(query["post_logout_redirect_uri"])
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
            if path == "/approve":  # the sign-in page's button
                self._back(state[0].authorize(_form(_form(body)["query"])))
            elif path == "/token":
                status, answer = state[0].exchange(_form(body), self.headers.get("authorization"))
                self._json(status, answer)
            else:
                self.send_error(404)

        def _page(self, query: str) -> None:
            body = (
                '<!doctype html><title>Sign in</title><link rel=icon href="data:,">'
                "<form method=post action=/approve>"
                f'<input type=hidden name=query value="{html.escape(query)}">'
                "<button id=approve type=submit>Sign in</button></form>"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _back(self, location: str) -> None:
            self.send_response(302)
            self.send_header("location", location)
            self.send_header("content-length", "0")
            self.end_headers()

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider = IdP(f"http://{host}:{server.server_address[1]}")
    provider.add_key("k1")
    state.append(provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
