"""Single sign-on: OpenID Connect's authorization code flow with PKCE, for the console.

``OIDCLogin`` is the relying party's half of the flow (RFC 6749 §4.1, RFC 7636,
OpenID Connect Core §3.1):

1. ``begin`` makes a fresh ``state``, ``nonce`` and PKCE ``code_verifier`` and the
   URL of the issuer's authorization endpoint (``code_challenge_method=S256``);
   the caller keeps the three secrets in the browser's cookie until the callback.
2. ``finish`` exchanges the callback's ``code`` at the token endpoint (with the
   verifier, and the client secret for a confidential client), checks the ID
   token (signature against the issuer's JWKS, ``iss``, ``aud`` = the client id,
   ``exp``, and the ``nonce`` sent in step 1) and chooses the token the session
   will present on each request: the access token when it is a JWT this server
   accepts as a bearer token (audience ``MODELYARD_OIDC_AUDIENCE``), else the ID
   token when that is accepted (the audience is the client id), else a refusal
   that says which setting to change.
3. ``refresh`` trades a refresh token for fresh tokens when the session's token
   expires, so a session outlives a 5-minute access token without a new login,
   and ends when the identity provider refuses (the person was disabled, the
   refresh token was revoked).
4. ``logout_url``: where to send the browser after the console's logout so that
   the identity provider ends its own session too (OpenID Connect RP-Initiated
   Logout, when the discovery document names an ``end_session_endpoint``).

The endpoints come from the issuer's discovery document, whose ``issuer`` must be
the configured one. The HTTP exchanges are authlib's OAuth 2.0 client (httpx).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from modelyard.access._oidc import Fetch, OIDCConfig, OIDCVerifier, _check_url, fetch_json
from modelyard.errors import AuthError, ConfigError, IdentityProviderUnavailable
from modelyard.settings import Settings

if TYPE_CHECKING:  # authlib (and httpx2) load at the first sign-in, not with modelyard.access
    from authlib.integrations.httpx_client import OAuth2Client

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
CALLBACK_PATH = "/oidc/callback"  # under the console's prefix
DISCOVERY_TTL_S = 3600.0


@dataclass(frozen=True)
class SSOConfig:
    """The console's client registration at the issuer."""

    client_id: str
    client_secret: str | None = None  # None: a public client (PKCE alone)
    scopes: str = "openid profile email"
    redirect_url: str | None = None  # None: the callback URL the request was made to

    def __post_init__(self) -> None:
        if "openid" not in self.scopes.split():
            raise ConfigError(
                f"MODELYARD_OIDC_SCOPES {self.scopes!r} lacks 'openid': without it the "
                "identity provider sends no ID token",
                hint="Add openid, e.g. MODELYARD_OIDC_SCOPES='openid profile email groups'.",
                field="MODELYARD_OIDC_SCOPES",
            )
        if self.redirect_url is not None:
            _check_url(self.redirect_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> SSOConfig | None:
        """``MODELYARD_OIDC_CLIENT_ID`` and the rest; None when no client id is set."""
        if not settings.oidc_client_id:
            if settings.oidc_client_secret:
                raise ConfigError(
                    "MODELYARD_OIDC_CLIENT_SECRET is set but MODELYARD_OIDC_CLIENT_ID is not",
                    hint="Set the client id the identity provider registered for the console.",
                    field="MODELYARD_OIDC_CLIENT_ID",
                )
            return None
        if not settings.oidc_issuer:
            raise ConfigError(
                "MODELYARD_OIDC_CLIENT_ID is set but MODELYARD_OIDC_ISSUER is not",
                hint="Set the issuer URL (the iss of its tokens) for single sign-on.",
                field="MODELYARD_OIDC_ISSUER",
            )
        return cls(
            client_id=settings.oidc_client_id,
            client_secret=(
                settings.oidc_client_secret.get_secret_value()
                if settings.oidc_client_secret
                else None
            ),
            scopes=settings.oidc_scopes,
            redirect_url=settings.oidc_redirect_url,
        )


@dataclass(frozen=True)
class PendingLogin:
    """What the browser keeps between ``begin`` and the callback (never shown to others)."""

    state: str
    nonce: str
    code_verifier: str
    redirect_url: str


@dataclass(frozen=True)
class SignedIn:
    """A finished login: the token the session presents, who it names, and how to renew it."""

    token: str
    actor: str
    which: str  # "access_token" or "id_token"
    refresh_token: str | None
    id_token: str | None = None  # the latest: the logout's id_token_hint


class OIDCLogin:
    """The authorization code flow against ``config``'s issuer (see the module's text)."""

    def __init__(
        self,
        config: OIDCConfig,
        sso: SSOConfig,
        accepts: Callable[[str], str],
        *,
        verifier: OIDCVerifier | None = None,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``accepts(token)`` → the actor, or AuthError: whether the server takes ``token``
        as a bearer token (``PeopleAuthenticator``), which the session will present."""
        self.config, self.sso, self._accepts = config, sso, accepts
        shared = verifier.cache if verifier is not None else None
        # The ID token's audience is the client id, whatever the access tokens' is.
        self._id_tokens = OIDCVerifier(replace(config, audience=sso.client_id), cache=shared)
        self._fetch, self._clock = fetch, clock
        self._lock = threading.Lock()
        self._endpoints: tuple[str, str] | None = None
        self._end_session: str | None = None
        self._fetched_at = 0.0

    @property
    def issuer_host(self) -> str:
        """A short name of the identity provider for the login page's button."""
        return self.config.issuer.split("//", 1)[-1].split("/", 1)[0]

    def begin(self, redirect_url: str) -> tuple[str, PendingLogin]:
        """The URL to send the browser to, and what to keep until it comes back."""
        authorize, _ = self._discover()
        pending = PendingLogin(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),  # 64 characters (RFC 7636: 43 to 128)
            redirect_url=self.sso.redirect_url or redirect_url,
        )
        with self._client(pending.redirect_url) as client:
            url, _ = client.create_authorization_url(
                authorize, state=pending.state, code_verifier=pending.code_verifier,
                nonce=pending.nonce,
            )  # fmt: skip
        return url, pending

    def finish(self, pending: PendingLogin, code: str) -> SignedIn:
        """Exchange ``code`` and check what comes back; AuthError when it is refused."""
        _, token_url = self._discover()
        tokens = self._token_request(
            pending.redirect_url,
            lambda c: c.fetch_token(
                token_url, grant_type="authorization_code", code=code,
                code_verifier=pending.code_verifier, redirect_uri=pending.redirect_url,
            ),
        )  # fmt: skip
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise AuthError(
                "the identity provider sent no ID token",
                hint="Check that MODELYARD_OIDC_SCOPES includes openid.",
            )
        identity = self._id_tokens.verify(id_token)
        nonce = identity.claims.get("nonce")
        if not isinstance(nonce, str) or not secrets.compare_digest(
            nonce.encode(), pending.nonce.encode()
        ):
            raise AuthError("the ID token was not issued for this login (its nonce differs)")
        return self._signed_in(tokens, id_token)

    def refresh(self, refresh_token: str) -> SignedIn:
        """Fresh tokens for a session whose token expired; AuthError when refused."""
        _, token_url = self._discover()
        tokens = self._token_request(
            self.sso.redirect_url or "",
            lambda c: c.refresh_token(token_url, refresh_token=refresh_token),
        )
        id_token = tokens.get("id_token")
        if isinstance(id_token, str):
            self._id_tokens.verify(id_token)  # a refresh may omit it (OIDC Core §12.2)
        signed = self._signed_in(tokens, id_token if isinstance(id_token, str) else None)
        if signed.refresh_token is None:  # no rotation: the old one stays good
            signed = replace(signed, refresh_token=refresh_token)
        return signed

    def renew(self, refresh_token: str) -> tuple[str, str | None]:
        """``refresh`` as ``ConsoleSessions`` takes it: (the fresh token, the refresh token)."""
        signed = self.refresh(refresh_token)
        return signed.token, signed.refresh_token

    def logout_url(self, id_token: str | None, after: str) -> str | None:
        """The identity provider's logout for the person of ``id_token``, coming back to
        ``after``, the console's login page (taken from the configured redirect URL when
        there is one: behind a proxy, the request's own URL is not the public one). None
        when it publishes no ``end_session_endpoint`` (or is unreachable: the console's
        own logout stands either way)."""
        try:
            self._discover()
        except IdentityProviderUnavailable:
            return None
        if self._end_session is None:
            return None
        configured = self.sso.redirect_url  # behind a proxy: the URL people use, not ours
        if configured and configured.endswith(CALLBACK_PATH):
            after = configured.removesuffix(CALLBACK_PATH) + "/login"
        query = {"client_id": self.sso.client_id, "post_logout_redirect_uri": after}
        if id_token:
            query["id_token_hint"] = id_token
        separator = "&" if "?" in self._end_session else "?"
        return f"{self._end_session}{separator}{urlencode(query)}"

    def _signed_in(self, tokens: Mapping[str, Any], id_token: str | None) -> SignedIn:
        refresh = tokens.get("refresh_token")
        refresh = refresh if isinstance(refresh, str) and refresh else None
        reasons = []
        for which, token in (("access_token", tokens.get("access_token")), ("id_token", id_token)):
            if not isinstance(token, str) or not token:
                continue
            try:
                return SignedIn(token, self._accepts(token), which, refresh, id_token)
            except AuthError as exc:
                reasons.append(f"its {which.replace('_', ' ')}: {exc.message}")
        raise AuthError(
            "the identity provider signed you in, but it sent no token this server accepts "
            f"as a bearer token ({'; '.join(reasons) or 'none sent'})",
            hint=f"Set MODELYARD_OIDC_AUDIENCE to the audience of its access tokens, or to "
            f"the client id {self.sso.client_id!r} to let the ID token open the session.",
        )

    def _token_request(
        self, redirect_url: str, call: Callable[[OAuth2Client], Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        from authlib.integrations.httpx_client import OAuthError

        try:
            with self._client(redirect_url) as client:
                tokens = call(client)
        except OAuthError as exc:  # the issuer said no: invalid_grant, invalid_client, …
            log.warning("OIDC token endpoint refused: %s %s", exc.error, exc.description)
            raise AuthError(
                f"the identity provider refused the sign-in ({exc.error}"
                + (f": {exc.description}" if exc.description else "")
                + ")",
                hint="Sign in again; if it keeps failing, the console's client registration "
                "(client id, secret, redirect URL) needs checking.",
            ) from None
        except (OSError, ValueError) as exc:  # unreachable, or not a JSON object
            log.warning("OIDC token endpoint unreachable: %s", exc)
            raise IdentityProviderUnavailable(
                "the identity provider's token endpoint cannot be reached"
            ) from exc
        if not isinstance(tokens, Mapping):
            raise IdentityProviderUnavailable("the identity provider's token answer is not JSON")
        return tokens

    def _client(self, redirect_url: str) -> OAuth2Client:
        from authlib.integrations.httpx_client import OAuth2Client

        return OAuth2Client(
            client_id=self.sso.client_id,
            client_secret=self.sso.client_secret,
            token_endpoint_auth_method="client_secret_basic" if self.sso.client_secret else "none",
            scope=self.sso.scopes,
            redirect_uri=redirect_url or None,
            code_challenge_method="S256",
            timeout=TIMEOUT_S,
        )

    def _discover(self) -> tuple[str, str]:
        """(authorization endpoint, token endpoint) from the discovery document, cached."""
        with self._lock:
            if self._endpoints and self._clock() - self._fetched_at < DISCOVERY_TTL_S:
                return self._endpoints
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                document = self._fetch(url)
            except (OSError, ValueError) as exc:
                log.warning("cannot fetch the OIDC discovery document %s: %s", url, exc)
                if self._endpoints:
                    return self._endpoints
                raise IdentityProviderUnavailable(
                    "the identity provider's discovery document cannot be fetched, so single "
                    "sign-on is not possible now"
                ) from exc
            if document.get("issuer") != self.config.issuer:
                raise IdentityProviderUnavailable(
                    f"the discovery document at {url} names the issuer "
                    f"{document.get('issuer')!r}, not {self.config.issuer!r}"
                )
            endpoints = document.get("authorization_endpoint"), document.get("token_endpoint")
            if not all(isinstance(e, str) for e in endpoints):
                raise IdentityProviderUnavailable(
                    f"the discovery document at {url} names no authorization or token endpoint"
                )
            try:
                self._endpoints = (_check_url(str(endpoints[0])), _check_url(str(endpoints[1])))
            except ConfigError as exc:  # the provider's mistake, not the person's: a 503
                raise IdentityProviderUnavailable(f"{url}: {exc.message}") from None
            end_session = document.get("end_session_endpoint")
            try:
                self._end_session = (
                    _check_url(end_session) if isinstance(end_session, str) else None
                )
            except ConfigError as exc:  # logging out of the console still works
                log.warning("ignoring the OIDC end_session_endpoint: %s", exc.message)
                self._end_session = None
            self._fetched_at = self._clock()
            return self._endpoints


__all__ = ["OIDCLogin", "PendingLogin", "SSOConfig", "SignedIn"]
