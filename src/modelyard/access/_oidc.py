"""OpenID Connect bearer tokens: JWTs checked against the issuer's published keys (JWKS).

A token is accepted when its signature verifies with a key of the issuer's JWKS
(an asymmetric algorithm only: never ``none`` or a shared secret), and its
``iss``, ``aud`` and ``exp`` claims are the configured issuer, audience and not
past (with ``leeway_s``). The actor is the ``actor_claim`` (default ``sub``);
groups in ``groups_claim`` mapped by ``group_roles`` grant a role.

Keys are cached (``JWKSCache``) for ``ttl_s``; a token signed by a key the cache
does not know (the issuer rotated its keys) fetches them again, at most once per
``refresh_s``, so that unknown ``kid``s cannot make the server hammer the issuer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from modelyard.audit import Role, check_role, role_rank
from modelyard.errors import AuthError, ConfigError, IdentityProviderUnavailable
from modelyard.settings import Settings

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
MAX_DOCUMENT_BYTES = 1 << 20
Fetch = Callable[[str], Mapping[str, Any]]


def parse_group_roles(raw: str) -> dict[str, Role]:
    """``"ml-admins=admin, ml-leads=approver"`` → ``{"ml-admins": "admin", ...}``."""
    roles: dict[str, Role] = {}
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        group, sep, role = item.rpartition("=")
        if not sep or not group.strip():
            raise ConfigError(
                f"invalid group mapping {item!r} in MODELYARD_OIDC_GROUP_ROLES: use GROUP=ROLE, "
                "e.g. ml-admins=admin,ml-leads=approver"
            )
        try:
            granted = check_role(role.strip())
        except ConfigError as exc:
            raise ConfigError(
                f"invalid group mapping {item!r} in MODELYARD_OIDC_GROUP_ROLES: {exc.message}",
                hint="Use GROUP=ROLE with a role in lower case, e.g. ml-admins=admin.",
                field="MODELYARD_OIDC_GROUP_ROLES",
            ) from None
        earlier = roles.setdefault(group.strip(), granted)
        if earlier != granted:  # which one was meant? neither is taken silently
            raise ConfigError(
                f"the group {group.strip()!r} is mapped twice in MODELYARD_OIDC_GROUP_ROLES, "
                f"to {earlier} and to {granted}",
                hint="Keep one GROUP=ROLE entry per group.",
                field="MODELYARD_OIDC_GROUP_ROLES",
            )
    return roles


@dataclass(frozen=True)
class OIDCConfig:
    """Which issuer's tokens open the admin API, and how a token names its actor and role."""

    issuer: str
    audience: str
    jwks_url: str | None = None  # None: the issuer's discovery document names it
    actor_claim: str = "sub"
    groups_claim: str = "groups"
    group_roles: Mapping[str, Role] = field(default_factory=dict)
    refresh_s: float = 30.0
    ttl_s: float = 3600.0
    leeway_s: int = 30
    algorithms: tuple[str, ...] = ALGORITHMS

    def __post_init__(self) -> None:
        _check_url(self.jwks_url or self.issuer)

    @classmethod
    def from_settings(cls, settings: Settings) -> OIDCConfig | None:
        """The configuration of ``MODELYARD_OIDC_*``; None when no issuer is set."""
        if not settings.oidc_issuer:
            return None
        # The console's client id is the audience of its ID tokens: the default one.
        audience = settings.oidc_audience or settings.oidc_client_id
        if not audience:
            raise ConfigError(
                "MODELYARD_OIDC_ISSUER is set but MODELYARD_OIDC_AUDIENCE is not",
                hint="Set it to the client id (the aud claim) your IdP puts in the tokens.",
            )
        return cls(
            issuer=settings.oidc_issuer,
            audience=audience,
            jwks_url=settings.oidc_jwks_url,
            actor_claim=settings.oidc_actor_claim,
            groups_claim=settings.oidc_groups_claim,
            group_roles=parse_group_roles(settings.oidc_group_roles),
            refresh_s=settings.oidc_jwks_refresh_s,
        )


@dataclass(frozen=True)
class OIDCIdentity:
    """Who a verified token names: the actor, the role its groups grant (None: none
    mapped) and every claim."""

    actor: str
    role: Role | None
    claims: Mapping[str, Any]


