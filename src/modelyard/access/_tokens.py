"""Personal access tokens of actors: format, scopes, creation and verification.

A token looks like ``myp_<id>_<secret><check>``, built and checked by the same
code as tenants' API keys (``_keys``) with its own prefix, so that neither is
ever taken for the other: a tenant's key never opens the admin API. Only the
SHA-256 of the secret is stored; comparison is constant-time.

Scopes: ``read`` (every GET of the admin API) and ``write`` (every change; the
actor's role still decides which changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from modelyard.access._keys import (
    _hash_secret,
    _new_key,
    _secret_matches,
    expiry_after,
    split_key,
)
from modelyard.errors import AuthError, ConfigError, InvalidApiKey
from modelyard.store import ActorToken, Store

TOKEN_PREFIX = "myp"
TOKEN_SCOPES = ("read", "write")
_NEW_TOKEN = "Create a new one: `modelyard tokens create`."


def parse_token_scopes(raw: str | Sequence[str]) -> tuple[str, ...]:
    """``"read,write"`` or a list → validated scopes of an access token."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    unknown = [s for s in scopes if s not in TOKEN_SCOPES]
    if not scopes or unknown:
        raise ConfigError(
            f"invalid token scopes {', '.join(unknown) or '(none)'}: use a comma-separated "
            f"subset of {', '.join(TOKEN_SCOPES)}"
        )
    return scopes


def create_actor_token(
    store: Store,
    actor: str,
    *,
    scopes: Sequence[str] = TOKEN_SCOPES,
    expires_in: timedelta | None = timedelta(days=90),
    name: str = "",
) -> tuple[ActorToken, str]:
    """Create a token for ``actor`` (the store's actor, or another one by an admin);
    returns the stored token and the token itself, to show once."""
    scopes = parse_token_scopes(scopes)
    expires_at = expiry_after(expires_in)
    token_id, secret, full = _new_key(TOKEN_PREFIX)
    token = store.create_actor_token(
        token_id,
        actor=actor,
        token_hash=_hash_secret(secret),
        scopes=scopes,
        expires_at=expires_at,
        name=name,
    )
    return token, full


def is_actor_token(raw: str) -> bool:
    """Whether ``raw`` has the shape of an access token (not whether it is valid)."""
    return raw.startswith(f"{TOKEN_PREFIX}_")


def verify_actor_token(
    token: ActorToken | None, secret: str, *, now: datetime | None = None
) -> ActorToken:
    """Check a stored token against a presented secret: hash, revocation and expiry."""
    if token is None or not _secret_matches(token.token_hash, secret):
        raise AuthError("the access token is not valid")
    now = now or datetime.now(UTC)
    if token.revoked_at is not None and token.revoked_at <= now:
        raise AuthError(f"the access token {token.id} was revoked", hint=_NEW_TOKEN)
    if token.expires_at is not None and token.expires_at <= now:
        raise AuthError(f"the access token {token.id} has expired", hint=_NEW_TOKEN)
    return token


def authenticate_actor_token(store: Store, raw: str) -> ActorToken:
    """The stored token behind ``raw``, or AuthError (401)."""
    try:
        token_id, secret = split_key(raw, TOKEN_PREFIX, "access token")
    except InvalidApiKey as exc:  # its hint is about tenants' keys
        raise AuthError(exc.message, hint=_NEW_TOKEN) from None
    return verify_actor_token(store.get_actor_token(token_id), secret)


__all__ = [
    "TOKEN_PREFIX",
    "TOKEN_SCOPES",
    "authenticate_actor_token",
    "create_actor_token",
    "is_actor_token",
    "parse_token_scopes",
    "verify_actor_token",
]
