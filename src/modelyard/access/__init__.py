"""Access: tenants' API keys (actors and their roles are checked by the store).

A key looks like ``myk_<id>_<secret><check>``: a recognizable prefix, a public
id (the store's primary key), a random secret and a 6-character checksum, so a
malformed or mistyped key is refused without a store lookup. Only the SHA-256
of the secret is stored; comparison is constant-time.

``rotate_api_key`` replaces a key by a new one (same tenant, scopes and rate
limits) and lets the old one work for a grace period; keys may carry their own
requests/min and tokens/min (``rpm_limit``, ``tpm_limit``).

People who operate the platform authenticate on the admin API with personal
access tokens (``myp_…``, ``create_actor_token``; scopes ``read``, ``write``) or
OpenID Connect bearer tokens (``OIDCVerifier`` over the issuer's JWKS, cached by
``JWKSCache``); ``PeopleAuthenticator`` turns either into a ``Principal`` and
refuses tenants' keys. ``OIDCLogin`` is the console's single sign-on (the
authorization code flow with PKCE, configured by ``SSOConfig``).
"""

from modelyard.access._keys import (
    KEY_PREFIX,
    SCOPES,
    authenticate,
    create_api_key,
    parse_scopes,
    rotate_api_key,
    split_key,
    verify_api_key,
)
from modelyard.access._oidc import (
    JWKSCache,
    OIDCConfig,
    OIDCIdentity,
    OIDCVerifier,
    parse_group_roles,
)
from modelyard.access._oidc_login import OIDCLogin, PendingLogin, SignedIn, SSOConfig
from modelyard.access._people import PeopleAuthenticator, Principal
from modelyard.access._tokens import (
    TOKEN_PREFIX,
    TOKEN_SCOPES,
    authenticate_actor_token,
    create_actor_token,
    parse_token_scopes,
)
from modelyard.durations import parse_duration  # `keys --expires/--grace` read it here

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "TOKEN_PREFIX",
    "TOKEN_SCOPES",
    "JWKSCache",
    "OIDCConfig",
    "OIDCIdentity",
    "OIDCLogin",
    "OIDCVerifier",
    "PendingLogin",
    "PeopleAuthenticator",
    "Principal",
    "SSOConfig",
    "SignedIn",
    "authenticate",
    "authenticate_actor_token",
    "create_actor_token",
    "create_api_key",
    "parse_duration",
    "parse_group_roles",
    "parse_scopes",
    "parse_token_scopes",
    "rotate_api_key",
    "split_key",
    "verify_api_key",
]
