"""The console's sessions in Redis, so that every replica serves every session.

``serve --redis-url`` (which also shares the rate limits) keeps the console's
sessions, the key that signs single sign-on flows and the count of failed logins
per address in Redis: a load balancer may send a browser's requests, or an
identity provider's redirect back, to any replica, and a restart logs nobody out.

A session is kept under the SHA-256 of its id, like ``MemoryTable``, and its
record (the person's token, refresh and ID tokens, CSRF token, actor and times)
is sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the session id
itself, which only the browser's cookie holds. Someone who reads Redis, or a
backup of it, learns which keys exist and when they were used, not a token: to
open a record one needs the cookie. The record is bound to its Redis key (the
key is the cipher's associated data), so records cannot be swapped.

Idle time is the key's expiry, pushed back at each request; the absolute end is
in the record. A login's bookkeeping (an actor's oldest sessions give way, then
the oldest of all) is one Lua script, atomic in Redis, over keys that share the
hash tag ``{console}``, so a Redis Cluster keeps them on one node as it must.
Renewing a single sign-on token takes a lock in Redis, so that two replicas do
not spend one refresh token twice (rotating identity providers refuse a reused
one and may end the whole sign-in).

When Redis cannot be reached (a 1 s timeout), requests through a session get a
503 ``sessions_unavailable`` with ``Retry-After``; Redis is asked again at most
once a second meanwhile, by one request at a time (the others get the 503 at
once). Nobody is logged out by an outage, and no replica falls back to sessions
of its own (a session found on one replica only would end at random as the load
balancer moves the browser).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelyard.console._sessions import TableFactory
from modelyard.console._tables import (
    KeyedLocks,
    MemoryTable,
    Session,
    SessionRules,
    session_key,
)
from modelyard.errors import SessionsUnavailable
from modelyard.redis_client import RedisDown, RedisLink, check_redis_url, redacted

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_S = 1.0
RETRY_DOWN_S = 1.0
RENEW_LOCK_S = 30.0
PREFIX = "modelyard:console:{console}:"  # one hash tag: one Redis Cluster node
SESSIONS = PREFIX + "session:"  # a session's record: SESSIONS + the SHA-256 of its id

# A login: the actor's ended sessions leave its set, its oldest give way down to
# max_per_actor - 1, then the oldest of all down to max_sessions - 1; the session is kept.
_ADD = """
local prefix, now, ttl = ARGV[8], tonumber(ARGV[3]), tonumber(ARGV[4])
local function sweep(set)
  for _, m in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    if redis.call('EXISTS', prefix .. m) == 0 then redis.call('ZREM', set, m) end
  end
