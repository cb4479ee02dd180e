"""ORM rows of the store. Private: nothing outside ``modelyard.store`` sees a row.

The schema changes only through Alembic migrations (``store/migrations``); a
test checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}  # noqa: RUF012


class BaseModelRow(Base):
    __tablename__ = "base_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)
    weight_hashes: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_datasets_name_version"),
        UniqueConstraint("name", "digest", name="uq_datasets_name_digest"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64))
    artifact_digest: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    n_rows: Mapped[int]
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    seed: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    environment: Mapped[dict[str, Any]]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(String(200))


class TenantRow(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    storage_policy: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Per-key limits (NULL: the server's --default-rpm / --default-tpm).
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]
    # The key that replaced this one (``keys rotate``); this one expires after a grace period.
    rotated_to: Mapped[str | None] = mapped_column(String(32))


class RegisteredModelRow(Base):
    __tablename__ = "registered_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("registered_model_id", "version", name="uq_model_versions_model_version"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registered_model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"))
    version: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    artifact_digest: Mapped[str] = mapped_column(String(64))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    lineage: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The actor who trained it (its run's actor), else who registered it.
    created_by: Mapped[str | None] = mapped_column(String(200))
    # Free-form labels (team, ticket, dataset notes); the one mutable part of a version.
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))


class ModelAliasRow(Base):
    __tablename__ = "model_aliases"
    registered_model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_models.id"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EndpointRow(Base):
    __tablename__ = "endpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    registered_model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"))
    model_ref: Mapped[str] = mapped_column(String(300))
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A version that receives a copy of a sample of the requests (answers recorded, never
    # returned), and the share of requests mirrored to it.
    shadow_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    shadow_fraction: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # How a move of the alias this endpoint follows reaches it: NULL moves it at once,
    # else a rollout with these settings (steps, bake_s, min_requests, guards).
    rollout_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class TrafficRouteRow(Base):
    """One weighted version of an endpoint's traffic plan (weights sum to 100)."""

    __tablename__ = "traffic_routes"
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    weight: Mapped[int]


