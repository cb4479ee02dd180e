"""Domain entities returned by the store: frozen, plain, free of SQLAlchemy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelyard.audit import AuditEvent, AuditHead, ChainReport, Role
from modelyard.store._monitoring_entities import (
    AlertNotification,
    AlertState,
    DriftResult,
    JudgedQuality,
    Profile,
    RecordFeatures,
    RecordSummary,
    RetentionPolicy,
)

StoragePolicy = Literal["full", "redacted", "hash", "none"]
STORAGE_POLICIES: tuple[StoragePolicy, ...] = ("full", "redacted", "hash", "none")
DEFAULT_STORAGE_POLICY: StoragePolicy = "redacted"
"""A new tenant's storage policy unless it names one: private by default (personal data
masked in stored prompts and responses); ``full`` is a choice made when creating it."""
VersionKind = Literal["adapter", "full", "upstream"]
GateState = Literal["passed", "failed", "not_evaluated"]
BudgetPeriod = Literal["day", "month"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = ("day", "month")


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

    @property
    def gates(self) -> GateStatus:
        """What its quality gates said, and the recorded overrides of that verdict."""
        return GateStatus.of(self.metrics)


@dataclass(frozen=True)
class GateStatus:
    """A version's gate verdict as promotion reads it: ``passed`` (every gate recorded
    passed), ``failed``, or ``not_evaluated`` (no verdict recorded, or no gate configured).

    Only ``passed`` lets a version take a protected alias or a rollout without an
    override; ``overrides`` are the recorded ones (actor, time, reason, what for).
    """

    state: GateState
    passed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()  # what each failed gate measured, as its verdict says
    overrides: tuple[Mapping[str, Any], ...] = ()
    unevaluated: str = "no gate verdicts recorded"  # why, when not evaluated

    @classmethod
    def of(cls, metrics: Mapping[str, Any]) -> GateStatus:
        gates = metrics.get("gates")
        overrides = tuple(o for o in metrics.get("gate_overrides") or () if isinstance(o, Mapping))
        if not isinstance(gates, Mapping):
            return cls("not_evaluated", overrides=overrides)
        if not gates.get("verdicts"):
            return cls("not_evaluated", overrides=overrides, unevaluated="no gates configured")
        verdicts = [v for v in gates["verdicts"] if isinstance(v, Mapping)]
        said = [(bool(v.get("passed")), str(v.get("reason") or v.get("gate"))) for v in verdicts]
        failed = tuple(text for ok, text in said if not ok)
        state: GateState = "passed" if gates.get("passed") and not failed else "failed"
        return cls(state, tuple(t for ok, t in said if ok), failed, overrides)

    @property
    def summary(self) -> str:
        """One sentence: ``passed (2 of 2 gates)``, ``failed 1 of 2 gates: ...``, ..."""
        total = len(self.passed) + len(self.failed)
        if self.state == "passed":
            return f"passed ({total} of {total} gates)"
        if self.state == "failed":
            return f"failed {len(self.failed)} of {total} gates: {'; '.join(self.failed)}"
        return f"not evaluated ({self.unevaluated})"

    @property
    def cell(self) -> str:
        """A short table cell: ``passed``, ``failed 1/2``, ``not evaluated``, + ``overridden``."""
        total = len(self.passed) + len(self.failed)
        text = {"passed": "passed", "failed": f"failed {len(self.failed)}/{total}"}.get(
            self.state, "not evaluated"
        )
        return text + (", overridden" if self.overrides else "")


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
    shadow_version: int | None = None  # version number receiving mirrored requests
    shadow_version_id: int | None = None
    shadow_fraction: float = 0.0
    rollout_policy: RolloutPolicy | None = None  # how an alias move reaches it (None: at once)

    @property
    def follows_alias(self) -> str | None:
        """The alias this endpoint follows (``NAME@alias`` refs), else None."""
        return self.model_ref.split("@", 1)[1] if "@" in self.model_ref else None


RolloutStatus = Literal["running", "paused", "succeeded", "rolled_back", "aborted"]
ROLLOUT_ACTIVE: tuple[str, ...] = ("running", "paused")
ENDED_PHASE = "done"
"""The phase of a rollout that ended (succeeded, rolled back, aborted): not baking any more."""


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout moves traffic: percent per step, bake time and requests per step, guards.

    Its defaults are modelyard's only rollout defaults: ``rollout start``, an
    endpoint's policy (``endpoints policy``) and a move of the alias an endpoint
    follows all start from them. Validation of the values (steps that increase
    to 100, guards that parse) is ``modelyard.delivery.check_policy``'s.
    """

    steps: tuple[int, ...] = (10, 50, 100)
    bake_s: float = 300.0
    min_requests: int = 100
    guards: tuple[str, ...] = ("error_rate <= 0.02",)

    @property
    def strategy(self) -> str:
        """``blue_green`` (one step to 100 %) or ``canary``."""
        return "blue_green" if self.steps == (100,) else "canary"

    def to_json(self) -> dict[str, Any]:
        """The form kept on the endpoint's row and in the audit chain."""
        return {"steps": list(self.steps), "bake_s": self.bake_s,
                "min_requests": self.min_requests, "guards": list(self.guards)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        """A policy from its JSON form; a key left out takes its default, an unknown key is
        refused (``ValueError``: it would be ignored otherwise)."""
        unknown = sorted(set(data) - {"steps", "bake_s", "min_requests", "guards"})
        if unknown:
            raise ValueError(
                f"unknown rollout policy key(s) {', '.join(unknown)}: "
                "use steps, bake_s, min_requests, guards"
            )
        default = cls()
        return cls(
            steps=tuple(int(x) for x in data.get("steps", default.steps)),
            bake_s=float(data.get("bake_s", default.bake_s)),
            min_requests=int(data.get("min_requests", default.min_requests)),
            guards=tuple(str(g) for g in data.get("guards", default.guards)),
        )


@dataclass(frozen=True)
class RolloutEvent:
    """One entry of a rollout's timeline."""

    time: datetime
    kind: str  # started, prepared, step, waiting, breach, rolled_back, succeeded, ...
    step_index: int | None
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class Rollout:
    """A progressive change of ``endpoint``'s traffic plan toward ``target`` (a version number).

    ``baseline`` is the plan before it started ({version: weight}); at step ``i`` the
    target gets ``steps[i]`` percent and the baseline versions share the rest.
    """

    id: str
    endpoint: str
    model: str
    target: int
    target_version_id: int
    status: RolloutStatus
    phase: str  # preparing | baking while active; ENDED_PHASE ("done") once it ended
    strategy: str  # canary | blue_green
    baseline: Mapping[int, int]
    steps: tuple[int, ...]
    step_index: int
    step_started_at: datetime | None
    bake_s: float
    min_requests: int
    guards: tuple[str, ...]
    promote_alias: str | None
    reason: str | None
    outcome: Mapping[str, Any]
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events: tuple[RolloutEvent, ...] = ()

    @property
    def active(self) -> bool:
        return self.status in ROLLOUT_ACTIVE

    @property
    def target_ref(self) -> str:
        return f"{self.model}:{self.target}"


@dataclass(frozen=True)
class Server:
    """A serving replica as its last heartbeat described it."""

    id: str
    address: str
    hostname: str
    pid: int
    engine: str
    modelyard_version: str
    started_at: datetime
    heartbeat_at: datetime
    ready: bool
    draining: bool
    loaded: tuple[str, ...]
    failures: Mapping[str, str]  # version ref -> why it failed to load here
    prepared: Mapping[str, Mapping[str, Any]]  # rollout id -> {"ok": bool, "error": ...}
    alive: bool = True  # heartbeat recent enough (set by the store when listing)


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
    shadow: bool = False
    fallback_from_id: int | None = None
    tool_calls: int | None = None  # calls the answer made, when tools were offered
    format_ok: bool | None = None  # a constrained answer came out as JSON / a call
    source: str = "api"  # where the request came from: api, batch, stream
    job_id: str | None = None  # a batch job, or a stream's STREAM/GROUP


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
    shadow: bool = False  # a mirrored answer, never returned to the client
    fallback_from: str | None = None  # the version it was routed to but could not be served by
    source: str = "api"  # where the request came from: api, batch, stream
    job_id: str | None = None  # a batch job, or a stream's STREAM/GROUP


@dataclass(frozen=True)
class Feedback:
    """A client's verdict on one inference record: ``score`` in [-1, 1] (thumbs: 1 / -1).

    One per record: feedback sent again for the same record replaces it
    (``updated_at`` moves, ``created_at`` stays). ``counted`` is false for a correction of
    a request that got no answer (its record refused or error; ``answered``): the label is
    kept for training, the score, rating no answer, counts in no mean feedback score.
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
    label: str | None = None  # a person's correct answer or class for the request
    counted: bool = True  # whether the score counts in the means (its request was answered)


@dataclass(frozen=True)
class Actor:
    """A recorded actor and its role (actors not recorded have the default role)."""

    name: str
    role: Role
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Budget:
    """A cap on what ``tenant`` (or its key ``key_id``) spends per ``period`` (a UTC day
    or month), in the currency of the token prices."""

    tenant: str
    key_id: str | None
    period: BudgetPeriod
    amount: float
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class TokenPrice:
    """Price per 1,000 tokens (prompt and completion) of one base model."""

    base_model: str
    input_per_1k: float
    output_per_1k: float
    updated_at: datetime


__all__ = [
    "BUDGET_PERIODS",
    "DEFAULT_STORAGE_POLICY",
    "ROLLOUT_ACTIVE",
    "STORAGE_POLICIES",
    "Actor",
    "AlertNotification",
    "AlertState",
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "BaseModel",
    "Budget",
    "BudgetPeriod",
    "ChainReport",
    "DatasetVersion",
    "DriftResult",
    "Endpoint",
    "Feedback",
    "GateState",
    "GateStatus",
    "InferenceRecord",
    "JudgedQuality",
    "ModelVersion",
    "NewInferenceRecord",
    "Profile",
    "RecordFeatures",
    "RecordSummary",
    "RegisteredModel",
    "RetentionPolicy",
    "Role",
    "Rollout",
    "RolloutEvent",
    "RolloutPolicy",
    "RolloutStatus",
    "Run",
    "Server",
    "StoragePolicy",
    "Tenant",
    "TokenPrice",
    "TrafficRoute",
    "VersionKind",
]
