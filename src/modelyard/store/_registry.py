"""The registry: registered models, versions, aliases, archive, tags and gate verdicts.

Moving an alias also moves the endpoints that follow it (``_rollouts.follow_alias``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelyard.audit import normalize_payload
from modelyard.errors import ConfigError, Conflict, ModelVersionNotFound, NotFound
from modelyard.store._convert import to_registered_model, to_version
from modelyard.store._core import StoreCore, check_name, parse_model_ref
from modelyard.store._gates import require_gates
from modelyard.store._rollouts import follow_alias
from modelyard.store._rows import (
    active_rollout_row,
    check_page_limit,
    for_update,
    lock_name,
    model_row,
    require_row,
    tenant_row,
    version_row,
)
from modelyard.store._schema import (
    BaseModelRow,
    EndpointRow,
    ModelAliasRow,
    ModelVersionRow,
    RegisteredModelRow,
    RunRow,
    TenantRow,
    TrafficRouteRow,
    utcnow,
)
from modelyard.store.entities import ModelVersion, RegisteredModel, VersionKind


class RegistryStore(StoreCore):
    """Registered models and their versions (each change audited)."""

    # -- registered models and versions -----------------------------------------------------

    def create_registered_model(
        self, name: str, *, tenant: str | None = None, description: str = ""
    ) -> RegisteredModel:
        check_name("model", name)
        with self._write(f"create registered model {name!r}") as s:
            lock_name(s, "registered_model", name)
            if s.scalar(select(RegisteredModelRow.id).where(RegisteredModelRow.name == name)):
                raise Conflict(f"registered model {name!r} exists already")
            tenant_id = tenant_row(s, tenant).id if tenant else None
            self._require(s, "registered_model.created", name, f"create model {name!r}")
            row = RegisteredModelRow(name=name, tenant_id=tenant_id, description=description)
            s.add(row)
            s.flush()
            self._audit(
                s,
                "registered_model.created",
                name,
                {"tenant": tenant, "description": description},
            )
            return to_registered_model(s, row)

    def delete_registered_model(self, name: str, *, reason: str) -> None:
        """Delete a registered model that has no version and no endpoint (crash leftovers)."""
        with self._write(f"delete registered model {name!r}") as s:
            mrow = model_row(s, name, lock=True)  # no version can be registered meanwhile
            self._require(s, "registered_model.deleted", name, f"delete model {name!r}")
            versions = s.scalar(
                select(func.count()).where(ModelVersionRow.registered_model_id == mrow.id)
            )
            endpoints = s.scalar(
                select(func.count()).where(EndpointRow.registered_model_id == mrow.id)
            )
            if versions or endpoints:
                raise Conflict(
                    f"registered model {name!r} has {versions} version(s) and {endpoints} "
                    "endpoint(s) and cannot be deleted",
                    hint="Only a model with no versions and no endpoints can be deleted.",
                )
            s.delete(mrow)
            s.flush()
            self._audit(s, "registered_model.deleted", name, {"reason": reason})

    def get_registered_model(self, name: str) -> RegisteredModel:
        with self._session(f"read registered model {name!r}") as s:
            return to_registered_model(s, model_row(s, name))

    def list_registered_models(
        self, tenant: str | None = None, *, limit: int | None = None, after: str | None = None
    ) -> list[RegisteredModel]:
        """The models by name (``tenant``'s only, when given); with ``limit``, only the first
        ``limit`` named after ``after`` (the next page is ``after=`` a page's last name).
        Three queries for them all, however many there are."""
        with self._session("list registered models") as s:
            return [m for m, _ in models_of(s, tenant, limit, after, latest=False)]

    def list_models_with_latest(
        self, tenant: str | None = None, *, limit: int | None = None, after: str | None = None
    ) -> list[tuple[RegisteredModel, ModelVersion | None]]:
        """``list_registered_models`` with each model's latest version (None: no version
        yet), as ``registry list`` shows them: three queries for them all."""
        with self._session("list registered models with their latest versions") as s:
            return models_of(s, tenant, limit, after, latest=True)

    def create_model_version(
        self,
        model: str,
        *,
        kind: VersionKind,
        artifact_digest: str,
        base_model: str,
        run_id: str | None,
        lineage: Mapping[str, Any],
        metrics: Mapping[str, Any],
    ) -> ModelVersion:
        """Register an immutable, auto-numbered version of ``model``."""
        if kind not in ("adapter", "full", "upstream"):
            raise ConfigError(f"invalid version kind {kind!r}: use 'adapter', 'full' or 'upstream'")
        with self._write(f"register a version of {model!r}") as s:
            # The model row's lock serializes version numbering: max(version)+1 is then
            # read after the previous registration committed (no duplicate numbers).
            mrow = model_row(s, model, lock=True)
            base = require_row(
                s, BaseModelRow, BaseModelRow.name == base_model, f"base {base_model}"
            )
            self._require(s, "model_version.registered", model, f"register versions of {model!r}")
            trainer = None
            if run_id is not None:
                run = s.get(RunRow, run_id)
                if run is None:
                    raise NotFound(f"no run {run_id!r}", hint="Register the version with its run.")
                trainer = run.created_by
            latest = s.scalar(
                select(func.max(ModelVersionRow.version)).where(
                    ModelVersionRow.registered_model_id == mrow.id
                )
            )
            row = ModelVersionRow(
                registered_model_id=mrow.id,
                version=(latest or 0) + 1,
                kind=kind,
                status="ready",
                artifact_digest=artifact_digest,
                base_model_id=base.id,
                run_id=run_id,
                lineage=dict(lineage),
                metrics=dict(metrics),
                created_by=trainer or self.actor,
            )
            s.add(row)
            s.flush()
            self._audit(
                s,
                "model_version.registered",
                f"{model}:{row.version}",
                {"kind": kind, "artifact_digest": artifact_digest, "base_model": base_model,
                 "run_id": run_id, "created_by": row.created_by, "lineage": dict(lineage),
                 "metrics": dict(metrics)},
            )  # fmt: skip
            return to_version(s, row)

    def get_model_version(self, model: str, version: int) -> ModelVersion:
        with self._session(f"read {model}:{version}") as s:
            return to_version(s, version_row(s, model_row(s, model), version))

    def get_model_version_by_id(self, version_id: int) -> ModelVersion:
        with self._session(f"read model version #{version_id}") as s:
            row = s.get(ModelVersionRow, version_id)
            if row is None:
                raise ModelVersionNotFound(f"no model version with id {version_id}")
            return to_version(s, row)

    def get_model_versions_by_ids(self, version_ids: Iterable[int]) -> dict[int, ModelVersion]:
        """The versions with these ids, by id, read in one session (ids not found are left
        out): a server's router reloads every endpoint's versions with it."""
        wanted = sorted(set(version_ids))
        if not wanted:
            return {}
        with self._session(f"read {len(wanted)} model versions") as s:
            rows = list(s.scalars(select(ModelVersionRow).where(ModelVersionRow.id.in_(wanted))))
            return {v.id: v for v in versions_of(s, rows)}

    def list_model_versions(
        self, model: str, *, limit: int | None = None, before: int | None = None
    ) -> list[ModelVersion]:
        """``model``'s versions in ascending order; with ``limit``, only the newest ``limit``
        of them, and with ``before``, only those numbered below it (the next page back is
        ``before=`` the first version of a page)."""
        check_page_limit(limit, "version")
        with self._session(f"list versions of {model!r}") as s:
            mrow = model_row(s, model)
            query = select(ModelVersionRow).where(ModelVersionRow.registered_model_id == mrow.id)
            if before is not None:
                query = query.where(ModelVersionRow.version < before)
            if limit is None:
                rows = list(s.scalars(query.order_by(ModelVersionRow.version)))
            else:
                newest = query.order_by(ModelVersionRow.version.desc()).limit(limit)
                rows = list(s.scalars(newest))[::-1]
            return versions_of(s, rows)

    def resolve_model_ref(self, ref: str) -> ModelVersion:
        """``NAME@alias`` → the aliased version; ``NAME:N`` → version N; ``NAME`` → latest."""
        name, alias, number = parse_model_ref(ref)
        with self._session(f"resolve {ref!r}") as s:
            mrow = model_row(s, name)
            if alias is not None:
                arow = s.get(ModelAliasRow, (mrow.id, alias))
                if arow is None:
                    raise ModelVersionNotFound(
                        f"model {name!r} has no alias {alias!r}",
                        hint=f"Set it with `modelyard registry alias {name} {alias} VERSION`.",
                    )
                row = s.get(ModelVersionRow, arow.version_id)
                assert row is not None  # guaranteed by the foreign key
                return to_version(s, row)
            if number is None:
                number = s.scalar(
                    select(func.max(ModelVersionRow.version)).where(
                        ModelVersionRow.registered_model_id == mrow.id
                    )
                )
                if number is None:
                    raise ModelVersionNotFound(f"model {name!r} has no versions yet")
            return to_version(s, version_row(s, mrow, number))

    def set_alias(
        self, model: str, alias: str, version: int, *, override_gates: str | None = None
    ) -> ModelVersion:
        """Point ``alias`` at ``version`` (creating or moving it).

        A protected alias (``champion`` by default) needs role approver; with
        segregation of duties on, not the actor who trained the version. It takes
        only a version whose gates passed, unless ``override_gates`` gives the reason
        to take it anyway (role approver; audited and kept on the version).
        """
        check_name("alias", alias)
        subject = f"{model}@{alias}"
        with self._write(f"set alias {subject}") as s:
            mrow = model_row(s, model, lock=True)  # the lock for the model's aliases
            vrow = version_row(s, mrow, version)
            self._check_alias_change(s, "alias.set", subject, alias, vrow)
            if vrow.status == "archived":
                raise Conflict(
                    f"{model}:{version} is archived and cannot take an alias",
                    hint="Point the alias at a version that is not archived.",
                )
            arow = s.get(ModelAliasRow, (mrow.id, alias))
            if arow is not None and arow.version_id == vrow.id:
                return to_version(s, vrow)  # already there: no change, no event
            lock_followers(s, subject)  # before the chain lock: see _rows.for_update
            override = None
            if alias in self.policy.protected_aliases:
                override = require_gates(
                    self, s, model, vrow, doing=f"take the protected alias {subject}",
                    action="alias.set", subject=subject, override=override_gates,
                    how=f"`modelyard registry alias {model} {alias} {version}",
                )  # fmt: skip
            previous = None
            if arow is None:
                s.add(ModelAliasRow(registered_model_id=mrow.id, alias=alias, version_id=vrow.id))
            else:
                old = s.get(ModelVersionRow, arow.version_id)
                previous = old.version if old else None
                arow.version_id = vrow.id
                arow.updated_at = utcnow()
            s.flush()
            detail: dict[str, Any] = {"version": version, "previous": previous}
            if override is not None:
                detail["gates_overridden"] = override["reason"]
            self._audit(s, "alias.set", subject, detail)
            follow_alias(self, s, mrow, alias, vrow)
            return to_version(s, vrow)

    def delete_alias(self, model: str, alias: str) -> ModelVersion:
        """Remove ``alias``; returns the version it pointed to (protected aliases need approver)."""
        subject = f"{model}@{alias}"
        with self._write(f"delete alias {subject}") as s:
            # the role first: a viewer learns it may not, not whether the alias exists
            self._check_alias_change(s, "alias.deleted", subject, alias, None)
            mrow = model_row(s, model, lock=True)
            arow = s.get(ModelAliasRow, (mrow.id, alias))
            if arow is None:
                held = sorted(s.scalars(select(ModelAliasRow.alias).where(
                    ModelAliasRow.registered_model_id == mrow.id
                )))  # fmt: skip
                raise ModelVersionNotFound(
                    f"model {model!r} has no alias {alias!r}",
                    hint=f"Its aliases: {', '.join(held)}." if held else "It has no aliases.",
                )
            vrow = s.get(ModelVersionRow, arow.version_id)
            assert vrow is not None  # guaranteed by the foreign key
            s.delete(arow)
            s.flush()
            self._audit(s, "alias.deleted", subject, {"version": vrow.version})
            return to_version(s, vrow)

    def archive_model_version(self, model: str, version: int) -> ModelVersion:
        """Mark a version archived: it can no longer take an alias or traffic."""
        ref = f"{model}:{version}"
        with self._write(f"archive {ref}") as s:
            # the model's lock: no alias can move onto the version while it is archived
            vrow = version_row(s, model_row(s, model, lock=True), version, lock=True)
            self._require(s, "model_version.archived", ref, f"archive {ref}")
            if vrow.status == "archived":
                return to_version(s, vrow)
            aliases = sorted(
                s.scalars(select(ModelAliasRow.alias).where(ModelAliasRow.version_id == vrow.id))
            )
            if aliases:
                raise Conflict(
                    f"{ref} still holds the alias(es) {', '.join(aliases)} and cannot be archived",
                    hint="Move or delete those aliases first.",
                )
            serving = sorted(
                s.scalars(
                    select(EndpointRow.name)
                    .join(TrafficRouteRow, TrafficRouteRow.endpoint_id == EndpointRow.id)
                    .where(TrafficRouteRow.version_id == vrow.id, TrafficRouteRow.weight > 0)
                )
            )
            if serving:
                raise Conflict(
                    f"{ref} still takes traffic on endpoint(s) {', '.join(serving)} and cannot "
                    "be archived",
                    hint="Move its traffic with `modelyard endpoints set-traffic` first.",
                )
            for erow in s.scalars(select(EndpointRow).where(
                EndpointRow.registered_model_id == vrow.registered_model_id
            )):  # fmt: skip
                rollout = active_rollout_row(s, erow.id)
                if rollout is not None and (
                    rollout.target_version_id == vrow.id or str(version) in rollout.baseline
                ):
                    role = (
                        "the target"
                        if rollout.target_version_id == vrow.id
                        else ("in the plan a rollback restores")
                    )
                    raise Conflict(
                        f"{ref} is {role} of the rollout {rollout.id} on {erow.name!r} and "
                        "cannot be archived while it runs (a breach could not roll back)",
                        hint=f"Let it finish, or abort it: `modelyard rollout abort {erow.name}`.",
                    )
            previous = vrow.status
            vrow.status = "archived"
            self._audit(s, "model_version.archived", ref, {"previous_status": previous})
            return to_version(s, vrow)

    def set_version_tags(
        self, ref: str, tags: Mapping[str, str], *, remove: Sequence[str] = ()
    ) -> ModelVersion:
        """Add or change ``tags`` and drop the keys in ``remove`` on the version ``ref``."""
        for key in [*tags, *remove]:
            check_name("tag", key)
        target = self.resolve_model_ref(ref)
        subject = target.ref
        with self._write(f"tag {subject}") as s:
            # locked: a concurrent tagger waits, then merges into what this one wrote
            vrow = version_row(s, model_row(s, target.model), target.version, lock=True)
            self._require(s, "model_version.tagged", subject, f"tag {subject}")
            updated = {k: v for k, v in dict(vrow.tags or {}).items() if k not in remove}
            updated.update({k: str(v) for k, v in tags.items()})
            vrow.tags = updated
            self._audit(
                s, "model_version.tagged", subject, {"set": dict(tags), "removed": list(remove)}
            )
            return to_version(s, vrow)

    def record_gate_verdicts(
        self,
        model: str,
        version: int,
        verdicts: Sequence[Mapping[str, Any]],
        passed: bool,
        *,
        source: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Store gate verdicts in the version's ``metrics["gates"]`` and audit them; they
        replace any earlier ones. ``source`` says where they came from when it was not
        the run that trained the version (e.g. ``modelyard evaluate`` and its data)."""
        ref = f"{model}:{version}"
        gates: dict[str, Any] = {"passed": bool(passed), "verdicts": list(verdicts)}
        if source is not None:
            gates["source"] = dict(source)
        gates = normalize_payload(gates)
        with self._write(f"record gate verdicts of {ref}") as s:
            vrow = version_row(s, model_row(s, model), version, lock=True)
            self._require(s, "gate.verdict", ref, f"record gate verdicts of {ref}")
            vrow.metrics = {**vrow.metrics, "gates": gates}
            self._audit(s, "gate.verdict", ref, gates)
            return to_version(s, vrow)


def versions_of(s: Session, rows: Sequence[ModelVersionRow]) -> list[ModelVersion]:
    """``rows`` as entities, in their order, with a few queries for them all: their aliases
    in one a 500 versions, their models and bases once each (held here, so the session's
    identity map answers ``to_version`` rather than a query a version)."""
    if not rows:
        return []
    ids = [r.id for r in rows]
    aliases: dict[int, list[str]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):  # IN lists of bounded length
        chunk = ids[start : start + 500]
        query = select(ModelAliasRow.version_id, ModelAliasRow.alias).where(
            ModelAliasRow.version_id.in_(chunk)
        )
        for version_id, alias in s.execute(query):
            aliases[version_id].append(alias)
    model_ids = {r.registered_model_id for r in rows}
    base_ids = {r.base_model_id for r in rows}
    held = [
        *s.scalars(select(RegisteredModelRow).where(RegisteredModelRow.id.in_(model_ids))),
        *s.scalars(select(BaseModelRow).where(BaseModelRow.id.in_(base_ids))),
    ]
    versions = [to_version(s, r, aliases[r.id]) for r in rows]
    del held
    return versions


def models_of(
    s: Session, tenant: str | None, limit: int | None, after: str | None, *, latest: bool
) -> list[tuple[RegisteredModel, ModelVersion | None]]:
    """A page of models by name with their tenants (one query), their aliases (one) and
    their latest version numbers, or with ``latest`` their latest versions and bases
    (one): the later queries select the page's models again by the same conditions, with
    its last name as upper bound, so no list of ids grows with the page."""
    check_page_limit(limit, "model")
    m = RegisteredModelRow
    where = [] if tenant is None else [m.tenant_id == tenant_row(s, tenant).id]
    if after is not None:
        where.append(m.name > after)
    query = select(m, TenantRow.name).outerjoin(TenantRow, TenantRow.id == m.tenant_id)
    page = s.execute(query.where(*where).order_by(m.name).limit(limit)).all()
    if not page:
        return []
    if limit is not None:
        where.append(m.name <= page[-1][0].name)
    ids = select(m.id).where(*where).scalar_subquery()
    aliases: dict[int, dict[str, int]] = {row.id: {} for row, _ in page}
    for model_id, alias, number in s.execute(
        select(ModelAliasRow.registered_model_id, ModelAliasRow.alias, ModelVersionRow.version)
        .join(ModelVersionRow, ModelVersionRow.id == ModelAliasRow.version_id)
        .where(ModelAliasRow.registered_model_id.in_(ids))
        .order_by(ModelAliasRow.alias)
    ):
        aliases.setdefault(model_id, {})[alias] = number
    v = ModelVersionRow
    newest = (
        select(v.registered_model_id.label("model_id"), func.max(v.version).label("version"))
        .where(v.registered_model_id.in_(ids))
        .group_by(v.registered_model_id)
        .subquery()
    )
    numbers: dict[int, int] = {}
    rows: dict[int, ModelVersionRow] = {}
    if latest:  # the rows and their bases, so to_version finds them in the session
        joined = (
            select(v, BaseModelRow)
            .join(newest, (v.registered_model_id == newest.c.model_id)
                  & (v.version == newest.c.version))
            .join(BaseModelRow, BaseModelRow.id == v.base_model_id)
        )  # fmt: skip
        held = s.execute(joined).all()
        rows = {vrow.registered_model_id: vrow for vrow, _ in held}
        numbers = {i: vrow.version for i, vrow in rows.items()}
    else:
        numbers = dict(s.execute(select(newest.c.model_id, newest.c.version)).all())
    out: list[tuple[RegisteredModel, ModelVersion | None]] = []
    for row, tenant_name in page:
        named = aliases.get(row.id, {})
        model = RegisteredModel(row.id, row.name, tenant_name, row.description, named,
                                numbers.get(row.id), row.created_at)  # fmt: skip
        vrow = rows.get(row.id)
        version = None
        if vrow is not None:
            version = to_version(s, vrow, [a for a, n in named.items() if n == vrow.version])
        out.append((model, version))
    return out


def lock_followers(s: Session, ref: str) -> None:
    """Lock the endpoints that follow ``ref`` (``NAME@alias``), before the audit chain's
    lock: moving the alias then changes their plans (``follow_alias``)."""
    s.scalars(for_update(select(EndpointRow.id).where(EndpointRow.model_ref == ref))).all()
