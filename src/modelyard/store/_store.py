"""The store: every piece of desired state, behind verb_noun methods.

Callers get frozen entities (``modelyard.store.entities``); no ``Session`` and
no SQLAlchemy exception leaves this module.

Every change is made by an actor and appends one audit event in the same
transaction (``_write`` + ``_audit``); the actor's role is checked inside that
transaction (``_require``), and a refusal is audited in a transaction of its own.
"""

from __future__ import annotations

import contextlib
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from modelyard.audit import (
    EMPTY_HEAD,
    PROTECTED_ALIAS_ROLE,
    AccessPolicy,
    AuditEvent,
    AuditHead,
    AuditKeySource,
    ChainReport,
    Role,
    at_least,
    check_role,
    normalize_payload,
    required_role,
    verify_chain,
)
from modelyard.errors import (
    ConfigError,
    Conflict,
    EndpointNotFound,
    ModelVersionNotFound,
    NotFound,
    PermissionDenied,
    TenantNotFound,
)
from modelyard.settings import Settings, load_settings
from modelyard.store import _audit, _engine
from modelyard.store._deploy import DeployStore, _active_row, step_plan
from modelyard.store._monitoring import MonitoringStore
from modelyard.store._schema import (
    ActorRow,
    ApiKeyRow,
    AuditEventRow,
    BaseModelRow,
    DatasetRow,
    EndpointRow,
    FeedbackRow,
    InferenceRecordRow,
    ModelAliasRow,
    ModelVersionRow,
    RegisteredModelRow,
    RunRow,
    TenantRow,
    TrafficRouteRow,
    utcnow,
)
from modelyard.store.entities import (
    STORAGE_POLICIES,
    Actor,
    ApiKey,
    BaseModel,
    DatasetVersion,
    Endpoint,
    Feedback,
    InferenceRecord,
    ModelVersion,
    NewInferenceRecord,
    RegisteredModel,
    Run,
    StoragePolicy,
    Tenant,
    TrafficRoute,
    VersionKind,
)

T = TypeVar("T")

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


