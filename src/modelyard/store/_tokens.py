"""Personal access tokens of actors: the people who operate the platform over HTTP.

A token authenticates an actor on the admin API (``/admin/v1``); what the actor
may do is still its role's business (``_core._require``). Only the SHA-256 of a
token's secret is stored, as for tenants' API keys. The row lives here rather
than in ``_schema`` with the others: it is this stage's only table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column

from modelyard.audit import Role
from modelyard.errors import ConfigError, NotFound
from modelyard.store import _audit
from modelyard.store._core import StoreCore
from modelyard.store._rows import get_locked
from modelyard.store._schema import Base, utcnow


class ActorTokenRow(Base):
    __tablename__ = "actor_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


@dataclass(frozen=True)
class ActorToken:
    """A personal access token as stored: never its secret, only the secret's hash."""

    id: str
    actor: str
    name: str
    token_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None


def _to_token(r: ActorTokenRow) -> ActorToken:
    return ActorToken(
        id=r.id,
        actor=r.actor,
        name=r.name,
        token_hash=r.token_hash,
        scopes=tuple(r.scopes),
        created_at=r.created_at,
        created_by=r.created_by,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
    )


MAX_TOKEN_NAME_CHARS = 200


def check_token_name(name: str, *, field: str = "name") -> str:
    """A token's name is shown to admins by `tokens list`: at most 200 printable characters
    (no control character: a terminal escape sequence, a tab, a newline). ``field`` names
    it in the error: ``name`` for the admin API (its 400's ``param``), ``--name`` for the CLI.
    """
    if len(name) > MAX_TOKEN_NAME_CHARS or not name.isprintable():
        what, example = ("token name", "") if field == "name" else (field, f"{field} ")
        shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)
        raise ConfigError(
            f"invalid {what} {shown[:60]}{'…' if len(shown) > 60 else ''}: use at most "
            f"{MAX_TOKEN_NAME_CHARS} printable characters (no control characters, tabs or "
            "newlines)",
            hint=f'Say what the token is for, e.g. {example}"console on my laptop".',
            field=field,
        )
    return name


def _not_found(token_id: str) -> NotFound:
    return NotFound(f"no access token with id {token_id!r}", hint="See `modelyard tokens list`.")


class TokenStore(StoreCore):
    """Personal access tokens: created, read, listed and revoked; every change audited.

    An actor may create and revoke its own tokens whatever its role; doing it for
    another actor needs role admin.
    """

    def create_actor_token(
        self,
        token_id: str,
        *,
        actor: str,
        token_hash: str,
        scopes: Sequence[str],
        expires_at: datetime | None,
        name: str = "",
    ) -> ActorToken:
        _audit.check_actor(actor)
        check_token_name(name)
        with self._write(f"create an access token for actor {actor!r}") as s:
            needed: Role = "viewer" if actor == self.actor else "admin"
            self._require(
                s, "actor_token.created", token_id,
                f"create access tokens for actor {actor!r}", needed,
            )  # fmt: skip
            row = ActorTokenRow(
                id=token_id, actor=actor, name=name, token_hash=token_hash,
                scopes=list(scopes), created_by=self.actor, expires_at=expires_at,
            )  # fmt: skip
            s.add(row)
            s.flush()
            self._audit(
                s, "actor_token.created", token_id,
                {"actor": actor, "name": name, "scopes": list(scopes), "expires_at": expires_at},
            )  # fmt: skip
            return _to_token(row)

    def get_actor_token(self, token_id: str) -> ActorToken | None:
        with self._session("read an access token") as s:
            row = s.get(ActorTokenRow, token_id)
            return None if row is None else _to_token(row)

    def list_actor_tokens(self, actor: str | None = None) -> list[ActorToken]:
        """Tokens, oldest first: ``actor``'s, or everyone's when None."""
        with self._session("list access tokens") as s:
            query = select(ActorTokenRow).order_by(ActorTokenRow.created_at)
            if actor is not None:
                query = query.where(ActorTokenRow.actor == actor)
            return [_to_token(r) for r in s.scalars(query)]

    def revoke_actor_token(self, token_id: str) -> ActorToken:
        """Revoke a token (the next request with it is refused); revoking twice is a no-op."""
        return self.revoke_actor_token_once(token_id)[0]

    def revoke_actor_token_once(self, token_id: str) -> tuple[ActorToken, bool]:
        """Revoke a token; returns it and whether this call revoked it. The row is locked:
        of two revocations at once, the second finds it revoked (False, not audited)."""
        with self._write(f"revoke access token {token_id}") as s:
            row = get_locked(s, ActorTokenRow, token_id)
            if row is None:
                raise _not_found(token_id)
            if row.revoked_at is not None:
                return _to_token(row), False
            needed: Role = "viewer" if row.actor == self.actor else "admin"
            self._require(
                s, "actor_token.revoked", token_id,
                f"revoke access tokens of actor {row.actor!r}", needed,
            )  # fmt: skip
            row.revoked_at = utcnow()
            self._audit(s, "actor_token.revoked", token_id, {"actor": row.actor})
            return _to_token(row), True
