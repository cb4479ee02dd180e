"""Store methods for progressive delivery: shadows, rollouts, server heartbeats, leases.

``Store`` inherits them (``DeployStore``). Every rollout transition is one
transaction that checks the state it expects first (so a tick that lost a race,
or runs twice, changes nothing), optionally checks that its caller still holds
the controller lease (fencing), replaces the traffic plan, appends a timeline
entry and an audit event. The decisions (when to step, what a breach is) live
in ``modelyard.delivery``; this module only keeps them consistent.
"""

from __future__ import annotations

import contextlib
import copy
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from modelyard.audit import AuditEvent, Role
from modelyard.errors import ConfigError, Conflict, NotFound
from modelyard.store._schema import (
    EndpointRow,
    FeedbackRow,
    InferenceRecordRow,
    LeaseRow,
    ModelVersionRow,
    RegisteredModelRow,
    RolloutEventRow,
    RolloutRow,
    ServerRow,
    TrafficRouteRow,
    utcnow,
)
from modelyard.store.entities import (
    ROLLOUT_ACTIVE,
    Endpoint,
    Rollout,
    RolloutEvent,
    RolloutStatus,
    Server,
)


@dataclass(frozen=True)
class VersionSample:
    """The live requests one version answered on an endpoint in a window (no shadows)."""

    version: int
    version_id: int
    statuses: tuple[str, ...]
    latencies_ms: tuple[float, ...]  # of the requests that ended ok
    ttfts_ms: tuple[float, ...]
    feedback: tuple[float, ...]
    fallbacks: int  # requests routed to this version that another version had to answer

    @property
    def requests(self) -> int:
        return ended(self.statuses)

    @property
    def errors(self) -> int:
        return failed(self.statuses)


def ended(statuses: Sequence[str]) -> int:
    """Requests that ended (ok, error or timeout); cancelled ones say nothing of a version."""
    return sum(1 for st in statuses if st != "cancelled")


def failed(statuses: Sequence[str]) -> int:
    """Requests that ended in an error or a timeout."""
    return sum(1 for st in statuses if st in ("error", "timeout"))


@dataclass(frozen=True)
class Transition:
    """What a rollout transition changes (``None``: left as is)."""

    event: str
    detail: Mapping[str, Any]
    status: str | None = None
    phase: str | None = None
    step_index: int | None = None
    start_step: bool = False  # step_started_at := now
    plan: Mapping[int, int] | None = None  # {version number: weight}
    audit: str | None = None  # audit action, e.g. rollout.step
    reason: str | None = None
    outcome: Mapping[str, Any] | None = None


