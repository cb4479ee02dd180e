"""The store: desired state on SQLite (default) or PostgreSQL, behind one ``Store`` class.

Schema changes go through Alembic migrations in ``store/migrations``; they are
applied by ``modelyard init`` and on first use.
"""

from modelyard.store._engine import head_revision, redact_url
from modelyard.store._store import Store, check_name, parse_model_ref
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

__all__ = [
    "STORAGE_POLICIES",
    "ApiKey",
    "BaseModel",
    "DatasetVersion",
    "Endpoint",
    "InferenceRecord",
    "ModelVersion",
    "NewInferenceRecord",
    "RegisteredModel",
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
