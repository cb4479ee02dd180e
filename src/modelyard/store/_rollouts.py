"""Rollouts: their transitions, the live samples their guards judge, and alias moves.

Every rollout transition is one transaction that checks the state it expects
first (so a tick that lost a race, or runs twice, changes nothing), optionally
checks that its caller still holds the controller lease (fencing), replaces the
traffic plan, appends a timeline entry and an audit event. The decisions (when
to step, what a breach is) live in ``modelyard.delivery``; this module only keeps
them consistent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelyard.errors import Conflict, NotFound
from modelyard.store._convert import to_endpoint
from modelyard.store._core import StoreCore
from modelyard.store._fleet import holds_lease
from modelyard.store._gates import require_gates
from modelyard.store._rows import (
    MAX_VERSION,
    active_rollout_row,
    current_plan,
    endpoint_row,
    get_locked,
    replace_routes,
    version_ref_of,
    version_row,
)
from modelyard.store._samples import RequestSample as RequestSample  # re-exported
from modelyard.store._samples import SampleWindow, read_samples, read_samples_many
from modelyard.store._samples import VersionSample as VersionSample
from modelyard.store._samples import ended as ended
from modelyard.store._samples import failed as failed
from modelyard.store._schema import (
    EndpointRow,
    InferenceRecordRow,
    ModelVersionRow,
    RegisteredModelRow,
    RolloutEventRow,
    RolloutRow,
    utcnow,
)
from modelyard.store.entities import (
    ENDED_PHASE,
    ROLLOUT_ACTIVE,
    Rollout,
    RolloutEvent,
    RolloutPolicy,
    RolloutStatus,
)


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


class RolloutStore(StoreCore):
    """Rollouts: start, read, transition, sample."""

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
        override_gates: str | None = None,
    ) -> Rollout:
        """Start moving ``endpoint`` toward version ``target`` of its model (validated steps).

        The target's gates must have passed, unless ``override_gates`` gives the reason
        to roll it out anyway (role approver; audited and kept on the version).
        """
        with self._write(f"start a rollout on {endpoint!r}") as s:
            erow = endpoint_row(s, endpoint, lock=True)  # one active rollout per endpoint
            row = start_rollout_in(
                self, s, erow, target, steps, bake_s, min_requests, guards, promote_alias, reason,
                check_gates=True, override_gates=override_gates,
            )  # fmt: skip
            return to_rollout(s, row)

    def get_rollout(self, rollout_id: str) -> Rollout:
        with self._session(f"read rollout {rollout_id!r}") as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout with id {rollout_id!r}")
            return to_rollout(s, row)

    def list_rollouts(
        self, *, endpoint: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Rollout]:
        """Rollouts, newest first, in a few queries however many there are (each replica's
        ``/metrics`` reads the active ones at every scrape)."""
        with self._session("list rollouts") as s:
            query = select(RolloutRow).order_by(RolloutRow.created_at.desc()).limit(limit)
            if endpoint is not None:
                query = query.where(RolloutRow.endpoint_id == endpoint_row(s, endpoint).id)
            if active is True:
                query = query.where(RolloutRow.status.in_(ROLLOUT_ACTIVE))
            elif active is False:
                query = query.where(RolloutRow.status.not_in(ROLLOUT_ACTIVE))
            rows = list(s.scalars(query))
            if not rows:
                return []
            ids = [r.id for r in rows]
            events: dict[str, list[RolloutEvent]] = {i: [] for i in ids}
            for e in s.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id.in_(ids))
                               .order_by(RolloutEventRow.id)):  # fmt: skip
                events[e.rollout_id].append(_event(e))
            # what to_rollout gets by primary key, in the session's identity map at once
            # (held here: the map keeps only the rows something refers to)
            vrows = list(s.scalars(select(ModelVersionRow).where(
                ModelVersionRow.id.in_({r.target_version_id for r in rows}))))  # fmt: skip
            _held = [
                *vrows,
                *s.scalars(select(EndpointRow).where(
                    EndpointRow.id.in_({r.endpoint_id for r in rows}))),
                *s.scalars(select(RegisteredModelRow).where(
                    RegisteredModelRow.id.in_({v.registered_model_id for v in vrows}))),
            ]  # fmt: skip
            return [to_rollout(s, r, tuple(events[r.id])) for r in rows]

    def latest_rollout(self, endpoint: str) -> Rollout:
        found = self.list_rollouts(endpoint=endpoint, limit=1)
        if not found:
            raise NotFound(
                f"endpoint {endpoint!r} has had no rollout",
                hint=f"Start one with `modelyard rollout start {endpoint} --to REF`.",
            )
        return found[0]

    def require_rollout_change(self, endpoint: str, action: str, what: str) -> None:
        """``PermissionDenied`` (audited) unless the actor's role allows ``action`` (e.g.
        ``rollout.promoted``) on ``endpoint``: an operator's lever checks the role before
        the rollout's state, so a refusal never depends on that state, nor tells it."""
        with self._write(f"check the role to {what}") as s:
            self._require(s, action, endpoint, what)

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
        with self._write(f"update rollout {rollout_id!r}") as s:
            if lease is not None and not holds_lease(s, *lease):
                return None
            found = s.get(RolloutRow, rollout_id)
            if found is None:
                raise NotFound(f"no rollout with id {rollout_id!r}")
            if lease is None and change.audit is not None:  # a person's pause, abort, ...
                self._require(
                    s, change.audit, rollout_id, f"change rollout {rollout_id} ({change.event})"
                )
            # the endpoint's lock, then the rollout's: a transition and an alias move
            # (or a second controller's tick) on this endpoint run one after the other
            erow = get_locked(s, EndpointRow, found.endpoint_id)
            row = get_locked(s, RolloutRow, rollout_id)
            assert erow is not None and row is not None  # rollouts are never deleted
            if (row.status, row.phase, row.step_index) != expect:
                return None
            now = utcnow()
            if change.plan is not None:
                replace_routes(s, erow, change.plan)
            if change.status is not None:
                row.status = change.status
                if change.status not in ROLLOUT_ACTIVE:
                    row.finished_at = now
            if change.phase is not None:
                row.phase = change.phase
            if row.status not in ROLLOUT_ACTIVE:
                row.phase = ENDED_PHASE  # an ended rollout is no longer preparing or baking
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
            return to_rollout(s, row)

    def rollout_samples(
        self, endpoint: str, since: datetime, version_ids: Sequence[int]
    ) -> dict[int, VersionSample]:
        """Per version id: the live (not shadow) requests answered since ``since``, read
        in chunks and only for these versions (``_samples.read_samples``)."""
        with self._session(f"read the traffic of {endpoint!r}") as s:
            endpoint_row(s, endpoint)
            return read_samples(s, endpoint, since, version_ids)

    def rollout_samples_many(
        self, windows: Sequence[tuple[str, datetime, Sequence[int]]]
    ) -> list[dict[int, VersionSample]]:
        """``rollout_samples`` of each (endpoint, since, version ids), in order, read in one
        session with a few statements however many windows there are (the controller's tick
        reads every active rollout's with it); an endpoint that does not exist has no
        records."""
        if not windows:
            return []
        with self._session(f"read the traffic of {len(windows)} rollout window(s)") as s:
            return read_samples_many(
                s, [SampleWindow(e, since, tuple(ids)) for e, since, ids in windows]
            )

    def rollout_versions(
        self, refs: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str]]:
        """``{(model, version number): (version id, status)}`` of these versions, read in one
        query (those that do not exist are left out): the controller's tick reads every
        active rollout's target and baseline versions with it."""
        wanted = {(m, int(n)) for m, n in refs}
        if not wanted:
            return {}
        models = sorted({m for m, _ in wanted})
        numbers = sorted({n for _, n in wanted if 0 < n <= MAX_VERSION})
        if not numbers:
            return {}
        with self._session(f"read the versions of {len(models)} model(s)") as s:
            rows = s.execute(
                select(
                    RegisteredModelRow.name,
                    ModelVersionRow.version,
                    ModelVersionRow.id,
                    ModelVersionRow.status,
                )
                .join(
                    RegisteredModelRow, RegisteredModelRow.id == ModelVersionRow.registered_model_id
                )
                .where(RegisteredModelRow.name.in_(models), ModelVersionRow.version.in_(numbers))
            ).all()
        found = {(m, int(n)): (int(i), str(st)) for m, n, i, st in rows}
        return {ref: found[ref] for ref in wanted if ref in found}

    def requests_by_version(self, endpoint: str, since: datetime) -> dict[str, dict[str, int]]:
        """``{version ref: {"live": n, "shadow": n, "fallback": n}}`` since ``since``."""
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
                ref = version_ref_of(s, version_id) or "(none)"
                counts = out.setdefault(ref, {"live": 0, "shadow": 0, "fallback": 0})
                kind = "shadow" if shadow else "fallback" if fallback else "live"
                counts[kind] += int(n)
            return out