def _check_url(url: str) -> str:
    """https, or http to this machine only (a test IdP, a sidecar)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return url
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if parts.scheme == "http" and local:
        return url
    raise ConfigError(f"the OIDC URL {url!r} must use https (http only to 127.0.0.1)")


def fetch_json(url: str) -> Mapping[str, Any]:
    """GET a JSON document (the discovery document, the JWKS), at most 1 MiB, 5 s."""
    with urllib.request.urlopen(_check_url(url), timeout=5) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


class JWKSCache:
    """The issuer's keys, fetched when first needed, again after ``ttl_s``, and again
    for an unknown ``kid`` at most once per ``refresh_s``."""

    def __init__(
        self,
        config: OIDCConfig,
        *,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self._fetch_json, self._clock = config, fetch, clock
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        self.fetches = 0

    def keys_for(self, kid: str | None) -> KeySet:
        with self._lock:
            age = self._clock() - self._fetched_at
            stale = self._keys is None or age >= self.config.ttl_s
            unknown = kid is not None and kid not in self._kids and age >= self.config.refresh_s
            if stale or unknown:
                self._refresh()
            assert self._keys is not None  # _refresh sets it or raises
            return self._keys

    def _jwks_url(self) -> str:
        if self.config.jwks_url:
            return self.config.jwks_url
        discovery = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        url = self._fetch_json(discovery).get("jwks_uri")
        if not isinstance(url, str):
            raise ValueError(f"{discovery} names no jwks_uri")
        return url

    def _refresh(self) -> None:
        self._fetched_at = self._clock()  # a failure waits refresh_s too before the next try
        self.fetches += 1
        try:
            keys = KeySet.import_key_set(self._fetch_json(self._jwks_url()))  # type: ignore[arg-type]
        except (OSError, ValueError, JoseError) as exc:
            log.warning("cannot fetch the OIDC issuer's keys: %s", exc)
            if self._keys is None:
                raise IdentityProviderUnavailable(
                    "the identity provider's keys cannot be fetched, so no OIDC token can be "
                    "checked now"
                ) from exc
            return  # keep the keys we have
        self._keys = keys
        self._kids = frozenset(k.kid for k in keys.keys if k.kid)


class OIDCVerifier:
    """Checks a bearer JWT against ``config``; ``verify`` → ``OIDCIdentity`` or AuthError."""

    def __init__(self, config: OIDCConfig, *, cache: JWKSCache | None = None) -> None:
        self.config = config
        self.cache = cache or JWKSCache(config)
        self._claims = jwt.JWTClaimsRegistry(
            leeway=config.leeway_s,
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "value": config.audience},
            exp={"essential": True},
        )

    def verify(self, raw: str) -> OIDCIdentity:
        try:
            header = jws.extract_compact(raw.encode()).headers()
        except (JoseError, ValueError, TypeError):
            raise AuthError("the bearer token is not a valid JWT") from None
        kid = header.get("kid")
        keys = self.cache.keys_for(kid if isinstance(kid, str) else None)
        try:
            token = jwt.decode(raw, keys, algorithms=list(self.config.algorithms))
        except InvalidKeyIdError:
            raise AuthError(
                f"the token is signed by a key the issuer does not publish (kid {kid!r})"
            ) from None
        except BadSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except (JoseError, ValueError, TypeError) as exc:
            raise AuthError(f"the token cannot be verified: {_reason(exc)}") from None
        try:
            self._claims.validate(token.claims)
        except ExpiredTokenError:
            raise AuthError("the token has expired", hint="Log in again.") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            raise AuthError(f"the token was refused: {_reason(exc)}") from None
        except JoseError as exc:
            raise AuthError(f"the token was refused: {_reason(exc)}") from None
        return OIDCIdentity(self._actor(token.claims), self._role(token.claims), token.claims)

    def _actor(self, claims: Mapping[str, Any]) -> str:
        actor = claims.get(self.config.actor_claim)
        if not isinstance(actor, str) or not actor or len(actor) > 200 or actor != actor.strip():
            raise AuthError(f"the token has no usable {self.config.actor_claim!r} claim")
        if any(c.isspace() or ord(c) < 32 for c in actor):
            raise AuthError(f"the token's {self.config.actor_claim!r} claim is not an actor name")
        return actor

    def _role(self, claims: Mapping[str, Any]) -> Role | None:
        groups = claims.get(self.config.groups_claim)
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list):
            return None
        granted: list[Role] = [  # names only: an IdP may send objects, which grant nothing
            self.config.group_roles[g]
            for g in groups
            if isinstance(g, str) and g in self.config.group_roles
        ]
        if not granted:
            return None
        return max(granted, key=role_rank)


def _reason(exc: Exception) -> str:
    description = getattr(exc, "description", None) or getattr(exc, "error", None)
    return str(description or exc.__class__.__name__)


__all__ = [
    "ALGORITHMS",
    "JWKSCache",
    "OIDCConfig",
    "OIDCIdentity",
    "OIDCVerifier",
    "fetch_json",
    "parse_group_roles",
]
