"""The store: desired state on SQLite (default) or PostgreSQL, behind one ``Store`` class.

Schema changes go through Alembic migrations in ``store/migrations``; they are
applied by ``modelyard init`` and on first use. Every change appends one event to
the audit chain in the same transaction and is checked against the actor's role.
"""

from modelyard.store._engine import head_revision, redact_url
from modelyard.store._store import Store, check_name, parse_model_ref
from modelyard.store.entities import (
    STORAGE_POLICIES,
    Actor,
    ApiKey,
    AuditEvent,
    AuditHead,
    BaseModel,
    ChainReport,
    DatasetVersion,
    Endpoint,
    Feedback,
    InferenceRecord,
    ModelVersion,
    NewInferenceRecord,
    RegisteredModel,
    Role,
    Run,
    StoragePolicy,
    Tenant,
    TrafficRoute,
    VersionKind,
)

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
    "Store",
    "Tenant",
    "TrafficRoute",
    "VersionKind",
    "check_name",
    "head_revision",
    "parse_model_ref",
    "redact_url",
]