def start_rollout_in(
    core: StoreCore,
    s: Session,
    erow: EndpointRow,
    target: int,
    steps: Sequence[int],
    bake_s: float,
    min_requests: int,
    guards: Sequence[str],
    promote_alias: str | None,
    reason: str | None,
    *,
    check_gates: bool = False,
    override_gates: str | None = None,
) -> RolloutRow:
    """Record a new rollout of ``erow`` in ``s``'s transaction (roles and state checked).

    With ``check_gates`` the target's gates must have passed, unless
    ``override_gates`` gives a reason (``_gates.require_gates``). An alias move that
    starts the rollout does not check them: the alias move itself was the decision.
    """
    mrow = s.get(RegisteredModelRow, erow.registered_model_id)
    assert mrow is not None  # guaranteed by the foreign key
    core._require(s, "rollout.started", erow.name, f"start a rollout on {erow.name!r}")
    active = active_rollout_row(s, erow.id)
    if active is not None:
        raise Conflict(
            f"endpoint {erow.name!r} has a rollout in progress already ({active.id}, "
            f"status {active.status})",
            hint=f"Wait for it, or end it with `modelyard rollout abort {erow.name}`.",
        )
    vrow = version_row(s, mrow, target)
    if vrow.status == "archived":
        raise Conflict(f"{mrow.name}:{target} is archived and cannot take traffic")
    baseline = current_plan(s, erow.id)
    if baseline.get(target) == 100:
        raise Conflict(
            f"endpoint {erow.name!r} already sends all its traffic to {mrow.name}:{target}"
        )
    if promote_alias is not None:
        # fail now, not at the end: the starter must be allowed to move the alias
        core._check_alias_change(
            s, "alias.set", f"{mrow.name}@{promote_alias}", promote_alias, vrow
        )
    override = None
    if check_gates:
        override = require_gates(
            core, s, mrow.name, vrow, doing=f"be rolled out on endpoint {erow.name!r}",
            action="rollout.started", subject=erow.name, override=override_gates,
            how=f"`modelyard rollout start {erow.name} --to {mrow.name}:{target}",
        )  # fmt: skip
    now = utcnow()
    row = RolloutRow(
        id=str(uuid.uuid4()),
        endpoint_id=erow.id,
        target_version_id=vrow.id,
        status="running",
        phase="preparing",
        strategy=RolloutPolicy(steps=tuple(steps)).strategy,
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
        created_by=core.actor,
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
    if override is not None:
        detail["gates_overridden"] = override["reason"]
    s.add(RolloutEventRow(rollout_id=row.id, time=now, kind="started", detail=detail))
    core._audit(s, "rollout.started", erow.name, {"rollout": row.id, **detail})
    return row


def follow_alias(
    core: StoreCore, s: Session, mrow: RegisteredModelRow, alias: str, vrow: ModelVersionRow
) -> None:
    """Move the endpoints that follow ``NAME@alias`` to the alias's new version through a
    rollout: the endpoint's rollout policy, else the defaults (``RolloutPolicy()``), so live
    traffic never moves all at once unless a policy says so (one step, ``--steps 100``).
    Only an endpoint with no live traffic to protect (its plan empty) moves at once."""
    ref = f"{mrow.name}@{alias}"
    for erow in s.scalars(select(EndpointRow).where(EndpointRow.model_ref == ref)):
        active = active_rollout_row(s, erow.id)
        if active is not None and active.target_version_id == vrow.id:
            continue  # a rollout is taking it there already (and may be what moved the alias)
        plan = {r.version: r.weight for r in to_endpoint(s, erow).routes if r.weight > 0}
        if plan == {vrow.version: 100} and active is None:
            continue
        if active is not None:
            end_for_alias(s, active, erow, f"{ref} moved to {vrow.version}")
            why = {"rollout": active.id, "reason": f"{ref} moved to {vrow.version}"}
            core._audit(s, "rollout.aborted", erow.name, why)
            plan = {int(k): int(v) for k, v in active.baseline.items()}
        if any(v != vrow.version for v in plan):
            policy = RolloutPolicy.from_json(erow.rollout_policy or {})
            start_rollout_in(
                core, s, erow, vrow.version, policy.steps, policy.bake_s, policy.min_requests,
                policy.guards, None, f"{ref} moved to {vrow.version}",
            )  # fmt: skip
            continue
        replace_routes(s, erow, step_plan(plan, vrow.version, 100))
        core._audit(
            s, "endpoint.traffic_set", erow.name,
            {"traffic": {str(vrow.version): 100},
             "previous": {str(k): v for k, v in sorted(plan.items())},
             "reason": f"{ref} moved to {vrow.version}"},
        )  # fmt: skip


def end_for_alias(s: Session, row: Any, erow: EndpointRow, reason: str) -> None:
    """Abort an active rollout (restoring its baseline plan) because its alias moved on."""
    now = utcnow()
    replace_routes(s, erow, {int(k): int(v) for k, v in row.baseline.items()})
    row.status, row.finished_at, row.updated_at, row.reason = "aborted", now, now, reason
    s.add(RolloutEventRow(rollout_id=row.id, time=now, kind="aborted",
                          step_index=row.step_index, detail={"reason": reason}))  # fmt: skip
    s.flush()


def _event(e: RolloutEventRow) -> RolloutEvent:
    return RolloutEvent(e.time, e.kind, e.step_index, dict(e.detail))


def to_rollout(
    s: Session, r: RolloutRow, events: tuple[RolloutEvent, ...] | None = None
) -> Rollout:
    """``events``, when the caller read them for many rollouts at once: not read again."""
    erow = s.get(EndpointRow, r.endpoint_id)
    vrow = s.get(ModelVersionRow, r.target_version_id)
    assert erow is not None and vrow is not None  # guaranteed by the foreign keys
    mrow = s.get(RegisteredModelRow, vrow.registered_model_id)
    assert mrow is not None
    if events is None:
        events = tuple(
            _event(e)
            for e in s.scalars(
                select(RolloutEventRow)
                .where(RolloutEventRow.rollout_id == r.id)
                .order_by(RolloutEventRow.id)
            )
        )
    status = cast(RolloutStatus, r.status)  # written only through transitions
    phase = r.phase if status in ROLLOUT_ACTIVE else ENDED_PHASE  # also one ended before 'done'
    return Rollout(
        r.id, erow.name, mrow.name, vrow.version, vrow.id, status, phase,
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
