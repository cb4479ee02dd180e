"""The control plane through a server's admin API (``MODELYARD_URL`` and a person's token).

Each operation is one or two requests; the answers are decoded into the store's
entities (``_decode``) and the errors raised as the store's error classes
(``_remote.error_of``), so the commands print what they print on the store here. What
the commands check before touching the store (a model reference, tags, a rollout
policy) is checked here the same way before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from modelyard.audit import AuditHead, ChainReport, RecordedBreak
from modelyard.cli._common import chosen_actor
from modelyard.cli._control import (
    CurrentStep,
    DriftRun,
    KeyInfo,
    ModelListing,
    NewKey,
    needs_database,
    no_such_key,
)
from modelyard.cli._decode import decode
from modelyard.cli._remote import URL_ENV, AdminClient, Remote, segment
from modelyard.delivery import wait_rollout
from modelyard.errors import ConfigError, ModelVersionNotFound, NotFound
from modelyard.registry import LineageNode
from modelyard.store import (
    AlertState,
    AuditEvent,
    Endpoint,
    GateStatus,
    ModelVersion,
    Profile,
    RegisteredModel,
    Rollout,
    StoragePolicy,
    Tenant,
    check_name,
    parse_model_ref,
)

ALERT_STATES = ("pending", "firing", "resolved", "inactive")  # what GET /alerts filters by
VERSIONS_PAGE = 1000  # the most versions GET /models/{model}/versions answers at once
PAGE = 1000  # the most models, tenants or keys GET /models, /tenants and /keys answer at once


class RemotePlane:
    """The admin API, acting as the token's person (``--actor`` does not apply)."""

    def __init__(self, client: AdminClient) -> None:
        self.client = client

    @classmethod
    def from_env(cls) -> RemotePlane:
        if chosen_actor():
            raise ConfigError(
                f"--actor does not apply with {URL_ENV}: the server acts as the person the "
                "token was made for",
                hint=f"Drop --actor, or unset {URL_ENV} to work on the database here.",
            )
        return cls(AdminClient(Remote.from_env()))

    def __enter__(self) -> RemotePlane:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.client.close()

    # -- registry ----------------------------------------------------------------------

    def list_models(self, tenant: str | None = None) -> list[ModelListing]:
        """Every model, a page of ``PAGE`` a request, each with its latest version's gates."""
        found = self._pages("/models", "name", tenant=tenant)
        return [
            ModelListing(decode(RegisteredModel, m), _gates(m.get("latest_gates"))) for m in found
        ]

    def list_model_versions(self, model: str) -> list[ModelVersion]:
        path, before = f"/models/{segment(model)}/versions", None
        found: list[Any] = []
        while True:  # the API answers the newest page first: page back to version 1
            page = self.client.get(path, limit=VERSIONS_PAGE, before=before)
            found[:0] = page
            if len(page) < VERSIONS_PAGE:
                return [decode(ModelVersion, v) for v in found]
            before = page[0]["version"]

    def get_model_version(self, model: str, version: int) -> ModelVersion:
        return decode(ModelVersion, self.client.get(_version_path(model, version)))

    def _pages(self, path: str, cursor: str, **params: Any) -> list[Any]:
        """Every item of the listing at ``path``, a page of ``PAGE`` a request: the next
        page is ``after=`` the ``cursor`` field of the last item of a page."""
        found: list[Any] = []
        after = None
        while True:
            page = self.client.get(path, limit=PAGE, after=after, **params)
            found.extend(page)
            if len(page) < PAGE:
                return found
            after = page[-1][cursor]

    def resolve_model_ref(self, ref: str) -> ModelVersion:
        """``NAME@alias``, ``NAME:N`` or ``NAME`` (latest), with the store's errors."""
        name, alias, number = parse_model_ref(ref)
        if number is None:
            model = decode(RegisteredModel, self.client.get(f"/models/{segment(name)}"))
            if alias is not None:
                if alias not in model.aliases:
                    raise ModelVersionNotFound(
                        f"model {name!r} has no alias {alias!r}",
                        hint=f"Set it with `modelyard registry alias {name} {alias} VERSION`.",
                    )
                number = model.aliases[alias]
            elif model.latest_version is None:
                raise ModelVersionNotFound(f"model {name!r} has no versions yet")
            else:
                number = model.latest_version
        return self.get_model_version(name, number)

    def lineage_chain(self, version: ModelVersion) -> LineageNode:
        found = self.client.get(_version_path(version.model, version.version) + "/lineage")
        return decode(LineageNode, found)

    def version_card(self, ref: str) -> tuple[ModelVersion, str]:
        version = self.resolve_model_ref(ref)
        found = self.client.get(_version_path(version.model, version.version) + "/card")
        return version, str(found["card"])

    def set_alias(
        self, model: str, alias: str, version: int, *, override_gates: str | None = None
    ) -> ModelVersion:
        body = {"version": version, "override_gates_reason": override_gates}
        return self._version("PUT", _alias_path(model, alias), body)

    def delete_alias(self, model: str, alias: str) -> ModelVersion:
        return self._version("DELETE", _alias_path(model, alias))

    def archive_model_version(self, model: str, version: int) -> ModelVersion:
        return self._version("POST", _version_path(model, version) + "/archive")

    def tag_version(self, ref: str, items: Sequence[str], remove: Sequence[str]) -> ModelVersion:
        from modelyard.registry import parse_tags

        pairs = parse_tags(items, remove)
        version = self.resolve_model_ref(ref)
        body = {"set": pairs, "remove": list(remove)}
        return self._version("PATCH", _version_path(version.model, version.version) + "/tags", body)

    def _version(self, method: str, path: str, body: Any = None) -> ModelVersion:
        return decode(ModelVersion, self.client.send(method, path, body=body))

    # -- endpoints and rollouts --------------------------------------------------------

    def list_endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        return [decode(Endpoint, e) for e in self.client.get("/endpoints", tenant=tenant)]

    def get_endpoint(self, name: str) -> Endpoint:
        return decode(Endpoint, self.client.get(f"/endpoints/{segment(name)}"))

    def set_traffic(self, endpoint: str, weights: Mapping[int, int]) -> Endpoint:
        body = {"weights": {str(v): w for v, w in weights.items()}}
        found = self.client.send("PUT", f"/endpoints/{segment(endpoint)}/traffic", body=body)
        return decode(Endpoint, found)

    def set_shadow(self, endpoint: str, version: int | None, fraction: float = 0.0) -> Endpoint:
        needs_database("a shadow (--shadow, --no-shadow)")
        raise AssertionError("needs_database refuses while MODELYARD_URL is set")

    def list_rollouts(
        self, *, endpoint: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Rollout]:
        found = self.client.get("/rollouts", endpoint=endpoint, active=active, limit=limit)
        return [decode(Rollout, r) for r in found]

    def latest_rollout(self, endpoint: str) -> Rollout:
        return self.rollout_status(endpoint)[0]

    def rollout_status(self, endpoint: str) -> tuple[Rollout, CurrentStep | None]:
        from modelyard.delivery import GuardResult

        found = self.client.get(_rollout_path(endpoint))
        current = found.get("current")
        if not isinstance(current, Mapping):
            return decode(Rollout, found), None
        step = CurrentStep(
            requests=int(current["requests"]),
            baseline_requests=int(current["baseline_requests"]),
            elapsed_s=float(current["elapsed_s"]),
            guards=tuple(decode(GuardResult, g) for g in current["guards"]),
        )
        return decode(Rollout, found), step

    def start_rollout(
        self, endpoint: str, to: str, *, steps: str, bake_s: float, min_requests: int,
        guards: Sequence[str], promote_alias: str | None, override_gates: str | None,
    ) -> Rollout:  # fmt: skip
        from modelyard.delivery import check_policy

        policy = check_policy(steps, bake_s, min_requests, guards)  # the local run's errors
        body = {
            "to": to, "steps": list(policy.steps), "bake_s": policy.bake_s,
            "min_requests": policy.min_requests, "guards": list(policy.guards),
            "promote_alias": promote_alias, "override_gates_reason": override_gates,
        }  # fmt: skip
        return self._rollout(_rollout_path(endpoint), body)

    def promote_rollout(self, endpoint: str) -> Rollout:
        return self._rollout(_rollout_path(endpoint) + "/promote")

    def abort_rollout(self, endpoint: str, reason: str | None = None) -> Rollout:
        return self._rollout(_rollout_path(endpoint) + "/abort", {"reason": reason})

    def pause_rollout(self, endpoint: str) -> Rollout:
        return self._rollout(_rollout_path(endpoint) + "/pause")

    def resume_rollout(self, endpoint: str) -> Rollout:
        return self._rollout(_rollout_path(endpoint) + "/resume")

    def wait_rollout(
        self, endpoint: str, *, timeout_s: float, poll_s: float,
        on_change: Callable[[Rollout], None] | None,
    ) -> tuple[Rollout, bool]:  # fmt: skip
        """``delivery.wait_rollout`` through the server: its latest rollout every ``poll_s``
        until it ends (False) or ``timeout_s`` passes (True)."""
        return wait_rollout(self, endpoint, timeout_s=timeout_s, poll_s=poll_s,
                            on_change=on_change)  # fmt: skip

    def _rollout(self, path: str, body: Any = None) -> Rollout:
        return decode(Rollout, self.client.send("POST", path, body=body))

    # -- audit -------------------------------------------------------------------------

    def list_audit_events(
        self, *, since: datetime | None = None, action: str | None = None,
        subject: str | None = None, actor: str | None = None, limit: int | None = 100,
        exclude_actions: Sequence[str] = (),
    ) -> list[AuditEvent]:  # fmt: skip
        found = self.client.get(
            "/audit/events", since=since, action=action, subject=subject, actor=actor,
            limit=limit, exclude_action=list(exclude_actions) or None,
        )  # fmt: skip
        return [decode(AuditEvent, e) for e in found]

    def open_audit_breaks(self) -> list[RecordedBreak] | None:
        """Unknown here: the admin API has no route for the recorded breaks (``audit
        verify`` recomputes the chain and reports them)."""
        return None

    def verify_audit_chain(self, head: AuditHead | None = None) -> ChainReport:
        found = self.client.get("/audit/verify", head=None if head is None else str(head))
        return decode(ChainReport, found)

    # -- tenants, keys and budgets -------------------------------------------------------

    def list_tenants(self) -> list[Tenant]:
        return [decode(Tenant, t) for t in self._pages("/tenants", "name")]

    def create_tenant(self, name: str, storage_policy: StoragePolicy) -> Tenant:
        check_name("tenant", name)  # the store's error, before anything is sent
        body = {"name": name, "storage_policy": storage_policy}
        return decode(Tenant, self.client.send("POST", "/tenants", body=body))

    def list_api_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        return [decode(KeyInfo, k) for k in self._pages("/keys", "id", tenant=tenant)]

    def create_api_key(
        self, tenant: str, *, scopes: Sequence[str], expires: str | None,
        rpm_limit: int | None, tpm_limit: int | None,
    ) -> NewKey:  # fmt: skip
        body = {"scopes": list(scopes), "expires_in": expires, "rpm_limit": rpm_limit,
                "tpm_limit": tpm_limit}  # fmt: skip
        found = self.client.send("POST", f"/tenants/{segment(tenant)}/keys", body=body)
        return NewKey(decode(KeyInfo, found), str(found["key"]))

    def revoke_api_key(self, key_id: str) -> tuple[KeyInfo, bool]:
        found = self.client.send("POST", f"/keys/{segment(key_id)}/revoke")
        return decode(KeyInfo, found), found.get("already_revoked") is True

    def rotate_api_key(self, key_id: str, *, grace: str, expires: str | None) -> NewKey:
        body = {"grace": grace, "expires_in": expires}
        found = self.client.send("POST", f"/keys/{segment(key_id)}/rotate", body=body)
        old = found.get("old_expires_at")
        old_expiry = datetime.fromisoformat(old) if isinstance(old, str) else None
        return NewKey(decode(KeyInfo, found), str(found["key"]), key_id, old_expiry)

    def set_api_key_limits(self, key_id: str, limits: Mapping[str, int | None]) -> KeyInfo:
        try:
            found = self.client.send("PATCH", f"/keys/{segment(key_id)}/limits", body=dict(limits))
        except NotFound:  # the route's own line names GET /keys; say what the CLI says
            raise no_such_key(key_id) from None
        return decode(KeyInfo, found)

    def list_budget_rows(self, tenant: str | None = None) -> list[dict[str, object]]:
        return [dict(row) for row in self.client.get("/budgets", tenant=tenant)]

    def usage_rows(
        self, *, since: datetime, until: datetime | None, tenant: str | None, by: list[str]
    ) -> list[dict[str, object]]:
        rows = self.client.get("/usage", since=since, until=until, tenant=tenant,
                               by=",".join(by))  # fmt: skip
        return [dict(row) for row in rows]

    # -- monitoring --------------------------------------------------------------------

    def update_profiles(self) -> bool:
        """Not through the server: its monitoring loop keeps them up to date, and the API
        only reads them."""
        return False

    def list_profiles(
        self, *, window: str, endpoint: str | None, tenant: str | None, since: datetime | None,
        shadow: bool | None,
    ) -> list[Profile]:  # fmt: skip
        if window not in ("hour", "day"):  # the store's check_window
            raise ConfigError(f"unknown profile window {window!r}: use hour or day",
                              field="window")  # fmt: skip
        found = self.client.get(
            "/profiles", window=window, endpoint=endpoint, tenant=tenant, since=since,
            shadow=shadow,
        )  # fmt: skip
        return [decode(Profile, p) for p in found]

    def compute_drift(
        self, endpoint: str, *, version: str | None, reference: str, window: str,
        end: datetime | None, method: Sequence[str], threshold: Sequence[str],
        min_samples: int, semantic: bool,
    ) -> DriftRun:  # fmt: skip
        """The server computes it as ``monitor drift`` does, and does not store the run."""
        if semantic:
            needs_database("--semantic (prompt embeddings)")
        if version is not None and not version.split(":")[-1].isdigit():  # compute_drift's
            raise ConfigError(
                f"invalid --version {version!r}: use the version number, e.g. 2", field="version"
            )
        found = self.client.get(
            f"/endpoints/{segment(endpoint)}/drift", version=version, reference=reference,
            window=window, end=end, method=list(method) or None,
            threshold=list(threshold) or None, min_samples=min_samples,
        )  # fmt: skip
        return decode(DriftRun, {**found, "stored": False})

    def list_alert_states(self, state: str | None = None) -> list[AlertState]:
        """Alerts in ``state``; one the API does not filter by is in no alert (as the
        store's query finds none), filtered here rather than refused."""
        query = state if state in ALERT_STATES else None
        found = [decode(AlertState, a) for a in self.client.get("/alerts", state=query)]
        return [a for a in found if state is None or a.state == state]


def _gates(found: Any) -> GateStatus | None:
    """A model's ``latest_gates``: null for a model without a version."""
    return None if found is None else decode(GateStatus, found)


def _version_path(model: str, version: int) -> str:
    return f"/models/{segment(model)}/versions/{segment(version)}"


def _alias_path(model: str, alias: str) -> str:
    return f"/models/{segment(model)}/aliases/{segment(alias)}"


def _rollout_path(endpoint: str) -> str:
    return f"/endpoints/{segment(endpoint)}/rollout"


__all__ = ["RemotePlane"]
