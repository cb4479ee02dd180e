"""The store: every piece of desired state, behind verb_noun methods.

Callers get frozen entities (``modelyard.store.entities``); no ``Session`` and
no SQLAlchemy exception leaves this module.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from modelyard.errors import (
    ConfigError,
    Conflict,
    EndpointNotFound,
    ModelVersionNotFound,
    NotFound,
    TenantNotFound,
)
from modelyard.store import _engine
from modelyard.store._schema import (
    ApiKeyRow,
    BaseModelRow,
    DatasetRow,
    EndpointRow,
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
    ApiKey,
    BaseModel,
    DatasetVersion,
    Endpoint,
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


class Store:
    """Desired state of one modelyard installation, on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to the store at ``url``; apply pending migrations unless ``migrate=False``."""
        engine = _engine.make_engine(url)
        if migrate:
            _engine.upgrade(engine)
        return cls(engine)

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
        """One transaction; SQLAlchemy errors leave as modelyard errors."""
        with _engine.translate_errors(self._engine, what), self._sessions.begin() as session:
            yield session

    # -- base models -----------------------------------------------------------------------

    def register_base_model(
        self, name: str, source: str, weight_hashes: Mapping[str, str]
    ) -> BaseModel:
        """Record a base model; registering the same name and weights again is a no-op."""
        with self._session(f"register base model {name!r}") as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                row = BaseModelRow(name=name, source=source, weight_hashes=dict(weight_hashes))
                s.add(row)
                s.flush()
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
        with self._session(f"register dataset {name!r}") as s:
            existing = s.scalar(
                select(DatasetRow).where(DatasetRow.name == name, DatasetRow.digest == digest)
            )
            if existing is not None:
                return _dataset(existing)
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
        with self._session(f"create run {run_id}") as s:
            base = _require(s, BaseModelRow, BaseModelRow.name == base_model, f"base {base_model}")
            row = RunRow(
                id=run_id,
                base_model_id=base.id,
                dataset_id=dataset_id,
                status="running",
                config=dict(config),
                seed=seed,
                metrics={},
                environment=dict(environment),
            )
            s.add(row)
            s.flush()
            return _run(row)

    def finish_run(self, run_id: str, *, status: str, metrics: Mapping[str, Any]) -> Run:
        with self._session(f"finish run {run_id}") as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            row.status = status
            row.metrics = dict(metrics)
            row.finished_at = utcnow()
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
        with self._session(f"create tenant {name!r}") as s:
            if s.scalar(select(TenantRow.id).where(TenantRow.name == name)) is not None:
                raise Conflict(f"tenant {name!r} exists already")
            row = TenantRow(name=name, storage_policy=storage_policy)
            s.add(row)
            s.flush()
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
    ) -> ApiKey:
        with self._session(f"create an API key for tenant {tenant!r}") as s:
            trow = _tenant_row(s, tenant)
            row = ApiKeyRow(
                id=key_id,
                tenant_id=trow.id,
                key_hash=key_hash,
                scopes=list(scopes),
                expires_at=expires_at,
            )
            s.add(row)
            s.flush()
            return _api_key(row, trow.name)

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
        with self._session(f"revoke API key {key_id}") as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            tenant = s.get(TenantRow, row.tenant_id)
            return _api_key(row, tenant.name if tenant else "?")

    # -- registered models and versions -----------------------------------------------------

    def create_registered_model(
        self, name: str, *, tenant: str | None = None, description: str = ""
    ) -> RegisteredModel:
        check_name("model", name)
        with self._session(f"create registered model {name!r}") as s:
            if s.scalar(select(RegisteredModelRow.id).where(RegisteredModelRow.name == name)):
                raise Conflict(f"registered model {name!r} exists already")
            tenant_id = _tenant_row(s, tenant).id if tenant else None
            row = RegisteredModelRow(name=name, tenant_id=tenant_id, description=description)
            s.add(row)
            s.flush()
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
        with self._session(f"register a version of {model!r}") as s:
            mrow = _model_row(s, model)
            base = _require(s, BaseModelRow, BaseModelRow.name == base_model, f"base {base_model}")
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
            )
            s.add(row)
            s.flush()
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
        """Point ``alias`` at ``version`` (creating or moving it)."""
        check_name("alias", alias)
        with self._session(f"set alias {model}@{alias}") as s:
            mrow = _model_row(s, model)
            vrow = _version_row(s, mrow, version)
            if vrow.status == "archived":
                raise Conflict(f"{model}:{version} is archived and cannot take an alias")
            arow = s.get(ModelAliasRow, (mrow.id, alias))
            if arow is None:
                s.add(ModelAliasRow(registered_model_id=mrow.id, alias=alias, version_id=vrow.id))
            else:
                arow.version_id = vrow.id
                arow.updated_at = utcnow()
            s.flush()
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
        with self._session(f"create endpoint {name!r}") as s:
            if s.scalar(select(EndpointRow.id).where(EndpointRow.name == name)) is not None:
                raise Conflict(f"endpoint {name!r} exists already")
            tenant_id = _tenant_row(s, tenant).id if tenant else None
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
        with self._session(f"set traffic of {endpoint!r}") as s:
            erow = _endpoint_row(s, endpoint)
            mrow = s.get(RegisteredModelRow, erow.registered_model_id)
            assert mrow is not None  # guaranteed by the foreign key
            new_routes = []
            for number, weight in sorted(weights.items()):
                vrow = _version_row(s, mrow, number)
                if vrow.status == "archived" and weight > 0:
                    raise Conflict(f"{mrow.name}:{number} is archived and cannot take traffic")
                new_routes.append(TrafficRouteRow(version_id=vrow.id, weight=weight))
            for old in s.scalars(
                select(TrafficRouteRow).where(TrafficRouteRow.endpoint_id == erow.id)
            ):
                s.delete(old)
            s.flush()
            for route in new_routes:
                route.endpoint_id = erow.id
                s.add(route)
            erow.updated_at = utcnow()
            s.flush()
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
        with self._session(f"write {len(rows)} inference records") as s:
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


# -- row lookups (inside a session) ----------------------------------------------------------


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
        dict(r.metrics), dict(r.environment), r.started_at, r.finished_at,
    )  # fmt: skip


def _tenant(r: TenantRow) -> Tenant:
    return Tenant(r.id, r.name, cast(StoragePolicy, r.storage_policy), r.created_at)


def _api_key(r: ApiKeyRow, tenant: str) -> ApiKey:
    return ApiKey(
        r.id, r.tenant_id, tenant, r.key_hash, tuple(r.scopes), r.created_at,
        r.expires_at, r.revoked_at,
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
    return Endpoint(
        r.id, r.name, tenant.name if tenant else None, mrow.name, r.model_ref, r.shared, routes,
        r.created_at, r.updated_at,
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
    )  # fmt: skip
