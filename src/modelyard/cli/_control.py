"""What the registry, endpoint, rollout and audit commands ask of the control plane
(``ControlPlane``), answered by the store here (``_plane.LocalPlane``) or by a server's
admin API (``_remote_plane.RemotePlane``), both with the store's entities."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from modelyard.audit import AuditHead, ChainReport, RecordedBreak
from modelyard.cli._remote import URL_ENV, remote_url
from modelyard.errors import ConfigError
from modelyard.registry import LineageNode
from modelyard.store import AuditEvent, Endpoint, ModelVersion, RegisteredModel, Rollout

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


class ControlPlane(Protocol):
    """The operations of the commands that work locally and against a server."""

    def __enter__(self) -> ControlPlane: ...

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    # registry
    def list_registered_models(self, tenant: str | None = None) -> list[RegisteredModel]: ...
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
    ) -> list[AuditEvent]: ...  # fmt: skip
    def open_audit_breaks(self) -> list[RecordedBreak] | None: ...
    def verify_audit_chain(self, head: AuditHead | None = None) -> ChainReport: ...


def needs_database(what: str) -> None:
    """Refuse ``what`` (an option the admin API has no route for) while MODELYARD_URL is set."""
    if remote_url() is not None:
        raise ConfigError(
            f"{what} works on the database only: the admin API has no route for it",
            hint=f"Unset {URL_ENV} to run it here, with the database's settings.",
        )


__all__ = ["ControlPlane", "CurrentStep", "needs_database"]
