"""The store's shared core: sessions, the audited write and the role checks.

Every stage's store (``_registry``, ``_access``, ``_endpoints``, ...) is a
``StoreCore``; ``Store`` (``_store``) combines them. Every change is made by an
actor and appends one audit event in the same transaction (``_write`` +
``_audit``); the actor's role is checked inside that transaction (``_require``),
and a refusal is audited in a transaction of its own. ``_audit`` is the one path
that appends: it refuses while the chain is broken (``_audit.check_chain_end``),
and ``_write`` records a break found there, so that every later write is refused
too until an admin acknowledges it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from modelyard.audit import (
    PROTECTED_ALIAS_ROLE,
    AccessPolicy,
    AuditEvent,
    AuditKeySource,
    BreakFound,
    ChainBreak,
    Role,
    at_least,
    required_role,
)
from modelyard.errors import AuditChainBroken, ConfigError, ModelyardError, PermissionDenied
from modelyard.settings import Settings, load_settings
from modelyard.store import _audit, _engine
from modelyard.store._schema import ModelVersionRow

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_REF_RE = re.compile(r"^(?P<name>[^@:]+)(?:@(?P<alias>[^@:]+)|:(?P<version>\d+))?$")


def check_name(kind: str, name: str) -> str:
    """Names of tenants, models, endpoints: lowercase, digits, '.', '_', '-'."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_model_ref(ref: str) -> tuple[str, str | None, int | None]:
    """Split ``NAME@alias`` / ``NAME:VERSION`` / ``NAME`` into (name, alias, version)."""
    match = _REF_RE.match(ref.strip())
    if not match:
        raise ConfigError(
            f"invalid model reference {ref!r}",
            hint="Use NAME@alias (e.g. support@champion) or NAME:VERSION (e.g. support:3).",
        )
    version = match.group("version")
    return match.group("name"), match.group("alias"), int(version) if version else None