end
sweep(KEYS[3])
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[7]) + 1
if extra > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, extra - 1)) do
    redis.call('DEL', prefix .. m)
    redis.call('ZREM', KEYS[2], m)
    redis.call('ZREM', KEYS[3], m)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then
  sweep(KEYS[2])
  while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) do
    local oldest = redis.call('ZPOPMIN', KEYS[2])
    redis.call('DEL', prefix .. oldest[1])
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', math.max(1, math.min(tonumber(ARGV[5]), ttl)))
-- a login's place after every earlier one, even in the same millisecond (or from a replica
-- whose clock is behind): "the oldest" is then the one that logged in first, never a tie
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local at = now
if newest[2] and tonumber(newest[2]) >= at then at = tonumber(newest[2]) + 1 end
redis.call('ZADD', KEYS[2], at, ARGV[2])
redis.call('ZADD', KEYS[3], at, ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""

# The live sessions: those whose key still exists (idle ones expired by themselves).
_COUNT = """
local prefix = ARGV[1]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]))
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', prefix .. m) == 0 then redis.call('ZREM', KEYS[1], m) end
end
return redis.call('ZCARD', KEYS[1])
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SharedConsole:
    """One Redis for the console's shared state, reached lazily, with the outage rule of
    the module's docstring (``call``; ``redis_client.RedisLink``, as the limits')."""

    def __init__(self, url: str) -> None:
        """ConfigError for a URL the client cannot use (a port that is not a number): at
        start, not at each request."""
        self.url = check_redis_url(url)
        self.link = RedisLink(self.url, timeout_s=TIMEOUT_S, retry_s=RETRY_DOWN_S,
                              on_down=self._said_down, on_back=self._said_back)  # fmt: skip

    def call(self, action: Callable[[Any], T]) -> T:
        """``action(client)``; SessionsUnavailable (503) when Redis cannot be reached.
        While it is down, one request at a time asks it again (after ``RETRY_DOWN_S``):
        the others are answered at once rather than each holding a thread for the
        client's timeout."""
        try:
            return self.link.call(action)
        except RedisDown:
            raise self._unavailable() from None

    @staticmethod
    def _unavailable() -> SessionsUnavailable:
        return SessionsUnavailable(
            "the console's sessions cannot be read: their shared store (Redis) cannot be reached",
            retry_after=max(1, math.ceil(RETRY_DOWN_S)),
        )

    def script(self, name: str, source: str) -> Any:
        """A registered Lua script of the client (``call`` it inside an action)."""
        return self.link.script(name, source)

    def _said_down(self, exc: Exception) -> None:
        log.warning("console: Redis (%s) cannot be reached (%s): console sessions get 503 "
                    "until it answers", redacted(self.url), type(exc).__name__)  # fmt: skip

    @staticmethod
    def _said_back() -> None:
        log.warning("console: Redis answers again: console sessions are served again")

    def close(self) -> None:
        self.link.close()


def _cipher(session_id: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"modelyard console session record").derive(session_id.encode())  # fmt: skip
    return AESGCM(key)


def seal(session_id: str, where: str, record: dict[str, Any]) -> bytes:
    """``record`` as JSON, encrypted and authenticated under the session id's key."""
    nonce = secrets.token_bytes(12)
    return nonce + _cipher(session_id).encrypt(nonce, json.dumps(record).encode(), where.encode())


def unseal(session_id: str, where: str, blob: bytes) -> dict[str, Any] | None:
    """The record ``seal`` wrote; None when it was not sealed under this id and key."""
    try:
        plain = _cipher(session_id).decrypt(blob[:12], blob[12:], where.encode())
    except (InvalidTag, ValueError):
        return None
    record = json.loads(plain)
    return record if isinstance(record, dict) else None


