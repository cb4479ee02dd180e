"""Rows to frozen entities (``modelyard.store.entities``): no row leaves the store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelyard.audit import check_role
from modelyard.store._rows import version_ref_of
from modelyard.store._samples import answered
from modelyard.store._schema import (
    ActorRow,
    ApiKeyRow,
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
)
from modelyard.store.entities import (
    Actor,
    ApiKey,
    BaseModel,
    DatasetVersion,
    Endpoint,
    Feedback,
    InferenceRecord,
    ModelVersion,
    RegisteredModel,
    RolloutPolicy,
    Run,
    StoragePolicy,
    Tenant,
    TrafficRoute,
    VersionKind,
)


def to_base_model(r: BaseModelRow) -> BaseModel:
    return BaseModel(r.id, r.name, r.source, dict(r.weight_hashes), r.created_at)


def to_dataset(r: DatasetRow) -> DatasetVersion:
    return DatasetVersion(
        r.id, r.name, r.version, r.digest, r.artifact_digest, r.format, r.n_rows,
        dict(r.report), r.created_at,
    )  # fmt: skip


def to_run(r: RunRow) -> Run:
    return Run(
        r.id, r.base_model_id, r.dataset_id, r.status, dict(r.config), r.seed,
        dict(r.metrics), dict(r.environment), r.started_at, r.finished_at, r.created_by,
    )  # fmt: skip


def to_actor(r: ActorRow) -> Actor:
    return Actor(r.name, check_role(r.role), r.created_at, r.updated_at)


def to_tenant(r: TenantRow) -> Tenant:
    return Tenant(r.id, r.name, cast(StoragePolicy, r.storage_policy), r.created_at)


def to_api_key(r: ApiKeyRow, tenant: str) -> ApiKey:
    return ApiKey(
        r.id, r.tenant_id, tenant, r.key_hash, tuple(r.scopes), r.created_at,
        r.expires_at, r.revoked_at, r.rpm_limit, r.tpm_limit, r.rotated_to,
    )  # fmt: skip


def to_feedback(s: Session, f: FeedbackRow, record: InferenceRecordRow, tenant: str) -> Feedback:
    return Feedback(
        f.id, f.record_id, tenant, record.endpoint_name, version_ref_of(s, record.version_id),
        f.score, f.comment, f.api_key_id, f.created_at, f.updated_at, f.label,
        answered(record.status),
    )  # fmt: skip


def to_registered_model(s: Session, r: RegisteredModelRow) -> RegisteredModel:
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


def to_version(
    s: Session, r: ModelVersionRow, aliases: Iterable[str] | None = None
) -> ModelVersion:
    """``aliases``, when the caller read them for many versions at once: not read again."""
    mrow = s.get(RegisteredModelRow, r.registered_model_id)
    base = s.get(BaseModelRow, r.base_model_id)
    assert mrow is not None and base is not None  # guaranteed by foreign keys
    if aliases is None:
        aliases = s.scalars(select(ModelAliasRow.alias).where(ModelAliasRow.version_id == r.id))
    return ModelVersion(
        r.id, mrow.name, r.version, cast(VersionKind, r.kind), r.status, r.artifact_digest,
        base.name, base.source, r.run_id, dict(r.lineage), dict(r.metrics),
        tuple(sorted(aliases)), r.created_at,
        r.created_by, dict(r.tags or {}),
    )  # fmt: skip


def to_endpoint(
    s: Session, r: EndpointRow, routes: tuple[TrafficRoute, ...] | None = None
) -> Endpoint:
    """``routes``, when the caller read them for many endpoints at once: not read again."""
    tenant = s.get(TenantRow, r.tenant_id) if r.tenant_id else None
    mrow = s.get(RegisteredModelRow, r.registered_model_id)
    assert mrow is not None  # guaranteed by the foreign key
    if routes is None:
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
        shadow.id if shadow else None, r.shadow_fraction if shadow else 0.0,
        None if r.rollout_policy is None else RolloutPolicy.from_json(r.rollout_policy),
    )  # fmt: skip


def to_record(s: Session, r: InferenceRecordRow) -> InferenceRecord:
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
        shadow=bool(r.shadow), fallback_from=version_ref_of(s, r.fallback_from_id),
        source=r.source, job_id=r.job_id,
    )  # fmt: skip
