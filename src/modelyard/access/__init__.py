"""Access: tenants' API keys (actors and their roles are checked by the store).

A key looks like ``myk_<id>_<secret><check>``: a recognizable prefix, a public
id (the store's primary key), a random secret and a 6-character checksum, so a
malformed or mistyped key is refused without a store lookup. Only the SHA-256
of the secret is stored; comparison is constant-time.

``rotate_api_key`` replaces a key by a new one (same tenant, scopes and rate
limits) and lets the old one work for a grace period; keys may carry their own
requests/min and tokens/min (``rpm_limit``, ``tpm_limit``).
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
from modelyard.durations import parse_duration  # `keys --expires/--grace` read it here

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "authenticate",
    "create_api_key",
    "parse_duration",
    "parse_scopes",
    "rotate_api_key",
    "split_key",
    "verify_api_key",
]