class RedisTable:
    """The console's sessions in Redis (the module's docstring); a ``SessionTable``."""

    shared = True

    def __init__(self, redis: SharedConsole, rules: SessionRules) -> None:
        self.redis, self.rules = redis, rules
        self._renewals = KeyedLocks()

    def add(self, session_id: str, session: Session, now: float) -> None:
        where = SESSIONS + session.key
        blob = seal(session_id, where, _record(session))
        args = [
            blob, session.key, int(now * 1000), int(self.rules.ttl_s * 1000),
            int(self.rules.idle_s * 1000), self.rules.max_sessions, self.rules.max_per_actor,
            SESSIONS,
        ]  # fmt: skip
        keys = [where, PREFIX + "all", PREFIX + "actor:" + session_key(session.actor)]
        self.redis.call(lambda _: self.redis.script("add", _ADD)(keys=keys, args=args))

    def get(self, session_id: str, now: float) -> Session | None:
        key = session_key(session_id)
        where = SESSIONS + key
        idle_ms = max(1, int(self.rules.idle_s * 1000))

        def read(client: Any) -> Any:
            pipe = client.pipeline()
            pipe.get(where)
            pipe.pexpire(where, idle_ms)
            return pipe.execute()[0]

        blob = self.redis.call(read)
        record = unseal(session_id, where, blob) if blob else None
        if record is None:
            return None
        session = _session(key, record, now)
        if now >= session.expires:
            self.pop(session_id)
            return None
        return session

    def save(self, session_id: str, session: Session) -> None:
        where = SESSIONS + session.key
        blob = seal(session_id, where, _record(session))
        self.redis.call(lambda client: client.set(where, blob, xx=True, keepttl=True))

    def pop(self, session_id: str) -> Session | None:
        key = session_key(session_id)
        where = SESSIONS + key
        blob = self.redis.call(lambda client: client.getdel(where))
        record = unseal(session_id, where, blob) if blob else None
        if record is None:
            return None
        session = _session(key, record, time.time())
        actor_set = PREFIX + "actor:" + session_key(session.actor)

        def forget(client: Any) -> None:
            pipe = client.pipeline()
            pipe.zrem(PREFIX + "all", key)
            pipe.zrem(actor_set, key)
            pipe.execute()

        # The session has ended: if Redis fails now, what its login counts left behind
        # is swept by the next login and count (their key is gone).
        with contextlib.suppress(SessionsUnavailable):
            self.redis.call(forget)
        return session

    def count(self, now: float) -> int:
        args = [SESSIONS, int((now - self.rules.ttl_s) * 1000)]
        keys = [PREFIX + "all"]
        return int(self.redis.call(lambda _: self.redis.script("count", _COUNT)(keys, args)))

    @contextlib.contextmanager
    def renewing(self, session_id: str) -> Iterator[None]:
        """This process's lock for the session, then Redis's (``RENEW_LOCK_S`` at most:
        a replica that died holding it does not block the session longer)."""
        key = session_key(session_id)
        lock, mine = PREFIX + "renew:" + key, secrets.token_hex(16)
        with self._renewals.hold(key):
            deadline = time.monotonic() + RENEW_LOCK_S + 5
            lock_ms = int(RENEW_LOCK_S * 1000)
            while not self.redis.call(lambda c: c.set(lock, mine, nx=True, px=lock_ms)):
                if time.monotonic() > deadline:
                    raise SessionsUnavailable(
                        "another replica is renewing this console session's token and has "
                        "not finished", retry_after=5,
                    )  # fmt: skip
                time.sleep(0.05)
            try:
                yield
            finally:
                with contextlib.suppress(SessionsUnavailable):  # it expires by itself
                    self.redis.call(lambda _: self.redis.script("unlock", _UNLOCK)([lock], [mine]))

    def flow_key(self) -> bytes:
        """A random key kept in Redis, made by the first replica that needs one."""
        where = PREFIX + "flow-key"

        def read(client: Any) -> Any:
            pipe = client.pipeline()
            pipe.set(where, secrets.token_hex(32), nx=True)
            pipe.get(where)
            return pipe.execute()[1]

        return bytes.fromhex(self.redis.call(read).decode())


def shared_tables(redis_url: str | None) -> tuple[TableFactory, SharedConsole | None]:
    """Where sessions are kept, and the Redis failed logins are counted in: Redis at
    ``redis_url`` for every replica, else this process's memory (and no Redis)."""
    if redis_url is None:
        return MemoryTable, None
    shared = SharedConsole(redis_url)
    return functools.partial(RedisTable, shared), shared


def _record(session: Session) -> dict[str, Any]:
    return {
        "token": session.token, "actor": session.actor, "csrf": session.csrf_token,
        "started": session.started, "expires": session.expires,
        "refresh_token": session.refresh_token, "id_token": session.id_token,
    }  # fmt: skip


def _session(key: str, record: dict[str, Any], now: float) -> Session:
    return Session(
        key=key, token=record["token"], actor=record["actor"], csrf_token=record["csrf"],
        started=record["started"], expires=record["expires"], last_seen=now,
        refresh_token=record["refresh_token"], id_token=record["id_token"],
    )  # fmt: skip


__all__ = ["PREFIX", "RedisTable", "SharedConsole", "seal", "shared_tables", "unseal"]