class DeployStore:
    """Mixed into ``Store``; the attributes below are ``Store``'s."""

    actor: str

    # provided by Store
    def _session(self, what: str) -> contextlib.AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, what: str) -> contextlib.AbstractContextManager[Session]:
        raise NotImplementedError

    def _audit(
        self, s: Session, action: str, subject: str, payload: Mapping[str, Any] | None = None
    ) -> AuditEvent:
        raise NotImplementedError

    def _require(
        self, s: Session, action: str, subject: str, what: str, needed: Role | None = None
    ) -> Role:
        raise NotImplementedError

    def _check_alias_change(
        self, s: Session, action: str, subject: str, alias: str, target: ModelVersionRow | None
    ) -> None:
        raise NotImplementedError

    # -- acting for someone ----------------------------------------------------------------

    def as_actor(self, actor: str) -> Any:
        """This store acting as ``actor`` (same connections; do not close the copy).

        The controller promotes an alias as the actor who started the rollout, so
        the registry's role checks apply to that person, not to the controller.
        """
        clone = copy.copy(self)
        clone.actor = actor
        return clone

    # -- endpoints: shadow and rollout policy ----------------------------------------------

    def set_shadow(self, endpoint: str, version: int | None, fraction: float = 0.0) -> Endpoint:
        """Mirror ``fraction`` of the endpoint's requests to ``version`` (None: stop)."""
        from modelyard.store._store import _endpoint, _endpoint_row, _version_row

        if version is not None and not (0.0 < fraction <= 1.0):
            raise ConfigError(
                f"shadow fraction {fraction} is out of range: use a number above 0, up to 1",
                field="shadow_fraction",
            )
        with self._write(f"set the shadow of {endpoint!r}") as s:
            erow = _endpoint_row(s, endpoint)
            self._require(s, "endpoint.shadow_set", endpoint, f"change the shadow of {endpoint!r}")
            if version is None:
                erow.shadow_version_id, erow.shadow_fraction = None, 0.0
            else:
                mrow = s.get(RegisteredModelRow, erow.registered_model_id)
                assert mrow is not None  # guaranteed by the foreign key
                vrow = _version_row(s, mrow, version)
                if vrow.status == "archived":
                    raise Conflict(f"{mrow.name}:{version} is archived and cannot take traffic")
                erow.shadow_version_id, erow.shadow_fraction = vrow.id, fraction
            erow.updated_at = utcnow()
            s.flush()
            self._audit(
                s, "endpoint.shadow_set", endpoint,
                {"version": version, "fraction": fraction if version is not None else 0.0},
            )  # fmt: skip
            return _endpoint(s, erow)

    def set_rollout_policy(self, endpoint: str, policy: Mapping[str, Any] | None) -> Endpoint:
        """How a move of the followed alias reaches ``endpoint``: None at once, else a rollout
        with ``policy`` (keys: steps, bake_s, min_requests, guards; validated by the caller)."""
        from modelyard.store._store import _endpoint, _endpoint_row

        with self._write(f"set the rollout policy of {endpoint!r}") as s:
            erow = _endpoint_row(s, endpoint)
            self._require(s, "endpoint.policy_set", endpoint, f"change {endpoint!r}")
            if policy is not None and "@" not in erow.model_ref:
                raise ConfigError(
                    f"endpoint {endpoint!r} follows {erow.model_ref}, not an alias: a rollout "
                    "policy applies when the alias it follows moves",
                    hint="Create the endpoint with --model NAME@alias, or use `modelyard "
                    "rollout start` for a one-off rollout.",
                )
            erow.rollout_policy = dict(policy) if policy is not None else None
            erow.updated_at = utcnow()
            s.flush()
            self._audit(s, "endpoint.policy_set", endpoint, {"policy": erow.rollout_policy})
            return _endpoint(s, erow)

    # -- rollouts --------------------------------------------------------------------------

    def create_rollout(
        self,
        endpoint: str,
        *,
        target: int,
        steps: Sequence[int],
        bake_s: float,
        min_requests: int,
        guards: Sequence[str],
        promote_alias: str | None = None,
        reason: str | None = None,
    ) -> Rollout:
        """Start moving ``endpoint`` toward version ``target`` of its model (validated steps)."""
        from modelyard.store._store import _endpoint_row

        with self._write(f"start a rollout on {endpoint!r}") as s:
            erow = _endpoint_row(s, endpoint)
            row = self._create_rollout_in(
                s, erow, target, steps, bake_s, min_requests, guards, promote_alias, reason
            )
            return _rollout(s, row)

    def _create_rollout_in(
        self,
        s: Session,
        erow: EndpointRow,
        target: int,
        steps: Sequence[int],
        bake_s: float,
        min_requests: int,
        guards: Sequence[str],
        promote_alias: str | None,
        reason: str | None,
    ) -> RolloutRow:
        from modelyard.store._store import _version_row

        mrow = s.get(RegisteredModelRow, erow.registered_model_id)
        assert mrow is not None  # guaranteed by the foreign key
        self._require(s, "rollout.started", erow.name, f"start a rollout on {erow.name!r}")
        active = _active_row(s, erow.id)
        if active is not None:
            raise Conflict(
                f"endpoint {erow.name!r} has a rollout in progress already ({active.id}, "
                f"status {active.status})",
                hint=f"Wait for it, or end it with `modelyard rollout abort {erow.name}`.",
            )
        vrow = _version_row(s, mrow, target)
        if vrow.status == "archived":
            raise Conflict(f"{mrow.name}:{target} is archived and cannot take traffic")
        baseline = _plan(s, erow.id)
        if baseline.get(target) == 100:
            raise Conflict(
                f"endpoint {erow.name!r} already sends all its traffic to {mrow.name}:{target}"
            )
        if promote_alias is not None:
            # fail now, not at the end: the starter must be allowed to move the alias
            self._check_alias_change(
                s, "alias.set", f"{mrow.name}@{promote_alias}", promote_alias, vrow
            )
        now = utcnow()
        row = RolloutRow(
            id=str(uuid.uuid4()),
            endpoint_id=erow.id,
            target_version_id=vrow.id,
            status="running",
            phase="preparing",
            strategy="blue_green" if list(steps) == [100] else "canary",
            baseline={str(k): v for k, v in baseline.items()},
            steps=list(steps),
            step_index=0,
            step_started_at=None,
            bake_s=float(bake_s),
            min_requests=int(min_requests),
            guards=list(guards),
            promote_alias=promote_alias,
            reason=reason,
            outcome={},
            created_by=self.actor,
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        detail = {
            "target": target, "baseline": {str(k): v for k, v in baseline.items()},
            "steps": list(steps), "bake_s": bake_s, "min_requests": min_requests,
            "guards": list(guards), "promote_alias": promote_alias, "reason": reason,
        }  # fmt: skip
        s.add(RolloutEventRow(rollout_id=row.id, time=now, kind="started", detail=detail))
        self._audit(s, "rollout.started", erow.name, {"rollout": row.id, **detail})
        return row

    def get_rollout(self, rollout_id: str) -> Rollout:
        with self._session(f"read rollout {rollout_id!r}") as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout with id {rollout_id!r}")
            return _rollout(s, row)

    def list_rollouts(
        self, *, endpoint: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Rollout]:
        """Rollouts, newest first."""
        from modelyard.store._store import _endpoint_row

        with self._session("list rollouts") as s:
            query = select(RolloutRow).order_by(RolloutRow.created_at.desc()).limit(limit)
            if endpoint is not None:
                query = query.where(RolloutRow.endpoint_id == _endpoint_row(s, endpoint).id)
            if active is True:
                query = query.where(RolloutRow.status.in_(ROLLOUT_ACTIVE))
            elif active is False:
                query = query.where(RolloutRow.status.not_in(ROLLOUT_ACTIVE))
            return [_rollout(s, r) for r in s.scalars(query)]

    def latest_rollout(self, endpoint: str) -> Rollout:
        found = self.list_rollouts(endpoint=endpoint, limit=1)
        if not found:
            raise NotFound(
                f"endpoint {endpoint!r} has had no rollout",
                hint=f"Start one with `modelyard rollout start {endpoint} --to REF`.",
            )
        return found[0]

    def transition_rollout(
        self,
        rollout_id: str,
        expect: tuple[str, str, int],
        change: Transition,
        *,
        lease: tuple[str, str] | None = None,
    ) -> Rollout | None:
        """Apply ``change`` if the rollout is still at ``expect`` (status, phase, step index)
        and ``lease`` (name, holder) is still held; None (and nothing changed) otherwise."""
        from modelyard.store._store import _replace_routes

        with self._write(f"update rollout {rollout_id!r}") as s:
            if lease is not None and not _holds(s, *lease):
                return None
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout with id {rollout_id!r}")
            if (row.status, row.phase, row.step_index) != expect:
                return None
            erow = s.get(EndpointRow, row.endpoint_id)
            assert erow is not None  # guaranteed by the foreign key
            now = utcnow()
            if change.plan is not None:
                _replace_routes(s, erow, change.plan)
            if change.status is not None:
                row.status = change.status
                if change.status not in ROLLOUT_ACTIVE:
                    row.finished_at = now
            if change.phase is not None:
                row.phase = change.phase
            if change.step_index is not None:
                row.step_index = change.step_index
            if change.start_step:
                row.step_started_at = now
            if change.reason is not None:
                row.reason = change.reason
            if change.outcome is not None:
                row.outcome = dict(change.outcome)
            row.updated_at = now
            detail = dict(change.detail)
            if change.plan is not None:
                detail["plan"] = {str(k): v for k, v in sorted(change.plan.items())}
            s.add(
                RolloutEventRow(
                    rollout_id=row.id,
                    time=now,
                    kind=change.event,
                    step_index=row.step_index,
                    detail=detail,
                )
            )
            s.flush()
            if change.audit is not None:
                self._audit(s, change.audit, erow.name, {"rollout": row.id, **detail})
            return _rollout(s, row)

    def rollout_samples(
        self, endpoint: str, since: datetime, version_ids: Sequence[int]
    ) -> dict[int, VersionSample]:
        """Per version id: the live (not shadow) requests answered since ``since``."""
        from modelyard.store._store import _endpoint_row

        with self._session(f"read the traffic of {endpoint!r}") as s:
            _endpoint_row(s, endpoint)
            ids = list(version_ids)
            rows = s.execute(
                select(
                    InferenceRecordRow.version_id,
                    InferenceRecordRow.status,
                    InferenceRecordRow.latency_ms,
                    InferenceRecordRow.ttft_ms,
                    InferenceRecordRow.fallback_from_id,
                    FeedbackRow.score,
                )
                .outerjoin(FeedbackRow, FeedbackRow.record_id == InferenceRecordRow.id)
                .where(
                    InferenceRecordRow.endpoint_name == endpoint,
                    InferenceRecordRow.created_at >= since,
                    InferenceRecordRow.shadow.is_(False),
                )
            ).all()
            query = select(ModelVersionRow.id, ModelVersionRow.version)
            numbers: dict[int, int] = dict(
                s.execute(query.where(ModelVersionRow.id.in_(ids))).all()
            )
        acc: dict[int, dict[str, Any]] = {
            vid: {"st": [], "lat": [], "ttft": [], "fb": [], "fallbacks": 0} for vid in ids
        }
        for version_id, status, latency, ttft, fallback_from, score in rows:
            if fallback_from in acc:
                acc[fallback_from]["fallbacks"] += 1
                continue  # answered by a baseline version on the target's behalf
            if version_id not in acc:
                continue
            a = acc[version_id]
            a["st"].append(status)
            if status == "ok":
                a["lat"].append(float(latency))
                if ttft is not None:
                    a["ttft"].append(float(ttft))
            if score is not None:
                a["fb"].append(float(score))
        return {vid: _sample(numbers.get(vid, 0), vid, a) for vid, a in acc.items()}

    def requests_by_version(self, endpoint: str, since: datetime) -> dict[str, dict[str, int]]:
        """``{version ref: {"live": n, "shadow": n, "fallback": n}}`` since ``since``."""
        from modelyard.store._store import _version_ref

        with self._session(f"count the requests of {endpoint!r}") as s:
            rows = s.execute(
                select(
                    InferenceRecordRow.version_id,
                    InferenceRecordRow.shadow,
                    InferenceRecordRow.fallback_from_id.is_not(None),
                    func.count(),
                )
                .where(
                    InferenceRecordRow.endpoint_name == endpoint,
                    InferenceRecordRow.created_at >= since,
                )
                .group_by(
                    InferenceRecordRow.version_id,
                    InferenceRecordRow.shadow,
                    InferenceRecordRow.fallback_from_id.is_not(None),
                )
            ).all()
            out: dict[str, dict[str, int]] = {}
            for version_id, shadow, fallback, n in rows:
                ref = _version_ref(s, version_id) or "(none)"
                counts = out.setdefault(ref, {"live": 0, "shadow": 0, "fallback": 0})
                kind = "shadow" if shadow else "fallback" if fallback else "live"
                counts[kind] += int(n)
            return out

    # -- servers ---------------------------------------------------------------------------

    def heartbeat_server(
        self,
        server_id: str,
        *,
        address: str,
        hostname: str,
        pid: int,
        engine: str,
        modelyard_version: str,
        started_at: datetime,
        ready: bool,
        draining: bool,
        state: Mapping[str, Any],
    ) -> None:
        """Record (or refresh) a replica's heartbeat; data plane, so not audited."""
        with self._write(f"record the heartbeat of server {server_id!r}") as s:
            row = s.get(ServerRow, server_id)
            if row is None:
                row = ServerRow(id=server_id, started_at=started_at)
                s.add(row)
            row.address, row.hostname, row.pid, row.engine = address, hostname, pid, engine
            row.modelyard_version = modelyard_version
            row.heartbeat_at = utcnow()
            row.ready, row.draining, row.state = ready, draining, dict(state)

    def remove_server(self, server_id: str) -> None:
        with self._write(f"remove server {server_id!r}") as s:
            row = s.get(ServerRow, server_id)
            if row is not None:
                s.delete(row)

    def list_servers(
        self, *, stale_after_s: float = 15.0, alive: bool | None = None
    ) -> list[Server]:
        """Servers by last heartbeat, newest first; alive: a heartbeat within ``stale_after_s``."""
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        with self._session("list servers") as s:
            rows = list(s.scalars(select(ServerRow).order_by(ServerRow.heartbeat_at.desc())))
        servers = [_server(r, r.heartbeat_at >= cutoff) for r in rows]
        return [x for x in servers if alive is None or x.alive == alive]

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; False while another holds it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        with contextlib.suppress(Conflict), self._write(f"take the lease {name!r}") as s:
            row = s.get(LeaseRow, name)
            if row is None:
                s.add(LeaseRow(name=name, holder=holder, acquired_at=now, expires_at=expires))
                s.flush()
                return True
            taken = s.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == name,
                    (LeaseRow.holder == holder) | (LeaseRow.expires_at < now),
                )
                .values(
                    holder=holder,
                    expires_at=expires,
                    acquired_at=row.acquired_at if row.holder == holder else now,
                )
            )
            return bool(getattr(taken, "rowcount", 0))
        return False  # another holder inserted the row first

    def release_lease(self, name: str, holder: str) -> None:
        with self._write(f"release the lease {name!r}") as s:
            row = s.get(LeaseRow, name)
            if row is not None and row.holder == holder:
                s.delete(row)

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        """(holder, expires_at) of a lease that has not expired, else None."""
        with self._session(f"read the lease {name!r}") as s:
            row = s.get(LeaseRow, name)
            if row is None or row.expires_at < utcnow():
                return None
            return row.holder, row.expires_at


