"""Domain entities returned by the store: frozen, plain, free of SQLAlchemy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelyard.audit import AuditEvent, AuditHead, ChainReport, Role

StoragePolicy = Literal["full", "redacted", "hash", "none"]
STORAGE_POLICIES: tuple[StoragePolicy, ...] = ("full", "redacted", "hash", "none")
VersionKind = Literal["adapter", "full"]


@dataclass(frozen=True)
class BaseModel:
    id: int
    name: str
    source: str
    weight_hashes: Mapping[str, str]
    created_at: datetime


@dataclass(frozen=True)
class DatasetVersion:
    id: int
    name: str
    version: int
    digest: str
    artifact_digest: str
    format: str
    n_rows: int
    report: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Run:
    id: str
    base_model_id: int
    dataset_id: int | None
    status: str
    config: Mapping[str, Any]
    seed: int
    metrics: Mapping[str, Any]
    environment: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime | None
    created_by: str | None = None


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    storage_policy: StoragePolicy
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """A stored key: only the hash of its secret is ever kept."""

    id: str
    tenant_id: int
    tenant: str
    key_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm_limit: int | None = None  # requests/min; None: the server's default
    tpm_limit: int | None = None  # tokens/min (prompt + max_tokens); None: the server's default
    rotated_to: str | None = None  # the id of the key that replaced this one


@dataclass(frozen=True)
class RegisteredModel:
    id: int
    name: str
    tenant: str | None
    description: str
    aliases: Mapping[str, int]
    latest_version: int | None
    created_at: datetime


@dataclass(frozen=True)
class ModelVersion:
    id: int
    model: str
    version: int
    kind: VersionKind
    status: str
    artifact_digest: str
    base_model: str
    base_model_source: str
    run_id: str | None
    lineage: Mapping[str, Any]
    metrics: Mapping[str, Any]
    aliases: tuple[str, ...]
    created_at: datetime
    created_by: str | None = None  # the actor who trained it (segregation of duties)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class TrafficRoute:
    version_id: int
    version: int
    weight: int


@dataclass(frozen=True)
class Endpoint:
    id: int
    name: str
    tenant: str | None
    model: str
    model_ref: str
    shared: bool
    routes: tuple[TrafficRoute, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NewInferenceRecord:
    """What the data plane hands to the record writer."""

    id: str
    endpoint_name: str
    route: str
    latency_ms: float
    status: str
    http_status: int
    tenant_id: int | None = None
    api_key_id: str | None = None
    version_id: int | None = None
    prompt: str | None = None
    response: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    error: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class InferenceRecord:
    id: str
    created_at: datetime
    tenant: str | None
    api_key_id: str | None
    endpoint_name: str
    version: str | None
    route: str
    prompt: str | None
    response: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: str
    http_status: int
    error: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """A client's verdict on one inference record: ``score`` in [-1, 1] (thumbs: 1 / -1).

    One per record: feedback sent again for the same record replaces it
    (``updated_at`` moves, ``created_at`` stays).
    """

    id: str
    record_id: str
    tenant: str
    endpoint_name: str
    version: str | None
    score: float
    comment: str | None
    api_key_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Actor:
    """A recorded actor and its role (actors not recorded have the default role)."""

    name: str
    role: Role
    created_at: datetime
    updated_at: datetime


__all__ = [
    "STORAGE_POLICIES",
    "Actor",
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "BaseModel",
    "ChainReport",
    "DatasetVersion",
    "Endpoint",
    "Feedback",
    "InferenceRecord",
    "ModelVersion",
    "NewInferenceRecord",
    "RegisteredModel",
    "Role",
    "Run",
    "StoragePolicy",
    "Tenant",
    "TrafficRoute",
    "VersionKind",
]
