"""Endpoints: their traffic plan, shadow and rollout policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from modelyard.errors import ConfigError, Conflict
from modelyard.store._convert import to_endpoint
from modelyard.store._core import check_name
from modelyard.store._registry import RegistryStore
from modelyard.store._rows import (
    active_rollout_row,
    endpoint_row,
    lock_name,
    model_row,
    replace_routes,
    tenant_names,
    tenant_row,
    version_row,
)
from modelyard.store._schema import (
    EndpointRow,
    ModelVersionRow,
    RegisteredModelRow,
    TenantRow,
    TrafficRouteRow,
    utcnow,
)
from modelyard.store.entities import Endpoint, RolloutPolicy, TrafficRoute


class EndpointStore(RegistryStore):
    """Endpoints and their traffic (each change audited)."""

    # -- endpoints and traffic -------------------------------------------------------------

    def create_endpoint(
        self,
        name: str,
        *,
        model_ref: str,
        tenant: str | None,
        shared: bool = False,
    ) -> Endpoint:
        """An endpoint sending 100% of its traffic to the version ``model_ref`` resolves to."""
        check_name("endpoint", name)
        version = self.resolve_model_ref(model_ref)
        with self._write(f"create endpoint {name!r}") as s:
            lock_name(s, "endpoint", name)
            if s.scalar(select(EndpointRow.id).where(EndpointRow.name == name)) is not None:
                raise Conflict(
                    f"endpoint {name!r} exists already",
                    hint=f"See what it serves with `modelyard endpoints show {name}`; move its "
                    f"traffic with `modelyard endpoints set-traffic {name} VERSION=PERCENT` or "
                    f"`modelyard rollout start {name} --to REF`, or pick another name.",
                )
            tenant_id = tenant_row(s, tenant).id if tenant else None
            self._require(s, "endpoint.created", name, f"create endpoint {name!r}")
            vrow = s.get(ModelVersionRow, version.id)
            if vrow is None or vrow.status == "archived":
                raise Conflict(f"{version.ref} is archived and cannot take traffic")
            mrow = model_row(s, version.model)
            if tenant_id is not None and shared:
                raise ConfigError(
                    f"endpoint {name!r} cannot be tenant {tenant!r}'s and shared with every "
                    "tenant at once",
                    hint="Give a tenant for one tenant's endpoint, or shared for every tenant's.",
                    field="shared",
                )
            if mrow.tenant_id is not None and mrow.tenant_id != tenant_id:
                owner = tenant_names(s)[mrow.tenant_id]
                where = f"an endpoint of tenant {tenant!r}" if tenant else "a shared endpoint"
                raise ConfigError(
                    f"{model_ref} belongs to tenant {owner!r} and cannot be served on {where}",
                    hint=f"Create the endpoint for tenant {owner}, or serve a model that is not "
                    "tenant-scoped.",
                    field="tenant",
                )
            row = EndpointRow(
                name=name,
                tenant_id=tenant_id,
                registered_model_id=mrow.id,
                model_ref=model_ref,
                shared=shared,
            )
            s.add(row)
            s.flush()
            s.add(TrafficRouteRow(endpoint_id=row.id, version_id=version.id, weight=100))
            s.flush()
            self._audit(
                s,
                "endpoint.created",
                name,
                {"model_ref": model_ref, "tenant": tenant, "shared": shared,
                 "traffic": {str(version.version): 100}},
            )  # fmt: skip
            return to_endpoint(s, row)

    def get_endpoint(self, name: str) -> Endpoint:
        with self._session(f"read endpoint {name!r}") as s:
            return to_endpoint(s, endpoint_row(s, name))

    def list_endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        """Every endpoint (of ``tenant``), by name, in a few queries however many there are
        (each replica's ``/metrics`` reads them at every scrape)."""
        with self._session("list endpoints") as s:
            e = EndpointRow
            where = [] if tenant is None else [e.tenant_id == tenant_row(s, tenant).id]
            rows = list(s.scalars(select(e).where(*where).order_by(e.name)))
            ids = select(e.id).where(*where)  # read the same way: no list of ids sent
            # what to_endpoint gets by primary key, in the session's identity map at once
            # (held here: the map keeps only the rows something refers to)
            _held = [
                *s.scalars(select(TenantRow).where(
                    TenantRow.id.in_(select(e.tenant_id).where(*where)))),
                *s.scalars(select(RegisteredModelRow).where(
                    RegisteredModelRow.id.in_(select(e.registered_model_id).where(*where)))),
                *s.scalars(select(ModelVersionRow).where(
                    ModelVersionRow.id.in_(select(e.shadow_version_id).where(*where)))),
            ]  # fmt: skip
            routes: dict[int, list[TrafficRoute]] = {r.id: [] for r in rows}
            for eid, vid, number, weight in s.execute(
                select(TrafficRouteRow.endpoint_id, TrafficRouteRow.version_id,
                       ModelVersionRow.version, TrafficRouteRow.weight)
                .join(ModelVersionRow, ModelVersionRow.id == TrafficRouteRow.version_id)
                .where(TrafficRouteRow.endpoint_id.in_(ids))
                .order_by(TrafficRouteRow.endpoint_id, ModelVersionRow.version)
            ):  # fmt: skip
                if eid in routes:  # an endpoint created since its row was read: not listed
                    routes[eid].append(TrafficRoute(vid, number, weight))
            return [to_endpoint(s, r, tuple(routes[r.id])) for r in rows]

    def set_traffic(self, endpoint: str, weights: Mapping[int, int]) -> Endpoint:
        """Replace the endpoint's traffic plan with ``{version number: weight}`` (sum 100)."""
        if sum(weights.values()) != 100 or any(w < 0 for w in weights.values()):
            raise ConfigError(
                f"traffic weights must be non-negative and sum to 100, got {dict(weights)}"
            )
        with self._write(f"set traffic of {endpoint!r}") as s:
            erow = endpoint_row(s, endpoint, lock=True)
            mrow = s.get(RegisteredModelRow, erow.registered_model_id)
            assert mrow is not None  # guaranteed by the foreign key
            self._require(
                s, "endpoint.traffic_set", endpoint, f"change the traffic of {endpoint!r}"
            )
            active = active_rollout_row(s, erow.id)
            if active is not None:
                raise Conflict(
                    f"endpoint {endpoint!r} has a rollout in progress ({active.id}); its "
                    "controller owns the traffic plan until it ends",
                    hint=f"Abort it first: `modelyard rollout abort {endpoint}`.",
                )
            previous = {str(r.version): r.weight for r in to_endpoint(s, erow).routes}
            replace_routes(s, erow, weights)
            self._audit(
                s,
                "endpoint.traffic_set",
                endpoint,
                {"traffic": {str(v): w for v, w in sorted(weights.items())},
                 "previous": previous},
            )  # fmt: skip
            return to_endpoint(s, erow)

    # -- endpoints: shadow and rollout policy ----------------------------------------------

    def set_shadow(self, endpoint: str, version: int | None, fraction: float = 0.0) -> Endpoint:
        """Mirror ``fraction`` of the endpoint's requests to ``version`` (None: stop)."""
        if version is not None and not (0.0 < fraction <= 1.0):
            raise ConfigError(
                f"shadow fraction {fraction} is out of range: use a number above 0, up to 1",
                field="shadow_fraction",
            )
        with self._write(f"set the shadow of {endpoint!r}") as s:
            erow = endpoint_row(s, endpoint, lock=True)
            self._require(s, "endpoint.shadow_set", endpoint, f"change the shadow of {endpoint!r}")
            if version is None:
                erow.shadow_version_id, erow.shadow_fraction = None, 0.0
            else:
                mrow = s.get(RegisteredModelRow, erow.registered_model_id)
                assert mrow is not None  # guaranteed by the foreign key
                vrow = version_row(s, mrow, version)
                if vrow.status == "archived":
                    raise Conflict(f"{mrow.name}:{version} is archived and cannot take traffic")
                erow.shadow_version_id, erow.shadow_fraction = vrow.id, fraction
            erow.updated_at = utcnow()
            s.flush()
            self._audit(
                s, "endpoint.shadow_set", endpoint,
                {"version": version, "fraction": fraction if version is not None else 0.0},
            )  # fmt: skip
            return to_endpoint(s, erow)

    def set_rollout_policy(
        self, endpoint: str, policy: RolloutPolicy | Mapping[str, Any] | None
    ) -> Endpoint:
        """How a move of the followed alias reaches ``endpoint``: None at once, else a rollout
        with ``policy`` (or its JSON form; values validated by ``delivery.check_policy``)."""
        if policy is not None and not isinstance(policy, RolloutPolicy):
            try:
                policy = RolloutPolicy.from_json(policy)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"invalid rollout policy: {exc}", field="policy") from None
        with self._write(f"set the rollout policy of {endpoint!r}") as s:
            erow = endpoint_row(s, endpoint, lock=True)
            self._require(s, "endpoint.policy_set", endpoint, f"change {endpoint!r}")
            if policy is not None and "@" not in erow.model_ref:
                raise ConfigError(
                    f"endpoint {endpoint!r} follows {erow.model_ref}, not an alias: a rollout "
                    "policy applies when the alias it follows moves",
                    hint="Create the endpoint with --model NAME@alias, or use `modelyard "
                    "rollout start` for a one-off rollout.",
                )
            erow.rollout_policy = policy.to_json() if policy is not None else None
            erow.updated_at = utcnow()
            s.flush()
            self._audit(s, "endpoint.policy_set", endpoint, {"policy": erow.rollout_policy})
            return to_endpoint(s, erow)