class InferenceRecordRow(Base):
    __tablename__ = "inference_records"
    __table_args__ = (
        Index("ix_inference_records_endpoint_created", "endpoint_name", "created_at"),
        Index("ix_inference_records_tenant_created", "tenant_id", "created_at"),
        # only the rows of requests still running (migration 0008): closed when a server dies
        Index(
            "ix_inference_records_running",
            "server_id",
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
        # only the rows of batch jobs (migration 0012): a job's records, found when it resumes
        Index(
            "ix_inference_records_job",
            "job_id",
            sqlite_where=text("job_id IS NOT NULL"),
            postgresql_where=text("job_id IS NOT NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    endpoint_name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    route: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int]
    error: Mapped[str | None] = mapped_column(Text)
    # A shadow answer (mirrored, never returned), and the version a request was routed to
    # but could not be served by (it fell back to ``version_id``, a baseline version).
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    fallback_from_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    # The server that runs (ran) the request (migration 0008); ``status`` is ``running``
    # from its admission to its end.
    server_id: Mapped[str | None] = mapped_column(String(64))
    # What a constrained or tool-offering answer did (migration 0010): the calls it made
    # when tools were offered, and whether it came out as the JSON or call it had to be.
    tool_calls: Mapped[int | None] = mapped_column(Integer)
    format_ok: Mapped[bool | None] = mapped_column(Boolean)
    # Where the request came from (migration 0012): ``api``, or ``batch`` or ``stream`` with
    # its job's id (a stream's ``STREAM/GROUP``).
    source: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    job_id: Mapped[str | None] = mapped_column(String(64))


class RolloutRow(Base):
    """A progressive change of an endpoint's traffic plan toward ``target_version_id``."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_endpoint_status", "endpoint_id", "status"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    target_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # running | paused | succeeded | rolled_back | aborted
    status: Mapped[str] = mapped_column(String(16))
    # preparing (loading the target on every live server) | baking (a step is live)
    phase: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[str] = mapped_column(String(16))  # canary | blue_green
    baseline: Mapped[dict[str, Any]]  # the plan before: {version number: weight}
    steps: Mapped[list[Any]]
    step_index: Mapped[int] = mapped_column(default=0)
    step_started_at: Mapped[datetime | None]
    bake_s: Mapped[float] = mapped_column(Float)
    min_requests: Mapped[int]
    guards: Mapped[list[Any]]
    promote_alias: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class RolloutEventRow(Base):
    """One entry of a rollout's timeline (started, step, breach, promoted, ...)."""

    __tablename__ = "rollout_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    step_index: Mapped[int | None]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ServerRow(Base):
    """A serving replica's heartbeat: what it holds and what failed to load there."""

    __tablename__ = "servers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(300))
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    engine: Mapped[str] = mapped_column(String(32))
    modelyard_version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    ready: Mapped[bool] = mapped_column(Boolean)
    draining: Mapped[bool] = mapped_column(Boolean)
    # {"loaded": [refs], "failures": {ref: message}, "prepared": {rollout id: {...}}}
    state: Mapped[dict[str, Any]]


class LeaseRow(Base):
    """A named lease (``controller``): one holder at a time until ``expires_at``."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class ActorRow(Base):
    """A named actor with a role; actors absent from this table have the default role."""

    __tablename__ = "actors"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEventRow(Base):
    """One link of the audit chain; ``seq`` is the primary key (gap-free, never reused)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_time", "time"),
        Index("ix_audit_events_action", "action"),
        Index("ix_audit_events_subject", "subject"),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(300))
    payload: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The chain's newest ``seq`` and hash (one row, id 1; migration 0009).

    Written in the same transaction as every append, so an emptied or shortened
    ``audit_events`` table no longer matches it: verify reports the removed
    events and appending is refused, instead of a new chain starting silently.
    """

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditBreakRow(Base):
    """A break of the audit chain the store found (``audit verify``, or the check before
    an append; migration 0011). While one is not acknowledged (``acknowledged_seq``
    NULL), every audited change is refused; the acknowledgment event's seq closes it."""

    __tablename__ = "audit_breaks"
    __table_args__ = (Index("ix_audit_breaks_acknowledged_seq", "acknowledged_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    found_at: Mapped[datetime] = mapped_column(default=utcnow)
    found_by: Mapped[str] = mapped_column(String(200))
    found_in: Mapped[str] = mapped_column(String(16))  # verify | write
    acknowledged_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FeedbackRow(Base):
    """A client's verdict on one inference record; one per record (the latest wins)."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_tenant_updated", "tenant_id", "updated_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    record_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("inference_records.id", ondelete="CASCADE"), unique=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(500))  # a person's correct answer (0015)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- monitoring (migration 0005) --------------------------------------------------------------


class RecordFeaturesRow(Base):
    """Drift features of one inference record, computed before the storage policy applies."""

    __tablename__ = "record_features"
    # One covering index: a drift window is one index range scan (migrations 0007, 0029).
    __table_args__ = (
        Index(
            "ix_record_features_window", "endpoint_name", "version_id", "status", "shadow",
            "created_at", "prompt_tokens", "completion_tokens", "latency_ms", "prompt_chars",
            "response_chars",
            "prompt_non_ascii", "prompt_digits", "response_non_ascii", "response_digits",
            "unknown_token_rate",
        ),
    )  # fmt: skip
    record_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("inference_records.id", ondelete="CASCADE"), primary_key=True
    )
    # Copies of the record's own columns (migration 0007), so drift needs no join.
    endpoint_name: Mapped[str | None] = mapped_column(String(100))
    version_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(String(16))
    # a shadow copy's features (migration 0029): drift reads users' requests only
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime | None]
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_chars: Mapped[int] = mapped_column(Integer)
    response_chars: Mapped[int] = mapped_column(Integer)
    prompt_non_ascii: Mapped[float] = mapped_column(Float)
    prompt_digits: Mapped[float] = mapped_column(Float)
    response_non_ascii: Mapped[float] = mapped_column(Float)
    response_digits: Mapped[float] = mapped_column(Float)
    unknown_token_rate: Mapped[float | None] = mapped_column(Float)
    cache_hit: Mapped[bool | None] = mapped_column(Boolean)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)


class ProfileRow(Base):
    """Aggregates of one (window, start, endpoint, version, tenant, shadow) bucket of records."""

    __tablename__ = "monitor_profiles"
    __table_args__ = (
        Index("ix_monitor_profiles_window_start", "window", "start"),
        Index("ix_monitor_profiles_endpoint", "endpoint_name", "window", "start"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    window: Mapped[str] = mapped_column(String(8))
    start: Mapped[datetime]
    endpoint_name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    ttft_p50_ms: Mapped[float | None] = mapped_column(Float)
    ttft_p95_ms: Mapped[float | None] = mapped_column(Float)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float | None] = mapped_column(Float)
    cache_hits: Mapped[int] = mapped_column(Integer)
    cache_known: Mapped[int] = mapped_column(Integer)
    feedback_count: Mapped[int] = mapped_column(Integer)
    feedback_sum: Mapped[float] = mapped_column(Float)
    # answers' tool calls, constrained answers checked and those that failed (migration 0010)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    format_checked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # requests that ended (ok, error, timeout): the error rate's denominator (migration 0024;
    # NULL in profiles computed before it)
    ended: Mapped[int | None] = mapped_column(Integer)
    format_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the copies mirrored to a shadow version (migration 0028); false: the requests users sent
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    latency_hist: Mapped[list[Any]]
    ttft_hist: Mapped[list[Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorStateRow(Base):
    """Small key/value state of the monitoring loop (watermarks)."""

    __tablename__ = "monitor_state"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftResultRow(Base):
    """One feature's drift test in one drift run."""

    __tablename__ = "drift_results"
    __table_args__ = (
        Index("ix_drift_results_endpoint_computed", "endpoint_name", "computed_at"),
        Index("ix_drift_results_endpoint_scheduled", "endpoint_name", "scheduled", "computed_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    computed_at: Mapped[datetime]
    endpoint_name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    reference: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    feature: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    drifted: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    n_reference: Mapped[int] = mapped_column(Integer)
    n_current: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]]
    # made by the monitoring tick (the rules file's drift: section), not by hand
    scheduled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class AlertStateRow(Base):
    """The state of one alert (a rule and one set of labels): pending, firing or resolved."""

    __tablename__ = "alert_states"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[str] = mapped_column(String(100))
    labels: Mapped[dict[str, Any]]
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(Text)
    active_since: Mapped[datetime | None]
    fired_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    last_evaluated: Mapped[datetime]


class AlertNotificationRow(Base):
    """One notification of an alert's change of state to one target."""

    __tablename__ = "alert_notifications"
    __table_args__ = (Index("ix_alert_notifications_alert", "alert_id", "id"),)  # 0020
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("alert_states.id", ondelete="CASCADE")
    )
    rule: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(300))
    sent_at: Mapped[datetime]
    ok: Mapped[bool] = mapped_column(Boolean)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class RetentionPolicyRow(Base):
    """How many days a tenant's raw inference records are kept (profiles stay)."""

    __tablename__ = "retention_policies"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    raw_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BudgetRow(Base):
    """A cap on what a tenant (``key_id`` empty) or one of its keys spends per day or month."""

    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key_id", "period", name="uq_budgets_subject_period"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(32), default="")
    period: Mapped[str] = mapped_column(String(8))
    amount: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200))


class TokenPriceRow(Base):
    """Price per 1,000 tokens of one base model, for the cost in profiles."""

    __tablename__ = "token_prices"
    base_model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_per_1k: Mapped[float] = mapped_column(Float)
    output_per_1k: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
