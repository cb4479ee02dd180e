"""What the registry, endpoint, rollout, audit, tenant, key, budget and monitoring commands
ask of the control plane (``ControlPlane``), answered by the store here
(``_plane.LocalPlane``) or by a server's admin API (``_remote_plane.RemotePlane``), both
with the store's entities, or with the views below where the API sends less than an
entity holds (a key without its hash, a drift run not stored)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from modelyard.audit import AuditHead, ChainReport, RecordedBreak
from modelyard.cli._remote import URL_ENV, remote_url
from modelyard.errors import ConfigError, NotFound
from modelyard.registry import LineageNode
from modelyard.store import (
    AlertState,
    ApiKey,
    AuditEvent,
    Endpoint,
    GateStatus,
    ModelVersion,
    Profile,
    RegisteredModel,
    Rollout,
    StoragePolicy,
    Tenant,
)

if TYPE_CHECKING:  # modelyard.delivery is loaded by the commands that need it
    from modelyard.delivery import GuardResult


@dataclass(frozen=True)
class CurrentStep:
    """A baking rollout's current step: the new version's requests, the baseline's, how
    long the step has run, and each guard's value against its threshold."""

    requests: int
    baseline_requests: int
    elapsed_s: float
    guards: tuple[GuardResult, ...]


@dataclass(frozen=True)
class KeyInfo:
    """An API key as the commands show it: every field of the stored ``ApiKey`` but the
    hash of its secret (which the admin API never sends)."""

    id: str
    tenant_id: int
    tenant: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    rotated_to: str | None = None

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        return cls(**{f.name: getattr(key, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelListing:
    """A registered model as ``registry list`` shows it: with the gate status of its
    latest version (None: no version yet)."""

    model: RegisteredModel
    latest_gates: GateStatus | None


@dataclass(frozen=True)
class NewKey:
    """A key just made (created or rotated in), its secret shown once, and, for a
    rotation, the key it replaced and when that one stops working."""

    key: KeyInfo
    secret: str
    rotated_from: str | None = None
    old_expires_at: datetime | None = None


@dataclass(frozen=True)
class DriftFeature:
    """One feature's drift test, as ``monitor drift`` prints it."""

    feature: str
    method: str
    value: float | None
    threshold: float | None  # None where no method applied (method "-")
    drifted: bool | None
    status: str
    n_reference: int
    n_current: int


@dataclass(frozen=True)
class DriftRun:
    """A drift computation: the features tested against the reference, and whether the
    run was stored (on the database it is; the admin API computes and does not store)."""

    endpoint: str
    version: str
    reference: str
    window_start: datetime
    window_end: datetime
    features: tuple[DriftFeature, ...]
    stored: bool
    run_id: str | None = None  # the stored run's id (the report names it); None: not stored

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]


class ControlPlane(Protocol):
    """The operations of the commands that work locally and against a server."""

    def __enter__(self) -> ControlPlane: ...

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    # registry
    def list_models(self, tenant: str | None = None) -> list[ModelListing]: ...
    def list_model_versions(self, model: str) -> list[ModelVersion]: ...
    def get_model_version(self, model: str, version: int) -> ModelVersion: ...
    def resolve_model_ref(self, ref: str) -> ModelVersion: ...
    def lineage_chain(self, version: ModelVersion) -> LineageNode: ...
    def version_card(self, ref: str) -> tuple[ModelVersion, str]: ...
    def set_alias(
        self, model: str, alias: str, version: int, *, override_gates: str | None = None
    ) -> ModelVersion: ...
    def delete_alias(self, model: str, alias: str) -> ModelVersion: ...
    def archive_model_version(self, model: str, version: int) -> ModelVersion: ...
    def tag_version(
        self, ref: str, items: Sequence[str], remove: Sequence[str]
    ) -> ModelVersion: ...

    # endpoints and rollouts
    def list_endpoints(self, tenant: str | None = None) -> list[Endpoint]: ...
    def get_endpoint(self, name: str) -> Endpoint: ...
    def set_traffic(self, endpoint: str, weights: Mapping[int, int]) -> Endpoint: ...
    def set_shadow(self, endpoint: str, version: int | None, fraction: float = 0.0) -> Endpoint: ...
    def list_rollouts(
        self, *, endpoint: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Rollout]: ...
    def latest_rollout(self, endpoint: str) -> Rollout: ...
    def rollout_status(self, endpoint: str) -> tuple[Rollout, CurrentStep | None]: ...
    def start_rollout(
        self, endpoint: str, to: str, *, steps: str, bake_s: float, min_requests: int,
        guards: Sequence[str], promote_alias: str | None, override_gates: str | None,
    ) -> Rollout: ...  # fmt: skip
    def promote_rollout(self, endpoint: str) -> Rollout: ...
    def abort_rollout(self, endpoint: str, reason: str | None = None) -> Rollout: ...
    def pause_rollout(self, endpoint: str) -> Rollout: ...
    def resume_rollout(self, endpoint: str) -> Rollout: ...
    def wait_rollout(
        self, endpoint: str, *, timeout_s: float, poll_s: float,
        on_change: Callable[[Rollout], None] | None,
    ) -> tuple[Rollout, bool]: ...  # fmt: skip

    # audit
    def list_audit_events(
        self, *, since: datetime | None = None, action: str | None = None,
        subject: str | None = None, actor: str | None = None, limit: int | None = 100,
        exclude_actions: Sequence[str] = (),
    ) -> list[AuditEvent]: ...  # fmt: skip
    def open_audit_breaks(self) -> list[RecordedBreak] | None: ...
    def verify_audit_chain(self, head: AuditHead | None = None) -> ChainReport: ...

    # tenants, keys and budgets
    def list_tenants(self) -> list[Tenant]: ...
    def create_tenant(self, name: str, storage_policy: StoragePolicy) -> Tenant: ...
    def list_api_keys(self, tenant: str | None = None) -> list[KeyInfo]: ...
    def create_api_key(
        self, tenant: str, *, scopes: Sequence[str], expires: str | None,
        rpm_limit: int | None, tpm_limit: int | None,
    ) -> NewKey: ...  # fmt: skip
    def revoke_api_key(self, key_id: str) -> tuple[KeyInfo, bool]: ...  # True: already revoked
    def rotate_api_key(self, key_id: str, *, grace: str, expires: str | None) -> NewKey: ...
    def set_api_key_limits(self, key_id: str, limits: Mapping[str, int | None]) -> KeyInfo: ...
    def list_budget_rows(self, tenant: str | None = None) -> list[dict[str, object]]: ...
    def usage_rows(
        self, *, since: datetime, until: datetime | None, tenant: str | None, by: list[str]
    ) -> list[dict[str, object]]: ...

    # monitoring
    def update_profiles(self) -> bool: ...
    def list_profiles(
        self, *, window: str, endpoint: str | None, tenant: str | None, since: datetime | None,
        shadow: bool | None,
    ) -> list[Profile]: ...  # fmt: skip
    def compute_drift(
        self, endpoint: str, *, version: str | None, reference: str, window: str,
        end: datetime | None, method: Sequence[str], threshold: Sequence[str],
        min_samples: int, semantic: bool,
    ) -> DriftRun: ...  # fmt: skip
    def list_alert_states(self, state: str | None = None) -> list[AlertState]: ...


def no_such_key(key_id: str) -> NotFound:
    """The error for a key id no key has (``keys limits``), on both planes."""
    return NotFound(f"no API key with id {key_id!r}", hint="See `modelyard keys list`.")


def needs_database(what: str) -> None:
    """Refuse ``what`` (an option the admin API has no route for) while MODELYARD_URL is set."""
    if remote_url() is not None:
        raise ConfigError(
            f"{what} works on the database only: the admin API has no route for it",
            hint=f"Unset {URL_ENV} to run it here, with the database's settings.",
        )


__all__ = [
    "ControlPlane",
    "CurrentStep",
    "DriftFeature",
    "DriftRun",
    "KeyInfo",
    "ModelListing",
    "NewKey",
    "needs_database",
    "no_such_key",
]