# -- helpers ---------------------------------------------------------------------------------


def _holds(s: Session, name: str, holder: str) -> bool:
    row = s.get(LeaseRow, name)
    return row is not None and row.holder == holder and row.expires_at >= utcnow()


def _active_row(s: Session, endpoint_id: int) -> RolloutRow | None:
    return s.scalar(
        select(RolloutRow).where(
            RolloutRow.endpoint_id == endpoint_id, RolloutRow.status.in_(ROLLOUT_ACTIVE)
        )
    )


def _plan(s: Session, endpoint_id: int) -> dict[int, int]:
    """The endpoint's current plan as {version number: weight} (weights above 0)."""
    query = (
        select(ModelVersionRow.version, TrafficRouteRow.weight)
        .join(ModelVersionRow, ModelVersionRow.id == TrafficRouteRow.version_id)
        .where(TrafficRouteRow.endpoint_id == endpoint_id, TrafficRouteRow.weight > 0)
    )
    return dict(s.execute(query).all())


def _sample(number: int, vid: int, a: Mapping[str, Any]) -> VersionSample:
    return VersionSample(
        number, vid, tuple(a["st"]), tuple(a["lat"]), tuple(a["ttft"]), tuple(a["fb"]),
        int(a["fallbacks"]),
    )  # fmt: skip


