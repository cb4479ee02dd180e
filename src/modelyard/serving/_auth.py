"""Who is calling: API keys from the ``Authorization`` header, authenticated through a
short cache, and the scope each route needs (``infer``, ``feedback``)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Request

from modelyard.access import authenticate
from modelyard.errors import AuthError, InvalidApiKey, MissingScope
from modelyard.serving._batch_context import CURRENT
from modelyard.store import ApiKey, Store

# Query parameters that carry credentials: refused, and redacted from access logs (_server).
CREDENTIAL_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "secret", "password"}
)


class KeyCache:
    """Authenticated keys cached briefly, so a revocation takes effect within the TTL."""

    def __init__(self, store: Store, ttl: float) -> None:
        self._store, self._ttl = store, ttl
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def peek(self, raw: str) -> ApiKey | None:
        """The key behind ``raw`` when it is cached and valid, else None (never the store)."""
        digest = hashlib.sha256(raw.encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is None or hit[0] <= time.monotonic():
            return None
        expires = hit[1].expires_at
        return None if expires is not None and expires <= datetime.now(UTC) else hit[1]

    def get(self, raw: str) -> ApiKey:
        digest = hashlib.sha256(raw.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and hit[0] > now:
            expires = hit[1].expires_at
            if expires is not None and expires <= datetime.now(UTC):  # e.g. a rotation's grace
                raise InvalidApiKey("the API key has expired")
            return hit[1]
        key = authenticate(self._store, raw)
        with self._lock:
            self._cache[digest] = (now + self._ttl, key)
        return key


def _key_with(scope: str) -> Callable[..., ApiKey]:
    """A dependency: the caller's API key, authenticated (cached briefly), holding ``scope``."""

    def current_key(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> ApiKey:
        plane = getattr(request.app.state, "plane", None)
        call = CURRENT.get()  # a batch's line, asked in this process as the batch's key
        try:
            key = call.key if call is not None else _authenticate(request, authorization)
        except AuthError as refused:  # counted, never stored (no tenant to store it under)
            if plane is not None:
                plane.count_refusal("", refused)
            raise
        if scope not in key.scopes:
            missing = MissingScope(f"this API key lacks the {scope!r} scope")
            if plane is not None:
                plane.count_refusal(key.tenant, missing)
            raise missing
        return key

    return current_key


def _authenticate(request: Request, authorization: str | None) -> ApiKey:
    # A credential in the URL is refused even beside a good header: it has been sent where
    # proxies and logs keep it, and only a refusal tells the client so.
    in_url = sorted(CREDENTIAL_PARAMS & {p.lower() for p in request.query_params})
    if in_url:
        raise AuthError(
            f"API keys are not accepted in the URL (query parameter {in_url[0]!r}): "
            "send 'Authorization: Bearer <key>' instead",
            hint="A key sent in a URL may be logged on the way; rotate it "
            "(`modelyard keys rotate`).",
        )
    if not authorization or not authorization.strip():
        raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, raw = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        sent = "no key after 'Bearer'" if scheme.lower() == "bearer" else f"scheme {scheme[:20]!r}"
        raise AuthError(
            f"the Authorization header holds {sent}: send 'Authorization: Bearer <key>'"
        )
    keys: KeyCache = request.app.state.keys
    return keys.get(raw.strip())


KeyDep = Annotated[ApiKey, Depends(_key_with("infer"))]
FeedbackKeyDep = Annotated[ApiKey, Depends(_key_with("feedback"))]


__all__ = ["CREDENTIAL_PARAMS", "FeedbackKeyDep", "KeyCache", "KeyDep"]