class StoreCore:
    """Sessions, the audit chain's writer and role checks, shared by every stage."""

    def __init__(
        self,
        engine: Engine,
        *,
        actor: str | None = None,
        audit_key: str | bytes | AuditKeySource | None = None,
        policy: AccessPolicy | None = None,
    ) -> None:
        explicit = actor is not None and audit_key is not None and policy is not None
        settings = None if explicit else load_settings()
        self._engine = engine
        _audit.install_sqlite_hooks(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(_audit.write_engine(engine), expire_on_commit=False)
        self.actor = _audit.check_actor(_need(settings).resolved_actor if actor is None else actor)
        if isinstance(audit_key, AuditKeySource):
            self.audit_key_source = audit_key
        elif audit_key is not None:
            self.audit_key_source = AuditKeySource(key=audit_key)
        else:
            self.audit_key_source = AuditKeySource.from_settings(_need(settings))
        self.policy = policy or AccessPolicy.from_settings(_need(settings))

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[Session]:
        """One read transaction; SQLAlchemy errors leave as modelyard errors."""
        with _engine.translate_errors(self._engine, what), self._sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[Session]:
        """One write transaction (BEGIN IMMEDIATE on SQLite); a refusal is audited on its own,
        and a break of the audit chain found on the way is recorded on its own."""
        try:
            with (
                _engine.translate_errors(self._engine, what),
                self._write_sessions.begin() as session,
            ):
                yield session
        except PermissionDenied as denied:
            # The change was rolled back; the refusal itself must stay on record.
            try:
                self._record_refusal(denied)
            except AuditChainBroken as broken:  # the refusal stands, though unrecorded
                self._record_break(broken)
            raise
        except AuditChainBroken as broken:
            self._record_break(broken)
            raise

    def _record_refusal(self, denied: PermissionDenied) -> None:
        ctx = denied.context
        with (
            _engine.translate_errors(self._engine, "record a refusal in the audit chain"),
            self._write_sessions.begin() as session,
        ):
            self._audit(
                session,
                "permission.denied",
                str(ctx.get("subject", "-")),
                {
                    "attempted": ctx.get("action"),
                    "role": ctx.get("role"),
                    "required_role": ctx.get("required_role"),
                    "reason": denied.message,
                },
            )

    def _record_break(self, broken: AuditChainBroken) -> None:
        """Keep a break that an append found on record (``_audit.refuse`` says whether it
        is new): from then on every audited change is refused until an admin
        acknowledges it."""
        ctx = broken.context
        seq, reason = ctx.get("first_bad_seq"), ctx.get("reason")
        if ctx.get("unrecorded") and isinstance(seq, int) and isinstance(reason, str):
            self._keep_break(ChainBreak(seq, reason), "write")

    def _keep_break(self, brk: ChainBreak, found_in: BreakFound) -> None:
        """Record ``brk`` in a transaction of its own. Best effort: whatever refused the
        change still stands when the record cannot be written."""
        try:
            with (
                _engine.translate_errors(self._engine, "record a break of the audit chain"),
                self._write_sessions.begin() as session,
            ):
                _audit.record_break(session, brk, actor=self.actor, found_in=found_in)
        except ModelyardError as exc:
            log.error("could not record the break of the audit chain: %s", exc.one_line())

    def _audit(
        self, s: Session, action: str, subject: str, payload: Mapping[str, Any] | None = None
    ) -> AuditEvent:
        """Append one event to the chain, in ``s``'s transaction."""
        return _audit.append_event(
            s,
            self.audit_key_source,
            actor=self.actor,
            action=action,
            subject=subject,
            payload=payload,
        )

    def _require(
        self, s: Session, action: str, subject: str, what: str, needed: Role | None = None
    ) -> Role:
        """The actor's role, or PermissionDenied when it is below what ``action`` needs."""
        needed = needed or required_role(action)
        role = _audit.effective_role(s, self.policy, self.actor)
        if not at_least(role, needed):
            raise PermissionDenied(
                f"actor {self.actor!r} (role {role}) may not {what}: it needs role {needed}",
                hint=f"Ask an admin to run `modelyard actors add {self.actor} --role {needed}`, "
                "or act as an actor who has that role (--actor NAME or MODELYARD_ACTOR).",
                actor=self.actor,
                role=role,
                required_role=needed,
                action=action,
                subject=subject,
            )
        return role

    def check_alias_move(self, model: str, alias: str, *, created_by: str | None) -> None:
        """``PermissionDenied`` (audited) where this actor could not point ``model@alias``
        at a version that ``created_by`` trains (its role; segregation of duties), as
        ``set_alias`` would refuse it; nothing else is checked, moved or recorded. For work
        that moves an alias at its end, to be refused before it starts (the quickstart)."""
        subject = f"{model}@{alias}"
        with self._write(f"check who may move {subject}") as s:
            self._check_alias_rule(s, "alias.set", subject, alias, (None, created_by))

    def _check_alias_change(
        self, s: Session, action: str, subject: str, alias: str, target: ModelVersionRow | None
    ) -> None:
        made = None if target is None else (target.version, target.created_by)
        self._check_alias_rule(s, action, subject, alias, made)

    def _check_alias_rule(
        self,
        s: Session,
        action: str,
        subject: str,
        alias: str,
        target: tuple[int | None, str | None] | None,
    ) -> None:
        """The one rule for changing an alias: ``target`` is the (version, who created it)
        it moves to (version None: one not trained yet), None where it is deleted."""
        if alias not in self.policy.protected_aliases:
            self._require(s, action, subject, f"change alias {subject}")
            return
        verb = "move" if target is not None else "delete"
        self._require(
            s, action, subject, f"{verb} the protected alias {subject}", PROTECTED_ALIAS_ROLE
        )
        if target is None or not self.policy.segregation_of_duties:
            return
        version, created_by = target
        if created_by != self.actor:
            return
        model = subject.split("@", 1)[0]
        which = f"trained {model}:{version}" if version is not None else "would train the version"
        raise PermissionDenied(
            f"actor {self.actor!r} {which} and may not approve it (segregation of duties): "
            f"moving {subject} needs another approver",
            hint=f"Ask a different approver to run `modelyard registry alias {model} {alias} "
            f"{version if version is not None else 'VERSION'}`.",
            actor=self.actor,
            role=_audit.effective_role(s, self.policy, self.actor),
            required_role=f"{PROTECTED_ALIAS_ROLE} other than {self.actor}",
            action=action,
            subject=subject,
        )

    def as_actor(self, actor: str) -> Any:
        """This store acting as ``actor`` (same connections; do not close the copy).

        The controller promotes an alias as the actor who started the rollout, so
        the registry's role checks apply to that person, not to the controller.
        """
        clone = copy.copy(self)
        clone.actor = actor
        return clone


def _need(settings: Settings | None) -> Settings:
    assert settings is not None  # loaded by Store.__init__ whenever a default is needed
    return settings
