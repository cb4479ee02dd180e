"""The two ways the control plane answers the commands: the store here, or a server's
admin API (``MODELYARD_URL``).

``open_plane()`` is the seam: a ``LocalPlane`` over ``open_store()`` (the database,
acting as ``--actor`` / MODELYARD_ACTOR / the OS user), or a ``RemotePlane`` (the
admin API, acting as the token's person). Both return the store's entities, so a
command renders their answers the same way whichever answered. Commands the admin API
has no route for keep ``open_store()``, which refuses to run while MODELYARD_URL is set
(``refuse_remote``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType

from modelyard.audit import AuditHead, ChainReport, RecordedBreak
from modelyard.cli._common import open_store
from modelyard.cli._control import ControlPlane, CurrentStep
from modelyard.cli._remote import remote_url
from modelyard.registry import LineageNode
from modelyard.store import AuditEvent, Endpoint, ModelVersion, RegisteredModel, Rollout, Store


class LocalPlane:
    """The control plane on the database: the store and the library functions the
    commands always called."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> LocalPlane:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.store.close()

    def list_registered_models(self, tenant: str | None = None) -> list[RegisteredModel]:
        return self.store.list_registered_models(tenant)

    def list_model_versions(self, model: str) -> list[ModelVersion]:
        return self.store.list_model_versions(model)

    def get_model_version(self, model: str, version: int) -> ModelVersion:
        return self.store.get_model_version(model, version)

    def resolve_model_ref(self, ref: str) -> ModelVersion:
        return self.store.resolve_model_ref(ref)

    def lineage_chain(self, version: ModelVersion) -> LineageNode:
        from modelyard.registry import lineage_chain

        return lineage_chain(self.store, version)

    def version_card(self, ref: str) -> tuple[ModelVersion, str]:
        from modelyard.registry import version_card

        return version_card(self.store, ref)

    def set_alias(
        self, model: str, alias: str, version: int, *, override_gates: str | None = None
    ) -> ModelVersion:
        return self.store.set_alias(model, alias, version, override_gates=override_gates)

    def delete_alias(self, model: str, alias: str) -> ModelVersion:
        return self.store.delete_alias(model, alias)

    def archive_model_version(self, model: str, version: int) -> ModelVersion:
        return self.store.archive_model_version(model, version)

    def tag_version(self, ref: str, items: Sequence[str], remove: Sequence[str]) -> ModelVersion:
        from modelyard.registry import tag_version

        return tag_version(self.store, ref, items, remove)

    def list_endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        return self.store.list_endpoints(tenant)

    def get_endpoint(self, name: str) -> Endpoint:
        return self.store.get_endpoint(name)

    def set_traffic(self, endpoint: str, weights: Mapping[int, int]) -> Endpoint:
        return self.store.set_traffic(endpoint, weights)

    def set_shadow(self, endpoint: str, version: int | None, fraction: float = 0.0) -> Endpoint:
        return self.store.set_shadow(endpoint, version, fraction)

    def list_rollouts(
        self, *, endpoint: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Rollout]:
        return self.store.list_rollouts(endpoint=endpoint, active=active, limit=limit)

    def latest_rollout(self, endpoint: str) -> Rollout:
        return self.store.latest_rollout(endpoint)

    def rollout_status(self, endpoint: str) -> tuple[Rollout, CurrentStep | None]:
        from modelyard.delivery import step_view

        r = self.store.latest_rollout(endpoint)
        if not (r.active and r.phase == "baking"):
            return r, None
        view = step_view(self.store, r)
        step = CurrentStep(
            view.canary.requests, view.baseline.requests, view.elapsed_s, tuple(view.guards)
        )
        return r, step

    def start_rollout(
        self, endpoint: str, to: str, *, steps: str, bake_s: float, min_requests: int,
        guards: Sequence[str], promote_alias: str | None, override_gates: str | None,
    ) -> Rollout:  # fmt: skip
        from modelyard.delivery import start_rollout

        return start_rollout(
            self.store, endpoint, to, steps=steps, bake_s=bake_s, min_requests=min_requests,
            guards=guards, promote_alias=promote_alias, override_gates=override_gates,
        )  # fmt: skip

    def promote_rollout(self, endpoint: str) -> Rollout:
        from modelyard.delivery import promote_rollout

        return promote_rollout(self.store, endpoint)

    def abort_rollout(self, endpoint: str, reason: str | None = None) -> Rollout:
        from modelyard.delivery import abort_rollout

        return abort_rollout(self.store, endpoint, reason)

    def pause_rollout(self, endpoint: str) -> Rollout:
        from modelyard.delivery import pause_rollout

        return pause_rollout(self.store, endpoint)

    def resume_rollout(self, endpoint: str) -> Rollout:
        from modelyard.delivery import resume_rollout

        return resume_rollout(self.store, endpoint)

    def wait_rollout(
        self, endpoint: str, *, timeout_s: float, poll_s: float,
        on_change: Callable[[Rollout], None] | None,
    ) -> tuple[Rollout, bool]:  # fmt: skip
        from modelyard.delivery import wait_rollout

        return wait_rollout(
            self.store, endpoint, timeout_s=timeout_s, poll_s=poll_s, on_change=on_change
        )

    def list_audit_events(
        self, *, since: datetime | None = None, action: str | None = None,
        subject: str | None = None, actor: str | None = None, limit: int | None = 100,
    ) -> list[AuditEvent]:  # fmt: skip
        return self.store.list_audit_events(
            since=since, action=action, subject=subject, actor=actor, limit=limit
        )

    def open_audit_breaks(self) -> list[RecordedBreak]:
        return self.store.open_audit_breaks()

    def verify_audit_chain(self, head: AuditHead | None = None) -> ChainReport:
        return self.store.verify_audit_chain(head)


def open_plane() -> ControlPlane:
    """The server's admin API when MODELYARD_URL is set, else the store here."""
    if remote_url() is None:
        return LocalPlane(open_store())
    from modelyard.cli._remote_plane import RemotePlane

    return RemotePlane.from_env()


__all__ = ["LocalPlane", "open_plane"]