class Store(MonitoringStore, DeployStore):
    """Desired state of one modelyard installation, on SQLite or PostgreSQL."""

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

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        actor: str | None = None,
        audit_key: str | bytes | AuditKeySource | None = None,
        policy: AccessPolicy | None = None,
    ) -> Store:
        """Connect to the store at ``url``; apply pending migrations unless ``migrate=False``.

        ``actor`` (who makes the changes), ``audit_key`` (hex or any string) and
        ``policy`` default to the settings: ``MODELYARD_ACTOR`` or the OS user,
        ``MODELYARD_AUDIT_KEY`` or the key file (created on the first audited
        change), ``MODELYARD_PROTECTED_ALIASES`` and friends.
        """
        engine = _engine.make_engine(url)
        _audit.install_sqlite_hooks(engine)
        if migrate:
            _engine.upgrade(engine)
        return cls(engine, actor=actor, audit_key=audit_key, policy=policy)

    @property
    def url(self) -> str:
        """The store URL with any password hidden."""
        return _engine.redact_url(str(self._engine.url))

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def migrate(self) -> tuple[str | None, str]:
        return _engine.upgrade(self._engine)

    def schema_revision(self) -> str | None:
        return _engine.current_revision(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[Session]:
        """One read transaction; SQLAlchemy errors leave as modelyard errors."""
        with _engine.translate_errors(self._engine, what), self._sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[Session]:
        """One write transaction (BEGIN IMMEDIATE on SQLite); a refusal is audited on its own."""
        try:
            with (
                _engine.translate_errors(self._engine, what),
                self._write_sessions.begin() as session,
            ):
                yield session
        except PermissionDenied as denied:
            # The change was rolled back; the refusal itself must stay on record.
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
            raise

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

    # -- base models -----------------------------------------------------------------------

    def register_base_model(
        self, name: str, source: str, weight_hashes: Mapping[str, str]
    ) -> BaseModel:
        """Record a base model; registering the same name and weights again is a no-op."""
        with self._write(f"register base model {name!r}") as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                self._require(s, "base_model.registered", name, f"register base model {name!r}")
                row = BaseModelRow(name=name, source=source, weight_hashes=dict(weight_hashes))
                s.add(row)
                s.flush()
                self._audit(
                    s,
                    "base_model.registered",
                    name,
                    {"source": source, "weight_hashes": dict(weight_hashes)},
                )
            elif dict(row.weight_hashes) != dict(weight_hashes):
                raise Conflict(
                    f"base model {name!r} is registered already with different weights",
                    hint="Register the new weights under another name.",
                )
            return _base_model(row)

    def get_base_model(self, name: str) -> BaseModel:
        with self._session(f"read base model {name!r}") as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                raise NotFound(f"no base model named {name!r} in the store")
            return _base_model(row)

    # -- datasets --------------------------------------------------------------------------

    def register_dataset(
        self,
        name: str,
        *,
        digest: str,
        artifact_digest: str,
        format: str,
        n_rows: int,
        report: Mapping[str, Any],
    ) -> DatasetVersion:
        """A new content-hashed dataset version; the same content returns the existing one."""
        with self._write(f"register dataset {name!r}") as s:
            existing = s.scalar(
                select(DatasetRow).where(DatasetRow.name == name, DatasetRow.digest == digest)
            )
            if existing is not None:
                return _dataset(existing)
            self._require(s, "dataset.registered", name, f"register dataset {name!r}")
            latest = s.scalar(select(func.max(DatasetRow.version)).where(DatasetRow.name == name))
            row = DatasetRow(
                name=name,
                version=(latest or 0) + 1,
                digest=digest,
                artifact_digest=artifact_digest,
                format=format,
                n_rows=n_rows,
                report=dict(report),
            )
            s.add(row)
            s.flush()
            self._audit(
                s,
                "dataset.registered",
                f"{name}:{row.version}",
                {"digest": digest, "artifact_digest": artifact_digest, "format": format,
                 "n_rows": n_rows},
            )  # fmt: skip
            return _dataset(row)

    def list_datasets(self, name: str | None = None) -> list[DatasetVersion]:
        with self._session("list datasets") as s:
            query = select(DatasetRow).order_by(DatasetRow.name, DatasetRow.version)
            if name is not None:
                query = query.where(DatasetRow.name == name)
            return [_dataset(r) for r in s.scalars(query)]

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        *,
        base_model: str,
        dataset_id: int | None,
        config: Mapping[str, Any],
        seed: int,
        environment: Mapping[str, Any],
    ) -> Run:
        with self._write(f"create run {run_id}") as s:
            base = _require(s, BaseModelRow, BaseModelRow.name == base_model, f"base {base_model}")
            self._require(s, "run.started", run_id, f"start run {run_id}")
            row = RunRow(
                id=run_id,
                base_model_id=base.id,
                dataset_id=dataset_id,
                status="running",
                config=dict(config),
                seed=seed,
                metrics={},
                environment=dict(environment),
                created_by=self.actor,
            )
            s.add(row)
            s.flush()
            self._audit(
                s,
                "run.started",
                run_id,
                {"base_model": base_model, "dataset_id": dataset_id, "seed": seed,
                 "config": dict(config)},
            )  # fmt: skip
            return _run(row)

    def finish_run(self, run_id: str, *, status: str, metrics: Mapping[str, Any]) -> Run:
        with self._write(f"finish run {run_id}") as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            self._require(s, "run.finished", run_id, f"finish run {run_id}")
            row.status = status
            row.metrics = dict(metrics)
            row.finished_at = utcnow()
            self._audit(s, "run.finished", run_id, {"status": status, "metrics": dict(metrics)})
            return _run(row)

    def get_run(self, run_id: str) -> Run:
        with self._session(f"read run {run_id}") as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            return _run(row)

    # -- tenants and keys ------------------------------------------------------------------

    def create_tenant(self, name: str, *, storage_policy: StoragePolicy = "full") -> Tenant:
        check_name("tenant", name)
        if storage_policy not in STORAGE_POLICIES:
            raise ConfigError(
                f"invalid storage policy {storage_policy!r}: "
                f"use one of {', '.join(STORAGE_POLICIES)}"
            )
        with self._write(f"create tenant {name!r}") as s:
            if s.scalar(select(TenantRow.id).where(TenantRow.name == name)) is not None:
                raise Conflict(f"tenant {name!r} exists already")
            self._require(s, "tenant.created", name, f"create tenant {name!r}")
            row = TenantRow(name=name, storage_policy=storage_policy)
            s.add(row)
            s.flush()
            self._audit(s, "tenant.created", name, {"storage_policy": storage_policy})
            return _tenant(row)

    def get_tenant(self, name: str) -> Tenant:
        with self._session(f"read tenant {name!r}") as s:
            return _tenant(_tenant_row(s, name))

    def list_tenants(self) -> list[Tenant]:
        with self._session("list tenants") as s:
            return [_tenant(r) for r in s.scalars(select(TenantRow).order_by(TenantRow.name))]

    def create_api_key(
        self,
        key_id: str,
        *,
        tenant: str,
        key_hash: str,
        scopes: Sequence[str],
        expires_at: datetime | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
    ) -> ApiKey:
        """A key for ``tenant``; ``rpm_limit``/``tpm_limit`` None use the server's defaults."""
        _check_limits(rpm_limit, tpm_limit)
        with self._write(f"create an API key for tenant {tenant!r}") as s:
            trow = _tenant_row(s, tenant)
            self._require(s, "api_key.created", key_id, f"create API keys for tenant {tenant!r}")
            row = ApiKeyRow(
                id=key_id,
                tenant_id=trow.id,
                key_hash=key_hash,
                scopes=list(scopes),
                expires_at=expires_at,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
            )
            s.add(row)
            s.flush()
            payload: dict[str, Any] = {
                "tenant": trow.name,
                "scopes": list(scopes),
                "expires_at": expires_at,
            }
            if rpm_limit is not None or tpm_limit is not None:
                payload.update(rpm_limit=rpm_limit, tpm_limit=tpm_limit)
            self._audit(s, "api_key.created", key_id, payload)
            return _api_key(row, trow.name)

    def rotate_api_key(
        self,
        key_id: str,
        *,
        new_key_id: str,
        new_key_hash: str,
        grace: timedelta,
        new_expires_at: datetime | None = None,
    ) -> tuple[ApiKey, ApiKey]:
        """Replace ``key_id`` by a new key with the same tenant, scopes and limits.

        The old key keeps working for ``grace``: its expiry becomes now + grace
        (an earlier expiry stays), and ``rotated_to`` names its successor. Both
        changes are audited (``api_key.created`` for the new key with
        ``rotated_from``, ``api_key.rotated`` for the old). A revoked, expired or
        already rotated key cannot be rotated. Returns (old key, new key).
        """
        if grace < timedelta(0):
            raise ConfigError(f"the grace period {grace} is negative; use 0 or more")
        with self._write(f"rotate API key {key_id}") as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            tenant = s.get(TenantRow, row.tenant_id)
            tenant_name = tenant.name if tenant else "?"
            now = utcnow()
            if row.revoked_at is not None:
                raise Conflict(
                    f"API key {key_id} is revoked and cannot be rotated",
                    hint=f"Create a new key with `modelyard keys create --tenant {tenant_name}`.",
                )
            if row.rotated_to is not None:
                raise Conflict(
                    f"API key {key_id} was rotated already, to {row.rotated_to}",
                    hint=f"Rotate the newer key: `modelyard keys rotate {row.rotated_to}`.",
                )
            if row.expires_at is not None and row.expires_at <= now:
                raise Conflict(
                    f"API key {key_id} has expired and cannot be rotated",
                    hint=f"Create a new key with `modelyard keys create --tenant {tenant_name}`.",
                )
            self._require(s, "api_key.rotated", key_id, f"rotate API key {key_id}")
            new = ApiKeyRow(
                id=new_key_id,
                tenant_id=row.tenant_id,
                key_hash=new_key_hash,
                scopes=list(row.scopes),
                expires_at=new_expires_at,
                rpm_limit=row.rpm_limit,
                tpm_limit=row.tpm_limit,
            )
            s.add(new)
            s.flush()
            self._audit(
                s,
                "api_key.created",
                new_key_id,
                {"tenant": tenant_name, "scopes": list(row.scopes), "expires_at": new_expires_at,
                 "rpm_limit": row.rpm_limit, "tpm_limit": row.tpm_limit,
                 "rotated_from": key_id},
            )  # fmt: skip
            cutoff = now + grace
            if row.expires_at is None or row.expires_at > cutoff:
                row.expires_at = cutoff
            row.rotated_to = new_key_id
            s.flush()
            self._audit(
                s,
                "api_key.rotated",
                key_id,
                {"tenant": tenant_name, "rotated_to": new_key_id, "expires_at": row.expires_at,
                 "grace_seconds": grace.total_seconds()},
            )  # fmt: skip
            return _api_key(row, tenant_name), _api_key(new, tenant_name)

    def set_api_key_limits(
        self, key_id: str, *, rpm_limit: int | None, tpm_limit: int | None
    ) -> ApiKey:
        """Set a key's requests/min and tokens/min (None: the server's default); audited.

        Servers apply the change within their key-cache time.
        """
        _check_limits(rpm_limit, tpm_limit)
        with self._write(f"set the limits of API key {key_id}") as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            tenant = s.get(TenantRow, row.tenant_id)
            tenant_name = tenant.name if tenant else "?"
            if (row.rpm_limit, row.tpm_limit) != (rpm_limit, tpm_limit):
                self._require(
                    s, "api_key.limits_set", key_id, f"set the limits of API key {key_id}"
                )
                previous = {"rpm_limit": row.rpm_limit, "tpm_limit": row.tpm_limit}
                row.rpm_limit, row.tpm_limit = rpm_limit, tpm_limit
                s.flush()
                self._audit(
                    s,
                    "api_key.limits_set",
                    key_id,
                    {"tenant": tenant_name, "rpm_limit": rpm_limit, "tpm_limit": tpm_limit,
                     "previous": previous},
                )  # fmt: skip
            return _api_key(row, tenant_name)

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self._session("read an API key") as s:
            found = s.execute(
                select(ApiKeyRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .where(ApiKeyRow.id == key_id)
            ).first()
            return None if found is None else _api_key(found[0], found[1])

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        with self._session("list API keys") as s:
            query = (
                select(ApiKeyRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .order_by(ApiKeyRow.created_at)
            )
            if tenant is not None:
                query = query.where(TenantRow.name == tenant)
            return [_api_key(r, t) for r, t in s.execute(query).all()]

    def revoke_api_key(self, key_id: str) -> ApiKey:
        with self._write(f"revoke API key {key_id}") as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            tenant = s.get(TenantRow, row.tenant_id)
            tenant_name = tenant.name if tenant else "?"
            if row.revoked_at is None:
                self._require(s, "api_key.revoked", key_id, f"revoke API key {key_id}")
                row.revoked_at = utcnow()
                self._audit(s, "api_key.revoked", key_id, {"tenant": tenant_name})
            return _api_key(row, tenant_name)

    # -- registered models and versions -----------------------------------------------------

    def create_registered_model(
        self, name: str, *, tenant: str | None = None, description: str = ""
    ) -> RegisteredModel:
        check_name("model", name)
        with self._write(f"create registered model {name!r}") as s:
            if s.scalar(select(RegisteredModelRow.id).where(RegisteredModelRow.name == name)):
                raise Conflict(f"registered model {name!r} exists already")
            tenant_id = _tenant_row(s, tenant).id if tenant else None
            self._require(s, "registered_model.created", name, f"create model {name!r}")
            row = RegisteredModelRow(name=name, tenant_id=tenant_id, description=description)
            s.add(row)
            s.flush()
            self._audit(
                s,
                "registered_model.created",
                name,
                {"tenant": tenant, "description": description},
            )
            return _registered_model(s, row)

    def get_registered_model(self, name: str) -> RegisteredModel:
        with self._session(f"read registered model {name!r}") as s:
            return _registered_model(s, _model_row(s, name))

    def list_registered_models(self, tenant: str | None = None) -> list[RegisteredModel]:
        with self._session("list registered models") as s:
            query = select(RegisteredModelRow).order_by(RegisteredModelRow.name)
            if tenant is not None:
                query = query.where(RegisteredModelRow.tenant_id == _tenant_row(s, tenant).id)
            return [_registered_model(s, r) for r in s.scalars(query)]

    def create_model_version(
        self,
        model: str,
        *,
        kind: VersionKind,
        artifact_digest: str,
        base_model: str,
        run_id: str | None,
        lineage: Mapping[str, Any],
        metrics: Mapping[str, Any],
    ) -> ModelVersion:
        """Register an immutable, auto-numbered version of ``model``."""
        if kind not in ("adapter", "full"):
            raise ConfigError(f"invalid version kind {kind!r}: use 'adapter' or 'full'")
        with self._write(f"register a version of {model!r}") as s:
            mrow = _model_row(s, model)
            base = _require(s, BaseModelRow, BaseModelRow.name == base_model, f"base {base_model}")
            self._require(s, "model_version.registered", model, f"register versions of {model!r}")
            trainer = None
            if run_id is not None:
                run = s.get(RunRow, run_id)
                if run is None:
                    raise NotFound(f"no run {run_id!r}", hint="Register the version with its run.")
                trainer = run.created_by
            latest = s.scalar(
                select(func.max(ModelVersionRow.version)).where(
                    ModelVersionRow.registered_model_id == mrow.id
                )
            )
            row = ModelVersionRow(
                registered_model_id=mrow.id,
                version=(latest or 0) + 1,
                kind=kind,
                status="ready",
                artifact_digest=artifact_digest,
                base_model_id=base.id,
                run_id=run_id,
                lineage=dict(lineage),
                metrics=dict(metrics),
                created_by=trainer or self.actor,
            )
            s.add(row)
            s.flush()
            self._audit(
                s,
                "model_version.registered",
                f"{model}:{row.version}",
                {"kind": kind, "artifact_digest": artifact_digest, "base_model": base_model,
                 "run_id": run_id, "created_by": row.created_by, "lineage": dict(lineage),
                 "metrics": dict(metrics)},
            )  # fmt: skip
            return _version(s, row)

    def get_model_version(self, model: str, version: int) -> ModelVersion:
        with self._session(f"read {model}:{version}") as s:
            return _version(s, _version_row(s, _model_row(s, model), version))

    def get_model_version_by_id(self, version_id: int) -> ModelVersion:
        with self._session(f"read model version #{version_id}") as s:
            row = s.get(ModelVersionRow, version_id)
            if row is None:
                raise ModelVersionNotFound(f"no model version with id {version_id}")
            return _version(s, row)

    def list_model_versions(self, model: str) -> list[ModelVersion]:
        with self._session(f"list versions of {model!r}") as s:
            mrow = _model_row(s, model)
            rows = s.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.registered_model_id == mrow.id)
                .order_by(ModelVersionRow.version)
            )
            return [_version(s, r) for r in rows]

    def resolve_model_ref(self, ref: str) -> ModelVersion:
        """``NAME@alias`` → the aliased version; ``NAME:N`` → version N; ``NAME`` → latest."""
        name, alias, number = parse_model_ref(ref)
        with self._session(f"resolve {ref!r}") as s:
            mrow = _model_row(s, name)
            if alias is not None:
                arow = s.get(ModelAliasRow, (mrow.id, alias))
                if arow is None:
                    raise ModelVersionNotFound(
                        f"model {name!r} has no alias {alias!r}",
                        hint=f"Set it with `modelyard registry alias {name} {alias} VERSION`.",
                    )
                row = s.get(ModelVersionRow, arow.version_id)
                assert row is not None  # guaranteed by the foreign key
                return _version(s, row)
            if number is None:
                number = s.scalar(
                    select(func.max(ModelVersionRow.version)).where(
                        ModelVersionRow.registered_model_id == mrow.id
                    )
                )
                if number is None:
                    raise ModelVersionNotFound(f"model {name!r} has no versions yet")
            return _version(s, _version_row(s, mrow, number))

    def set_alias(self, model: str, alias: str, version: int) -> ModelVersion:
        """Point ``alias`` at ``version`` (creating or moving it).

        A protected alias (``champion`` by default) needs role approver; with
        segregation of duties on, not the actor who trained the version.
        """
        check_name("alias", alias)
        subject = f"{model}@{alias}"
        with self._write(f"set alias {subject}") as s:
            mrow = _model_row(s, model)
            vrow = _version_row(s, mrow, version)
            self._check_alias_change(s, "alias.set", subject, alias, vrow)
            if vrow.status == "archived":
                raise Conflict(
                    f"{model}:{version} is archived and cannot take an alias",
                    hint="Point the alias at a version that is not archived.",
                )
            arow = s.get(ModelAliasRow, (mrow.id, alias))
            previous = None
            if arow is None:
                s.add(ModelAliasRow(registered_model_id=mrow.id, alias=alias, version_id=vrow.id))
            elif arow.version_id == vrow.id:
                return _version(s, vrow)  # already there: no change, no event
            else:
                old = s.get(ModelVersionRow, arow.version_id)
                previous = old.version if old else None
                arow.version_id = vrow.id
                arow.updated_at = utcnow()
            s.flush()
            self._audit(s, "alias.set", subject, {"version": version, "previous": previous})
            self._follow_alias(s, mrow, alias, vrow)
            return _version(s, vrow)

    def _follow_alias(
        self, s: Session, mrow: RegisteredModelRow, alias: str, vrow: ModelVersionRow
    ) -> None:
        """Move the endpoints that follow ``NAME@alias`` to the alias's new version: at once,
        or by starting a rollout where the endpoint has a rollout policy."""
        ref = f"{mrow.name}@{alias}"
        for erow in s.scalars(select(EndpointRow).where(EndpointRow.model_ref == ref)):
            active = _active_row(s, erow.id)
            if active is not None and active.target_version_id == vrow.id:
                continue  # a rollout is taking it there already (and may be what moved the alias)
            plan = {r.version: r.weight for r in _endpoint(s, erow).routes if r.weight > 0}
            if plan == {vrow.version: 100} and active is None:
                continue
            if active is not None:
                _end_for_alias(s, active, erow, f"{ref} moved to {vrow.version}")
                why = {"rollout": active.id, "reason": f"{ref} moved to {vrow.version}"}
                self._audit(s, "rollout.aborted", erow.name, why)
                plan = {int(k): int(v) for k, v in active.baseline.items()}
            policy = erow.rollout_policy
            if policy:
                self._create_rollout_in(
                    s, erow, vrow.version, policy.get("steps", [100]),
                    float(policy.get("bake_s", 300.0)), int(policy.get("min_requests", 100)),
                    policy.get("guards", []), None, f"{ref} moved to {vrow.version}",
                )  # fmt: skip
                continue
            _replace_routes(s, erow, step_plan(plan, vrow.version, 100))
            self._audit(
                s, "endpoint.traffic_set", erow.name,
                {"traffic": {str(vrow.version): 100},
                 "previous": {str(k): v for k, v in sorted(plan.items())},
                 "reason": f"{ref} moved to {vrow.version}"},
            )  # fmt: skip

    def delete_alias(self, model: str, alias: str) -> ModelVersion:
        """Remove ``alias``; returns the version it pointed to (protected aliases need approver)."""
        subject = f"{model}@{alias}"
        with self._write(f"delete alias {subject}") as s:
            mrow = _model_row(s, model)
            arow = s.get(ModelAliasRow, (mrow.id, alias))
            if arow is None:
                raise ModelVersionNotFound(f"model {model!r} has no alias {alias!r}")
            vrow = s.get(ModelVersionRow, arow.version_id)
            assert vrow is not None  # guaranteed by the foreign key
            self._check_alias_change(s, "alias.deleted", subject, alias, None)
            s.delete(arow)
            s.flush()
            self._audit(s, "alias.deleted", subject, {"version": vrow.version})
            return _version(s, vrow)

    def _check_alias_change(
        self, s: Session, action: str, subject: str, alias: str, target: ModelVersionRow | None
    ) -> None:
        if alias not in self.policy.protected_aliases:
            self._require(s, action, subject, f"change alias {subject}")
            return
        verb = "move" if target is not None else "delete"
        self._require(
            s, action, subject, f"{verb} the protected alias {subject}", PROTECTED_ALIAS_ROLE
        )
        sod = target is not None and self.policy.segregation_of_duties
        if sod and target is not None and target.created_by == self.actor:
            model = subject.split("@", 1)[0]
            raise PermissionDenied(
                f"actor {self.actor!r} trained {model}:{target.version} and may not approve "
                f"it (segregation of duties): moving {subject} needs another approver",
                hint=f"Ask a different approver to run `modelyard registry alias "
                f"{model} {alias} {target.version}`.",
                actor=self.actor,
                role=_audit.effective_role(s, self.policy, self.actor),
                required_role=f"{PROTECTED_ALIAS_ROLE} other than {self.actor}",
                action=action,
                subject=subject,
            )

    def archive_model_version(self, model: str, version: int) -> ModelVersion:
        """Mark a version archived: it can no longer take an alias or traffic."""
        ref = f"{model}:{version}"
        with self._write(f"archive {ref}") as s:
            vrow = _version_row(s, _model_row(s, model), version)
            self._require(s, "model_version.archived", ref, f"archive {ref}")
            if vrow.status == "archived":
                return _version(s, vrow)
            aliases = sorted(
                s.scalars(select(ModelAliasRow.alias).where(ModelAliasRow.version_id == vrow.id))
            )
            if aliases:
                raise Conflict(
                    f"{ref} still holds the alias(es) {', '.join(aliases)} and cannot be archived",
                    hint="Move or delete those aliases first.",
                )
            serving = sorted(
                s.scalars(
                    select(EndpointRow.name)
                    .join(TrafficRouteRow, TrafficRouteRow.endpoint_id == EndpointRow.id)
                    .where(TrafficRouteRow.version_id == vrow.id, TrafficRouteRow.weight > 0)
                )
            )
            if serving:
                raise Conflict(
                    f"{ref} still takes traffic on endpoint(s) {', '.join(serving)} and cannot "
                    "be archived",
                    hint="Move its traffic with `modelyard endpoints set-traffic` first.",
                )
            previous = vrow.status
            vrow.status = "archived"
            self._audit(s, "model_version.archived", ref, {"previous_status": previous})
            return _version(s, vrow)

    def set_version_tags(
        self, ref: str, tags: Mapping[str, str], *, remove: Sequence[str] = ()
    ) -> ModelVersion:
        """Add or change ``tags`` and drop the keys in ``remove`` on the version ``ref``."""
        for key in [*tags, *remove]:
            check_name("tag", key)
        target = self.resolve_model_ref(ref)
        subject = target.ref
        with self._write(f"tag {subject}") as s:
            vrow = _version_row(s, _model_row(s, target.model), target.version)
            self._require(s, "model_version.tagged", subject, f"tag {subject}")
            updated = {k: v for k, v in dict(vrow.tags or {}).items() if k not in remove}
            updated.update({k: str(v) for k, v in tags.items()})
            vrow.tags = updated
            self._audit(
                s, "model_version.tagged", subject, {"set": dict(tags), "removed": list(remove)}
            )
            return _version(s, vrow)

    def record_gate_verdicts(
        self, model: str, version: int, verdicts: Sequence[Mapping[str, Any]], passed: bool
    ) -> ModelVersion:
        """Store gate verdicts in the version's ``metrics["gates"]`` and audit them."""
        ref = f"{model}:{version}"
        gates = normalize_payload({"passed": bool(passed), "verdicts": list(verdicts)})
        with self._write(f"record gate verdicts of {ref}") as s:
            vrow = _version_row(s, _model_row(s, model), version)
            self._require(s, "gate.verdict", ref, f"record gate verdicts of {ref}")
            vrow.metrics = {**vrow.metrics, "gates": gates}
            self._audit(s, "gate.verdict", ref, gates)
            return _version(s, vrow)

    # -- endpoints and traffic -------------------------------------------------------------

    def create_endpoint(
        self,
        name: str,
        *,
        model_ref: str,
        tenant: str | None,
        shared: bool = False,
    ) -> Endpoint:
        """An endpoint sending 100% of its traffic to the version ``model_ref`` resolves to."""
        check_name("endpoint", name)
        version = self.resolve_model_ref(model_ref)
        with self._write(f"create endpoint {name!r}") as s:
            if s.scalar(select(EndpointRow.id).where(EndpointRow.name == name)) is not None:
                raise Conflict(f"endpoint {name!r} exists already")
            tenant_id = _tenant_row(s, tenant).id if tenant else None
            self._require(s, "endpoint.created", name, f"create endpoint {name!r}")
            vrow = s.get(ModelVersionRow, version.id)
            if vrow is None or vrow.status == "archived":
                raise Conflict(f"{version.ref} is archived and cannot take traffic")
            mrow = _model_row(s, version.model)
            row = EndpointRow(
                name=name,
                tenant_id=tenant_id,
                registered_model_id=mrow.id,
                model_ref=model_ref,
                shared=shared,
            )
            s.add(row)
            s.flush()
            s.add(TrafficRouteRow(endpoint_id=row.id, version_id=version.id, weight=100))
            s.flush()
            self._audit(
                s,
                "endpoint.created",
                name,
                {"model_ref": model_ref, "tenant": tenant, "shared": shared,
                 "traffic": {str(version.version): 100}},
            )  # fmt: skip
            return _endpoint(s, row)

    def get_endpoint(self, name: str) -> Endpoint:
        with self._session(f"read endpoint {name!r}") as s:
            return _endpoint(s, _endpoint_row(s, name))

    def list_endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        with self._session("list endpoints") as s:
            query = select(EndpointRow).order_by(EndpointRow.name)
            if tenant is not None:
                query = query.where(EndpointRow.tenant_id == _tenant_row(s, tenant).id)
            return [_endpoint(s, r) for r in s.scalars(query)]

    def set_traffic(self, endpoint: str, weights: Mapping[int, int]) -> Endpoint:
        """Replace the endpoint's traffic plan with ``{version number: weight}`` (sum 100)."""
        if sum(weights.values()) != 100 or any(w < 0 for w in weights.values()):
            raise ConfigError(
                f"traffic weights must be non-negative and sum to 100, got {dict(weights)}"
            )
        with self._write(f"set traffic of {endpoint!r}") as s:
            erow = _endpoint_row(s, endpoint)
            mrow = s.get(RegisteredModelRow, erow.registered_model_id)
            assert mrow is not None  # guaranteed by the foreign key
            self._require(
                s, "endpoint.traffic_set", endpoint, f"change the traffic of {endpoint!r}"
            )
            active = _active_row(s, erow.id)
            if active is not None:
                raise Conflict(
                    f"endpoint {endpoint!r} has a rollout in progress ({active.id}); its "
                    "controller owns the traffic plan until it ends",
                    hint=f"Abort it first: `modelyard rollout abort {endpoint}`.",
                )
            previous = {str(r.version): r.weight for r in _endpoint(s, erow).routes}
            _replace_routes(s, erow, weights)
            self._audit(
                s,
                "endpoint.traffic_set",
                endpoint,
                {"traffic": {str(v): w for v, w in sorted(weights.items())},
                 "previous": previous},
            )  # fmt: skip
            return _endpoint(s, erow)

    # -- inference records -----------------------------------------------------------------

    def add_inference_records(self, records: Iterable[NewInferenceRecord]) -> int:
        """Insert a batch of records in one transaction; returns how many were written."""
        rows = [
            InferenceRecordRow(
                **{k: v for k, v in vars(r).items() if k != "created_at"},
                created_at=r.created_at or utcnow(),
            )
            for r in records
        ]
        if not rows:
            return 0
        with self._write(f"write {len(rows)} inference records") as s:  # data plane: not audited
            s.add_all(rows)
        return len(rows)

    def list_inference_records(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        limit: int = 100,
    ) -> list[InferenceRecord]:
        with self._session("list inference records") as s:
            query = (
                select(InferenceRecordRow)
                .order_by(InferenceRecordRow.created_at.desc(), InferenceRecordRow.id)
                .limit(limit)
            )
            if endpoint is not None:
                query = query.where(InferenceRecordRow.endpoint_name == endpoint)
            if tenant is not None:
                query = query.where(InferenceRecordRow.tenant_id == _tenant_row(s, tenant).id)
            return [_record(s, r) for r in s.scalars(query)]

    def count_inference_records(self, *, endpoint: str | None = None) -> int:
        with self._session("count inference records") as s:
            query = select(func.count()).select_from(InferenceRecordRow)
            if endpoint is not None:
                query = query.where(InferenceRecordRow.endpoint_name == endpoint)
            return int(s.scalar(query) or 0)

    # -- feedback (data plane: not audited, like inference records) -------------------------

    def add_feedback(
        self,
        record_id: str,
        *,
        tenant: str,
        score: float,
        comment: str | None = None,
        api_key_id: str | None = None,
    ) -> Feedback:
        """Record ``tenant``'s verdict on one of its inference records; the latest one wins.

        ``score`` is in [-1, 1]. A record of another tenant is NotFound exactly
        like a missing one.
        """
        if math.isnan(score) or not -1.0 <= score <= 1.0:
            raise ConfigError(
                f"feedback score {score} is out of range: use a number from -1 to 1", param="score"
            )
        with self._write(f"record feedback on {record_id!r}") as s:
            trow = _tenant_row(s, tenant)
            record = s.get(InferenceRecordRow, record_id)
            if record is None or record.tenant_id != trow.id:
                raise NotFound(
                    f"no request with id {record_id!r}",
                    hint="Send the `id` of a completion answered for a key of this tenant.",
                    param="request_id",
                )
            row = s.scalar(select(FeedbackRow).where(FeedbackRow.record_id == record_id))
            now = utcnow()
            if row is None:
                row = FeedbackRow(
                    id=f"fb-{uuid.uuid4().hex}",
                    record_id=record_id,
                    tenant_id=trow.id,
                    api_key_id=api_key_id,
                    score=score,
                    comment=comment,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
            else:
                row.score, row.comment, row.api_key_id, row.updated_at = (
                    score, comment, api_key_id, now,
                )  # fmt: skip
            s.flush()
            return _feedback(s, row, record, trow.name)

    def list_feedback(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        limit: int | None = 1000,
    ) -> list[Feedback]:
        """Feedback, newest first; ``since`` keeps what was given or changed at or after it."""
        with self._session("list feedback") as s:
            query = (
                select(FeedbackRow, InferenceRecordRow, TenantRow.name)
                .join(InferenceRecordRow, InferenceRecordRow.id == FeedbackRow.record_id)
                .join(TenantRow, TenantRow.id == FeedbackRow.tenant_id)
                .order_by(FeedbackRow.updated_at.desc(), FeedbackRow.id)
            )
            if endpoint is not None:
                query = query.where(InferenceRecordRow.endpoint_name == endpoint)
            if tenant is not None:
                query = query.where(FeedbackRow.tenant_id == _tenant_row(s, tenant).id)
            if since is not None:
                query = query.where(FeedbackRow.updated_at >= since)
            if limit is not None:
                query = query.limit(limit)
            return [_feedback(s, f, r, t) for f, r, t in s.execute(query).all()]

    # -- actors and roles ------------------------------------------------------------------

    def add_actor(self, name: str, role: str) -> Actor:
        """Record ``name`` with ``role`` (or change its role); needs role admin.

        While no admin is recorded, the bootstrap admin (the OS user) is admin;
        the last admin cannot be demoted.
        """
        _audit.check_actor(name)
        wanted = check_role(role)
        with self._write(f"set the role of actor {name!r}") as s:
            row = s.get(ActorRow, name)
            action = "actor.added" if row is None else "actor.role_changed"
            what = f"add actor {name!r}" if row is None else f"change the role of actor {name!r}"
            self._require(s, action, name, what)
            if row is not None and row.role == wanted:
                return _actor(row)
            previous = None if row is None else row.role
            if previous == "admin":
                admins = s.scalar(
                    select(func.count()).select_from(ActorRow).where(ActorRow.role == "admin")
                )
                if (admins or 0) <= 1:
                    raise Conflict(
                        f"actor {name!r} is the last admin and cannot become {wanted}",
                        hint="Make another actor admin first.",
                    )
            if row is None:
                row = ActorRow(name=name, role=wanted)
                s.add(row)
            else:
                row.role = wanted
                row.updated_at = utcnow()
            s.flush()
            self._audit(s, action, name, {"role": wanted, "previous_role": previous})
            return _actor(row)

    def bootstrap_admin(self) -> str | None:
        """Record the acting actor as admin if it is admin only by bootstrap; returns its name."""
        with self._write("record the first admin") as s:
            if _audit.has_admin(s) or s.get(ActorRow, self.actor) is not None:
                return None
            if _audit.effective_role(s, self.policy, self.actor) != "admin":
                return None
            s.add(ActorRow(name=self.actor, role="admin"))
            s.flush()
            self._audit(
                s, "actor.added", self.actor, {"role": "admin", "previous_role": None,
                                               "bootstrap": True}
            )  # fmt: skip
            return self.actor

    def list_actors(self) -> list[Actor]:
        with self._session("list actors") as s:
            return [_actor(r) for r in s.scalars(select(ActorRow).order_by(ActorRow.name))]

    def role_of(self, name: str | None = None) -> Role:
        """The role ``name`` (default: the acting actor) has now."""
        with self._session("read a role") as s:
            return _audit.effective_role(s, self.policy, name or self.actor)

    def has_admin(self) -> bool:
        with self._session("read the actors") as s:
            return _audit.has_admin(s)

    # -- audit chain -----------------------------------------------------------------------

    def record_audit_event(
        self, action: str, subject: str, payload: Mapping[str, Any] | None = None
    ) -> AuditEvent:
        """Append an event that comes with no row change (a refused import, a failed check)."""
        _audit.check_action(action)
        _audit.check_subject(subject)
        with self._write(f"record audit event {action}") as s:
            return self._audit(s, action, subject, payload)

    def list_audit_events(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        subject: str | None = None,
        actor: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[AuditEvent]:
        """Events matching the filters; ``action``/``subject`` ending in ``*`` match a prefix."""
        query = select(AuditEventRow)
        if since is not None:
            query = query.where(AuditEventRow.time >= since)
        for column, wanted in ((AuditEventRow.action, action), (AuditEventRow.subject, subject)):
            if wanted is not None:
                if wanted.endswith("*"):
                    query = query.where(column.startswith(wanted.rstrip("*"), autoescape=True))
                else:
                    query = query.where(column == wanted)
        if actor is not None:
            query = query.where(AuditEventRow.actor == actor)
        order = AuditEventRow.seq.desc() if newest_first else AuditEventRow.seq
        query = query.order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self._session("read the audit chain") as s:
            return [_audit.to_event(r) for r in s.scalars(query)]

    def iter_audit_events(
        self, *, since: datetime | None = None, page: int = 1000
    ) -> Iterator[AuditEvent]:
        """Every event in ``seq`` order, read page by page (for verify and export)."""
        after = 0
        while True:
            query = (
                select(AuditEventRow)
                .where(AuditEventRow.seq > after)
                .order_by(AuditEventRow.seq)
                .limit(page)
            )
            if since is not None:
                query = query.where(AuditEventRow.time >= since)
            with self._session("read the audit chain") as s:
                events = [_audit.to_event(r) for r in s.scalars(query)]
            yield from events
            if len(events) < page:
                return
            after = events[-1].seq

    def audit_head(self) -> AuditHead:
        """The newest event's ``SEQ:HASH`` (``0:000…`` for an empty chain)."""
        with self._session("read the audit head") as s:
            last = _audit.last_event(s)
        return EMPTY_HEAD if last is None else AuditHead(last.seq, last.hash)

    def verify_audit_chain(self, head: AuditHead | str | None = None) -> ChainReport:
        """Recompute the whole chain with the key; ``head`` (kept elsewhere) reveals a cut tail."""
        expected = AuditHead.parse(head) if isinstance(head, str) else head
        if self.audit_head() == EMPTY_HEAD and (expected is None or expected.seq == 0):
            return ChainReport(True, 0, EMPTY_HEAD)
        key = self.audit_key_source.load(create=False)
        return verify_chain(self.iter_audit_events(), key, expected_head=expected)

    def check_audit_key(self) -> None:
        """Raise AuditKeyMismatch unless the key verifies the newest event (no-op when empty)."""
        with self._session("read the audit head") as s:
            last = _audit.last_event(s)
        if last is not None:
            key = self.audit_key_source.load(create=False)
            _audit.check_key(key, last, self.audit_key_source)

    def ensure_audit_key(self) -> bool:
        """Make sure a usable key exists: create the key file for an empty chain.

        Returns whether a key file was created. A store whose chain has events
        needs the key that wrote them: AuditKeyMissing / AuditKeyMismatch otherwise.
        """
        source = self.audit_key_source
        if source.available():
            self.check_audit_key()
            return False
        empty = self.audit_head() == EMPTY_HEAD
        source.load(create=empty)
        return True


# -- row lookups (inside a session) ----------------------------------------------------------


def _end_for_alias(s: Session, row: Any, erow: EndpointRow, reason: str) -> None:
    """Abort an active rollout (restoring its baseline plan) because its alias moved on."""
    from modelyard.store._schema import RolloutEventRow

    now = utcnow()
    _replace_routes(s, erow, {int(k): int(v) for k, v in row.baseline.items()})
    row.status, row.finished_at, row.updated_at, row.reason = "aborted", now, now, reason
    s.add(RolloutEventRow(rollout_id=row.id, time=now, kind="aborted",
                          step_index=row.step_index, detail={"reason": reason}))  # fmt: skip
    s.flush()


def _require(s: Session, model: type[T], where: Any, what: str) -> T:
    row = s.scalar(select(model).where(where))
    if row is None:
        raise NotFound(f"no {what} in the store")
    return row


def _tenant_row(s: Session, name: str) -> TenantRow:
    row = s.scalar(select(TenantRow).where(TenantRow.name == name))
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


def _model_row(s: Session, name: str) -> RegisteredModelRow:
    row = s.scalar(select(RegisteredModelRow).where(RegisteredModelRow.name == name))
    if row is None:
        raise ModelVersionNotFound(f"no registered model named {name!r}")
    return row


def _version_row(s: Session, mrow: RegisteredModelRow, version: int) -> ModelVersionRow:
    row = s.scalar(
        select(ModelVersionRow).where(
            ModelVersionRow.registered_model_id == mrow.id, ModelVersionRow.version == version
        )
    )
    if row is None:
        raise ModelVersionNotFound(f"model {mrow.name!r} has no version {version}")
    return row


def _replace_routes(s: Session, erow: EndpointRow, weights: Mapping[int, int]) -> None:
    """Make ``{version number: weight}`` the endpoint's plan (in the caller's transaction)."""
    mrow = s.get(RegisteredModelRow, erow.registered_model_id)
    assert mrow is not None  # guaranteed by the foreign key
    new_routes = []
    for number, weight in sorted(weights.items()):
        vrow = _version_row(s, mrow, number)
        if vrow.status == "archived" and weight > 0:
            raise Conflict(f"{mrow.name}:{number} is archived and cannot take traffic")
        new_routes.append(TrafficRouteRow(version_id=vrow.id, weight=weight))
    for old in s.scalars(select(TrafficRouteRow).where(TrafficRouteRow.endpoint_id == erow.id)):
        s.delete(old)
    s.flush()
    for route in new_routes:
        route.endpoint_id = erow.id
        s.add(route)
    erow.updated_at = utcnow()
    s.flush()


def _endpoint_row(s: Session, name: str) -> EndpointRow:
    row = s.scalar(select(EndpointRow).where(EndpointRow.name == name))
    if row is None:
        raise EndpointNotFound(f"no endpoint named {name!r}")
    return row


# -- row → entity --------------------------------------------------------------------------


def _base_model(r: BaseModelRow) -> BaseModel:
    return BaseModel(r.id, r.name, r.source, dict(r.weight_hashes), r.created_at)


def _dataset(r: DatasetRow) -> DatasetVersion:
    return DatasetVersion(
        r.id, r.name, r.version, r.digest, r.artifact_digest, r.format, r.n_rows,
        dict(r.report), r.created_at,
    )  # fmt: skip


def _run(r: RunRow) -> Run:
    return Run(
        r.id, r.base_model_id, r.dataset_id, r.status, dict(r.config), r.seed,
        dict(r.metrics), dict(r.environment), r.started_at, r.finished_at, r.created_by,
    )  # fmt: skip


def _actor(r: ActorRow) -> Actor:
    return Actor(r.name, check_role(r.role), r.created_at, r.updated_at)


def _tenant(r: TenantRow) -> Tenant:
    return Tenant(r.id, r.name, cast(StoragePolicy, r.storage_policy), r.created_at)


def _api_key(r: ApiKeyRow, tenant: str) -> ApiKey:
    return ApiKey(
        r.id, r.tenant_id, tenant, r.key_hash, tuple(r.scopes), r.created_at,
        r.expires_at, r.revoked_at, r.rpm_limit, r.tpm_limit, r.rotated_to,
    )  # fmt: skip


def _check_limits(rpm_limit: int | None, tpm_limit: int | None) -> None:
    for name, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        if value is not None and value < 1:
            raise ConfigError(
                f"{name} is {value}; it must be at least 1 (or unset for the server's default)",
                field=name,
            )


def _version_ref(s: Session, version_id: int | None) -> str | None:
    version = s.get(ModelVersionRow, version_id) if version_id else None
    if version is None:
        return None
    mrow = s.get(RegisteredModelRow, version.registered_model_id)
    return f"{mrow.name if mrow else '?'}:{version.version}"


def _feedback(s: Session, f: FeedbackRow, record: InferenceRecordRow, tenant: str) -> Feedback:
    return Feedback(
        f.id, f.record_id, tenant, record.endpoint_name, _version_ref(s, record.version_id),
        f.score, f.comment, f.api_key_id, f.created_at, f.updated_at,
    )  # fmt: skip


def _registered_model(s: Session, r: RegisteredModelRow) -> RegisteredModel:
    tenant = s.get(TenantRow, r.tenant_id) if r.tenant_id else None
    aliases = dict(
        s.execute(
            select(ModelAliasRow.alias, ModelVersionRow.version)
            .join(ModelVersionRow, ModelVersionRow.id == ModelAliasRow.version_id)
            .where(ModelAliasRow.registered_model_id == r.id)
        ).all()
    )
    latest = s.scalar(
        select(func.max(ModelVersionRow.version)).where(ModelVersionRow.registered_model_id == r.id)
    )
    return RegisteredModel(
        r.id, r.name, tenant.name if tenant else None, r.description, aliases, latest, r.created_at
    )


def _version(s: Session, r: ModelVersionRow) -> ModelVersion:
    mrow = s.get(RegisteredModelRow, r.registered_model_id)
    base = s.get(BaseModelRow, r.base_model_id)
    assert mrow is not None and base is not None  # guaranteed by foreign keys
    aliases = tuple(
        sorted(s.scalars(select(ModelAliasRow.alias).where(ModelAliasRow.version_id == r.id)))
    )
    return ModelVersion(
        r.id, mrow.name, r.version, cast(VersionKind, r.kind), r.status, r.artifact_digest,
        base.name, base.source, r.run_id, dict(r.lineage), dict(r.metrics), aliases, r.created_at,
        r.created_by, dict(r.tags or {}),
    )  # fmt: skip


def _endpoint(s: Session, r: EndpointRow) -> Endpoint:
    tenant = s.get(TenantRow, r.tenant_id) if r.tenant_id else None
    mrow = s.get(RegisteredModelRow, r.registered_model_id)
    assert mrow is not None  # guaranteed by the foreign key
    routes = tuple(
        TrafficRoute(version_id=vid, version=number, weight=weight)
        for vid, number, weight in s.execute(
            select(TrafficRouteRow.version_id, ModelVersionRow.version, TrafficRouteRow.weight)
            .join(ModelVersionRow, ModelVersionRow.id == TrafficRouteRow.version_id)
            .where(TrafficRouteRow.endpoint_id == r.id)
            .order_by(ModelVersionRow.version)
        ).all()
    )
    shadow = s.get(ModelVersionRow, r.shadow_version_id) if r.shadow_version_id else None
    return Endpoint(
        r.id, r.name, tenant.name if tenant else None, mrow.name, r.model_ref, r.shared, routes,
        r.created_at, r.updated_at, shadow.version if shadow else None,
        shadow.id if shadow else None, r.shadow_fraction if shadow else 0.0, r.rollout_policy,
    )  # fmt: skip


def _record(s: Session, r: InferenceRecordRow) -> InferenceRecord:
    tenant = s.get(TenantRow, r.tenant_id) if r.tenant_id else None
    version = s.get(ModelVersionRow, r.version_id) if r.version_id else None
    version_ref = None
    if version is not None:
        mrow = s.get(RegisteredModelRow, version.registered_model_id)
        version_ref = f"{mrow.name if mrow else '?'}:{version.version}"
    return InferenceRecord(
        r.id, r.created_at, tenant.name if tenant else None, r.api_key_id, r.endpoint_name,
        version_ref, r.route, r.prompt, r.response, r.prompt_tokens, r.completion_tokens,
        r.latency_ms, r.ttft_ms, r.status, r.http_status, r.error,
        shadow=bool(r.shadow), fallback_from=_version_ref(s, r.fallback_from_id),
    )  # fmt: skip


def _need(settings: Settings | None) -> Settings:
    assert settings is not None  # loaded by Store.__init__ whenever a default is needed
    return settings
