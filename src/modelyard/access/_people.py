"""Who is calling the admin API: a person's access token or an OpenID Connect token.

``PeopleAuthenticator.authenticate`` turns an ``Authorization`` header into a
``Principal`` (the actor, how it proved it, its scopes, and a role its IdP
groups grant) or refuses it with ``AuthError`` (HTTP 401). A tenant's API key
(``myk_``) is refused whatever its validity: tenants call the data plane only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelyard.access._keys import KEY_PREFIX
from modelyard.access._oidc import OIDCVerifier
from modelyard.access._tokens import TOKEN_SCOPES, authenticate_actor_token, is_actor_token
from modelyard.audit import Role
from modelyard.errors import AuthError
from modelyard.store import Store

_HOW = (
    "send 'Authorization: Bearer <token>' with a personal access token "
    "(`modelyard tokens create`) or an OpenID Connect token of the configured issuer"
)


@dataclass(frozen=True)
class Principal:
    """An authenticated person (or tool acting for one)."""

    actor: str
    via: Literal["token", "oidc"]
    scopes: tuple[str, ...]
    role: Role | None = None  # granted by the IdP's groups; the actors table wins
    token_id: str | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes


class PeopleAuthenticator:
    """Access tokens from the store; OIDC tokens when an issuer is configured."""

    def __init__(self, store: Store, oidc: OIDCVerifier | None = None) -> None:
        self.store, self.oidc = store, oidc

    def authenticate(self, authorization: str | None) -> Principal:
        raw = _bearer(authorization)
        if raw.startswith(f"{KEY_PREFIX}_"):
            raise AuthError(
                "a tenant's API key does not open the admin API (it is for /v1 only)",
                hint=f"To operate the platform, {_HOW}.",
            )
        if is_actor_token(raw):
            token = authenticate_actor_token(self.store, raw)
            return Principal(token.actor, "token", token.scopes, token_id=token.id)
        if raw.count(".") == 2:
            if self.oidc is None:
                raise AuthError(
                    "OpenID Connect tokens are not accepted here: no issuer is configured",
                    hint="Set MODELYARD_OIDC_ISSUER and MODELYARD_OIDC_AUDIENCE, or use a "
                    "personal access token.",
                )
            identity = self.oidc.verify(raw)
            return Principal(identity.actor, "oidc", TOKEN_SCOPES, role=identity.role)
        raise AuthError("the bearer token is neither an access token nor a JWT", hint=_HOW)

    def actor_of(self, token: str) -> str:
        """The actor ``token`` authenticates as a bearer token (AuthError when refused)."""
        return self.authenticate(f"Bearer {token}").actor


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("the admin API needs a token", hint=f"{_HOW[0].upper()}{_HOW[1:]}.")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("the Authorization header is not 'Bearer <token>'", hint=f"Please {_HOW}.")
    return value.strip()


__all__ = ["PeopleAuthenticator", "Principal"]