def _server(r: ServerRow, alive: bool) -> Server:
    state = r.state
    return Server(
        r.id, r.address, r.hostname, r.pid, r.engine, r.modelyard_version, r.started_at,
        r.heartbeat_at, r.ready, r.draining, tuple(state.get("loaded", ())),
        dict(state.get("failures", {})), dict(state.get("prepared", {})), alive=alive,
    )  # fmt: skip


def _rollout(s: Session, r: RolloutRow) -> Rollout:
    erow = s.get(EndpointRow, r.endpoint_id)
    vrow = s.get(ModelVersionRow, r.target_version_id)
    assert erow is not None and vrow is not None  # guaranteed by the foreign keys
    mrow = s.get(RegisteredModelRow, vrow.registered_model_id)
    assert mrow is not None
    events = tuple(
        RolloutEvent(e.time, e.kind, e.step_index, dict(e.detail))
        for e in s.scalars(
            select(RolloutEventRow)
            .where(RolloutEventRow.rollout_id == r.id)
            .order_by(RolloutEventRow.id)
        )
    )
    status = cast(RolloutStatus, r.status)  # written only through transitions
    return Rollout(
        r.id, erow.name, mrow.name, vrow.version, vrow.id, status, r.phase,
        r.strategy, {int(k): int(v) for k, v in r.baseline.items()}, tuple(r.steps),
        r.step_index, r.step_started_at, r.bake_s, r.min_requests, tuple(r.guards),
        r.promote_alias, r.reason, dict(r.outcome), r.created_by, r.created_at, r.updated_at,
        r.finished_at, events,
    )  # fmt: skip


def step_plan(baseline: Mapping[int, int], target: int, percent: int) -> dict[int, int]:
    """The plan at a step: ``percent`` to ``target``, the rest shared by the baseline versions
    in proportion to their weights (largest remainder, so the weights sum to 100)."""
    others = {v: w for v, w in baseline.items() if v != target and w > 0}
    rest = 100 - percent
    plan = {target: percent} if percent > 0 else {}
    total = sum(others.values())
    if rest <= 0 or total == 0:
        if rest > 0:  # no baseline to share with: the target takes everything
            plan[target] = 100
        return plan
    shares = {v: rest * w / total for v, w in others.items()}
    floors = {v: math.floor(x) for v, x in shares.items()}
    left = rest - sum(floors.values())
    for v in sorted(shares, key=lambda v: (floors[v] - shares[v], v))[:left]:
        floors[v] += 1
    plan.update({v: w for v, w in floors.items() if w > 0})
    return plan
