"""API keys of tenants: format, checksum, hashing, verification, rotation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from modelyard.errors import ConfigError, InvalidApiKey, NotFound
from modelyard.store import ApiKey, Store

KEY_PREFIX = "myk"
SCOPES = ("infer", "feedback")
_ALPHABET = string.ascii_letters + string.digits
_ID_LEN, _SECRET_LEN, _CHECK_LEN = 12, 32, 6


def _checksum(body: str) -> str:
    return f"{zlib.crc32(body.encode()):08x}"[:_CHECK_LEN]


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(raw: str | Sequence[str]) -> tuple[str, ...]:
    """``"infer,feedback"`` or a list → validated scopes."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ConfigError(
            f"invalid scopes {', '.join(unknown) or '(none)'}: use a comma-separated subset of "
            f"{', '.join(SCOPES)}"
        )
    return scopes


def _new_key(prefix: str = KEY_PREFIX) -> tuple[str, str, str]:
    """A fresh (key id, secret, the whole key to show once); actors' tokens use their
    own ``prefix``."""
    key_id = "".join(secrets.choice(_ALPHABET) for _ in range(_ID_LEN))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))
    body = f"{prefix}_{key_id}_{secret}"
    return key_id, secret, body + _checksum(body)


def _secret_matches(stored_hash: str, secret: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash`` (constant-time comparison)."""
    return hmac.compare_digest(stored_hash, _hash_secret(secret))


def expiry_after(lifetime: timedelta | None, field: str = "expires") -> datetime | None:
    """When something created now with ``lifetime`` expires (None: never). A lifetime under
    a second is refused: a zero timedelta would otherwise read as "never expires"."""
    if lifetime is None:
        return None
    if lifetime < timedelta(seconds=1):
        raise ConfigError(
            f"a lifetime of {lifetime.total_seconds():g} s is too short: give 1s or more "
            "(or no expiry at all, explicitly)",
            field=field,
        )
    return datetime.now(UTC) + lifetime


def create_api_key(
    store: Store,
    tenant: str,
    *,
    scopes: Sequence[str] = SCOPES,
    expires_in: timedelta | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant``; returns the stored key and the secret (shown once).

    ``rpm_limit`` (requests/min) and ``tpm_limit`` (tokens/min) are per key; None
    leaves the server's ``--default-rpm`` / ``--default-tpm``.
    """
    scopes = parse_scopes(scopes)
    expires_at = expiry_after(expires_in)
    key_id, secret, full = _new_key()
    key = store.create_api_key(
        key_id,
        tenant=tenant,
        key_hash=_hash_secret(secret),
        scopes=scopes,
        expires_at=expires_at,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
    )
    return key, full


def rotate_api_key(
    store: Store,
    key_id: str,
    grace: timedelta = timedelta(hours=24),
    *,
    expires_in: timedelta | None = None,
) -> tuple[ApiKey, str]:
    """Replace key ``key_id`` by a new one for the same tenant, scopes, limits and budgets.

    The old key keeps working for ``grace`` (then expires; an earlier expiry
    stays) and records ``rotated_to``. The new key expires after ``expires_in``,
    or, when None, after the lifetime the old key was created with (never, if
    it had none). Returns the new stored key and its secret (shown once).
    """
    old = store.get_api_key(key_id)
    if old is None:
        raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
    new_expires_at = expiry_after(expires_in)
    if expires_in is None and old.expires_at is not None and old.rotated_to is None:
        new_expires_at = datetime.now(UTC) + (old.expires_at - old.created_at)
    new_id, secret, full = _new_key()
    _, new = store.rotate_api_key(
        key_id,
        new_key_id=new_id,
        new_key_hash=_hash_secret(secret),
        grace=grace,
        new_expires_at=new_expires_at,
    )
    return new, full


def split_key(raw: str, prefix: str = KEY_PREFIX, what: str = "API key") -> tuple[str, str]:
    """Check a presented key's shape and checksum; return (key id, secret)."""
    parts = raw.split("_")
    if len(parts) != 3 or parts[0] != prefix:
        raise InvalidApiKey(f"the {what} is malformed (expected {prefix}_<id>_<secret>)")
    key_id, tail = parts[1], parts[2]
    secret, check = tail[:-_CHECK_LEN], tail[-_CHECK_LEN:]
    body = f"{prefix}_{key_id}_{secret}"
    if len(key_id) != _ID_LEN or len(secret) != _SECRET_LEN or _checksum(body) != check:
        raise InvalidApiKey(f"the {what} is malformed or mistyped (checksum mismatch)")
    return key_id, secret


def verify_api_key(key: ApiKey | None, secret: str, *, now: datetime | None = None) -> ApiKey:
    """Check a stored key against a presented secret: hash, revocation and expiry."""
    if key is None or not _secret_matches(key.key_hash, secret):
        raise InvalidApiKey("the API key is not valid")
    now = now or datetime.now(UTC)
    if key.revoked_at is not None and key.revoked_at <= now:
        raise InvalidApiKey("the API key was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidApiKey("the API key has expired")
    return key


def authenticate(store: Store, raw: str) -> ApiKey:
    """The stored key behind ``raw``, or InvalidApiKey."""
    key_id, secret = split_key(raw)
    return verify_api_key(store.get_api_key(key_id), secret)


__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "authenticate",
    "create_api_key",
    "parse_scopes",
    "rotate_api_key",
    "split_key",
    "verify_api_key",
]
