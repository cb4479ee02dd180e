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
from datetime import UTC, datetime
from types import TracebackType

from modelyard.audit import AuditHead, ChainReport, RecordedBreak
from modelyard.cli._common import open_artifacts, open_store
from modelyard.cli._control import (
    ControlPlane,
    CurrentStep,
    DriftFeature,
    DriftRun,
    KeyInfo,
    ModelListing,
    NewKey,
    no_such_key,
)
from modelyard.cli._remote import remote_url
from modelyard.durations import parse_duration
from modelyard.registry import LineageNode
from modelyard.store import (
    AlertState,
    AuditEvent,
    Endpoint,
    ModelVersion,
    Profile,
    Rollout,
    StoragePolicy,
    Store,
    Tenant,
)


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

    def list_models(self, tenant: str | None = None) -> list[ModelListing]:
        found = self.store.list_models_with_latest(tenant)
        return [ModelListing(m, None if v is None else v.gates) for m, v in found]

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
        exclude_actions: Sequence[str] = (),
    ) -> list[AuditEvent]:  # fmt: skip
        return self.store.list_audit_events(
            since=since, action=action, subject=subject, actor=actor, limit=limit,
            exclude_actions=exclude_actions,
        )  # fmt: skip

    def open_audit_breaks(self) -> list[RecordedBreak]:
        return self.store.open_audit_breaks()

    def verify_audit_chain(self, head: AuditHead | None = None) -> ChainReport:
        return self.store.verify_audit_chain(head)

    # -- tenants, keys and budgets -------------------------------------------------------

    def list_tenants(self) -> list[Tenant]:
        return self.store.list_tenants()

    def create_tenant(self, name: str, storage_policy: StoragePolicy) -> Tenant:
        return self.store.create_tenant(name, storage_policy=storage_policy)

    def list_api_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        return [KeyInfo.of(k) for k in self.store.list_api_keys(tenant)]

    def create_api_key(
        self, tenant: str, *, scopes: Sequence[str], expires: str | None,
        rpm_limit: int | None, tpm_limit: int | None,
    ) -> NewKey:  # fmt: skip
        from modelyard.access import create_api_key

        key, secret = create_api_key(
            self.store, tenant, scopes=scopes, expires_in=parse_duration(expires) if expires
            else None, rpm_limit=rpm_limit, tpm_limit=tpm_limit,
        )  # fmt: skip
        return NewKey(KeyInfo.of(key), secret)

    def revoke_api_key(self, key_id: str) -> tuple[KeyInfo, bool]:
        # a no-op (not audited) when revoked before, or by a revocation at the same time
        key, revoked = self.store.revoke_api_key_once(key_id)
        return KeyInfo.of(key), not revoked

    def rotate_api_key(self, key_id: str, *, grace: str, expires: str | None) -> NewKey:
        from modelyard.access import rotate_api_key

        lifetime = parse_duration(expires) if expires else None
        grace_period = parse_duration(grace, allow_zero=True)
        key, secret = rotate_api_key(self.store, key_id, grace_period, expires_in=lifetime)
        old = self.store.get_api_key(key_id)
        return NewKey(KeyInfo.of(key), secret, key_id, old.expires_at if old else None)

    def set_api_key_limits(self, key_id: str, limits: Mapping[str, int | None]) -> KeyInfo:
        """Change the limits ``limits`` names (``rpm_limit``, ``tpm_limit``; None: the
        server's default); the others stay."""
        key = self.store.get_api_key(key_id)
        if key is None:
            raise no_such_key(key_id)
        changed = self.store.set_api_key_limits(
            key_id,
            rpm_limit=limits.get("rpm_limit", key.rpm_limit),
            tpm_limit=limits.get("tpm_limit", key.tpm_limit),
        )
        return KeyInfo.of(changed)

    def list_budget_rows(self, tenant: str | None = None) -> list[dict[str, object]]:
        if tenant is not None:
            self.store.get_tenant(tenant)  # a misspelt tenant: "no tenant named", not "no budgets"
        return self.store.budget_statuses(self.store.list_budgets(tenant), datetime.now(UTC))

    def usage_rows(
        self, *, since: datetime, until: datetime | None, tenant: str | None, by: list[str]
    ) -> list[dict[str, object]]:
        return self.store.usage(since=since, until=until, tenant=tenant, by=by)

    # -- monitoring --------------------------------------------------------------------

    def update_profiles(self) -> bool:
        from modelyard.monitoring import update_profiles

        update_profiles(self.store)
        return True

    def list_profiles(
        self, *, window: str, endpoint: str | None, tenant: str | None, since: datetime | None,
        shadow: bool | None,
    ) -> list[Profile]:  # fmt: skip
        return self.store.list_profiles(window=window, endpoint=endpoint, tenant=tenant,
                                        since=since, shadow=shadow)  # fmt: skip

    def compute_drift(
        self, endpoint: str, *, version: str | None, reference: str, window: str,
        end: datetime | None, method: Sequence[str], threshold: Sequence[str],
        min_samples: int, semantic: bool,
    ) -> DriftRun:  # fmt: skip
        """``monitoring.compute_drift``, which stores the run."""
        from modelyard.monitoring import DriftConfig, compute_drift

        report = compute_drift(
            self.store, endpoint, version=version, reference=reference,
            window=parse_duration(window, field="--window"),
            config=DriftConfig.parse(method, threshold, min_samples),
            artifacts=open_artifacts(), now=end, semantic=semantic,
        )  # fmt: skip
        features = tuple(
            DriftFeature(r.feature, r.method, r.value, r.threshold, r.drifted, r.status,
                         r.n_reference, r.n_current)
            for r in report.results
        )  # fmt: skip
        return DriftRun(report.endpoint, report.version, report.reference, report.window_start,
                        report.window_end, features, stored=True,
                        run_id=report.results[0].run_id if report.results else None)  # fmt: skip

    def list_alert_states(self, state: str | None = None) -> list[AlertState]:
        return self.store.list_alert_states(state=state)


def open_plane() -> ControlPlane:
    """The server's admin API when MODELYARD_URL is set, else the store here."""
    if remote_url() is None:
        return LocalPlane(open_store())
    from modelyard.cli._remote_plane import RemotePlane

    return RemotePlane.from_env()


__all__ = ["LocalPlane", "open_plane"]
