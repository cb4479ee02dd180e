"""Where the console's sessions are kept: this process's memory, or Redis for every replica.

``ConsoleSessions`` decides what a session may do; a ``SessionTable`` keeps them
under the rules of ``SessionRules`` (how long a session lives, how long it may
stay idle, how many one actor and everyone together may hold). ``MemoryTable``
is one server's dict: a restart ends every session, and replicas behind a load
balancer need sticky sessions. ``console._shared.RedisTable`` keeps the same
table in Redis (``serve --redis-url``), so any replica serves any session.

Both tables answer the same way: a session is found by the id its browser
holds (only its SHA-256 is a key), is alive until ``ttl_s`` after its start and
while requests come less than ``idle_s`` apart, and at a login an actor's oldest
sessions give way to keep it under ``max_per_actor``, then the oldest of all
under ``max_sessions`` (never another actor's to make room for one actor's
logins, unless the table is full).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Session:
    """One logged-in browser. ``token`` never leaves the server."""

    key: str  # SHA-256 of the session id: the id itself is not kept
    token: str
    actor: str
    csrf_token: str
    started: float  # the clock's seconds (wall clock in Redis, monotonic in memory)
    expires: float  # absolute end (ttl_s after the start)
    last_seen: float
    refresh_token: str | None = None  # single sign-on: renews ``token`` when it expires
    id_token: str | None = None  # single sign-on: the identity provider's logout hint

    @property
    def short_id(self) -> str:
        """A name for the session in logs and audit events that does not reveal it."""
        return self.key[:12]


@dataclass(frozen=True)
class SessionRules:
    """How long sessions live and how many a table holds (``ConsoleSessions``' arguments)."""

    ttl_s: float = 8 * 3600
    idle_s: float = 1800
    max_sessions: int = 10_000
    max_per_actor: int = 50

    def alive(self, session: Session, now: float) -> bool:
        return now < session.expires and now - session.last_seen < self.idle_s


def session_key(session_id: str) -> str:
    """The key a session is kept under: the SHA-256 of the id, never the id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionTable(Protocol):
    """What ``ConsoleSessions`` needs of the place its sessions are kept."""

    shared: bool  # whether every replica reads the same table

    def add(self, session_id: str, session: Session, now: float) -> None:
        """Keep a new session, making room under the rules first."""

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session of ``session_id``, its idle time started again; None when
        there is none (a dead one is removed)."""

    def save(self, session_id: str, session: Session) -> None:
        """Keep a session's renewed tokens."""

    def pop(self, session_id: str) -> Session | None:
        """End a session: the one that was kept, if any."""

    def count(self, now: float) -> int:
        """The live sessions."""

    def renewing(self, session_id: str) -> AbstractContextManager[None]:
        """A context where this request alone (of every replica) renews the session."""

    def flow_key(self) -> bytes:
        """The key that signs single sign-on flow cookies, the same on every replica."""


class KeyedLocks:
    """One ``threading.Lock`` per key while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class MemoryTable:
    """The sessions of one server, in its memory (the module's docstring)."""

    shared = False

    def __init__(self, rules: SessionRules) -> None:
        self.rules = rules
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest start first
        self._lock = threading.Lock()
        self._renewals = KeyedLocks()
        self._flow_key = secrets.token_bytes(32)  # a restart ends the sign-ins under way

    def add(self, session_id: str, session: Session, now: float) -> None:
        with self._lock:
            self._sweep(now)
            # One actor's logins make way for each other, never for someone else's: a
            # person (or a script) logging in over and over cannot log everyone else out.
            own = [k for k, v in self._sessions.items() if v.actor == session.actor]
            for key in own[: max(0, len(own) - self.rules.max_per_actor + 1)]:
                del self._sessions[key]  # that actor's oldest logins give way
            while len(self._sessions) >= self.rules.max_sessions:
                self._sessions.popitem(last=False)  # the oldest login gives way
            self._sessions[session.key] = session

    def get(self, session_id: str, now: float) -> Session | None:
        key = session_key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if not self.rules.alive(session, now):
                del self._sessions[key]
                return None
            session.last_seen = now
            return session

    def save(self, session_id: str, session: Session) -> None:
        """Nothing to do: the session found is the one kept."""

    def pop(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.pop(session_key(session_id), None)

    def count(self, now: float) -> int:
        with self._lock:
            self._sweep(now)
            return len(self._sessions)

    @contextmanager
    def renewing(self, session_id: str) -> Iterator[None]:
        with self._renewals.hold(session_key(session_id)):
            yield

    def flow_key(self) -> bytes:
        return self._flow_key

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if not self.rules.alive(s, now)]:
            del self._sessions[key]


__all__ = ["KeyedLocks", "MemoryTable", "Session", "SessionRules", "SessionTable", "session_key"]
