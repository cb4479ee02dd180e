"""Base models, datasets and training runs: what a version was made from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from modelyard.errors import Conflict, NotFound
from modelyard.store._convert import to_base_model, to_dataset, to_run
from modelyard.store._core import StoreCore
from modelyard.store._rows import get_locked, lock_name, require_row
from modelyard.store._schema import BaseModelRow, DatasetRow, RunRow, utcnow
from modelyard.store.entities import BaseModel, DatasetVersion, Run


class TrackingStore(StoreCore):
    """Base models, datasets and runs (each change audited)."""

    # -- base models -----------------------------------------------------------------------

    def register_base_model(
        self, name: str, source: str, weight_hashes: Mapping[str, str]
    ) -> BaseModel:
        """Record a base model; registering the same name and weights again is a no-op."""
        with self._write(f"register base model {name!r}") as s:
            lock_name(s, "base_model", name)  # a concurrent twin then finds this row
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                self._require(s, "base_model.registered", name, f"register base model {name!r}")
                row = BaseModelRow(name=name, source=source, weight_hashes=dict(weight_hashes))
                s.add(row)
                s.flush()
                self._audit(
                    s,
                    "base_model.registered",
                    name,
                    {"source": source, "weight_hashes": dict(weight_hashes)},
                )
            elif dict(row.weight_hashes) != dict(weight_hashes):
                raise Conflict(
                    f"base model {name!r} is registered already with different weights",
                    hint="Register the new weights under another name.",
                )
            return to_base_model(row)

    def get_base_model(self, name: str) -> BaseModel:
        with self._session(f"read base model {name!r}") as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                raise NotFound(f"no base model named {name!r} in the store")
            return to_base_model(row)

    def list_base_models(self) -> list[BaseModel]:
        """Registered base models, by name."""
        with self._session("list base models") as s:
            rows = s.scalars(select(BaseModelRow).order_by(BaseModelRow.name))
            return [to_base_model(r) for r in rows]

    # -- datasets --------------------------------------------------------------------------

    def register_dataset(
        self,
        name: str,
        *,
        digest: str,
        artifact_digest: str,
        format: str,
        n_rows: int,
        report: Mapping[str, Any],
    ) -> DatasetVersion:
        """A new content-hashed dataset version; the same content returns the existing one."""
        with self._write(f"register dataset {name!r}") as s:
            lock_name(s, "dataset", name)  # serializes version numbering of the name
            existing = s.scalar(
                select(DatasetRow).where(DatasetRow.name == name, DatasetRow.digest == digest)
            )
            if existing is not None:
                return to_dataset(existing)
            self._require(s, "dataset.registered", name, f"register dataset {name!r}")
            latest = s.scalar(select(func.max(DatasetRow.version)).where(DatasetRow.name == name))
            row = DatasetRow(
                name=name,
                version=(latest or 0) + 1,
                digest=digest,
                artifact_digest=artifact_digest,
                format=format,
                n_rows=n_rows,
                report=dict(report),
            )
            s.add(row)
            s.flush()
            self._audit(
                s,
                "dataset.registered",
                f"{name}:{row.version}",
                {"digest": digest, "artifact_digest": artifact_digest, "format": format,
                 "n_rows": n_rows},
            )  # fmt: skip
            return to_dataset(row)

    def list_datasets(self, name: str | None = None) -> list[DatasetVersion]:
        with self._session("list datasets") as s:
            query = select(DatasetRow).order_by(DatasetRow.name, DatasetRow.version)
            if name is not None:
                query = query.where(DatasetRow.name == name)
            return [to_dataset(r) for r in s.scalars(query)]

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        *,
        base_model: str,
        dataset_id: int | None,
        config: Mapping[str, Any],
        seed: int,
        environment: Mapping[str, Any],
    ) -> Run:
        with self._write(f"create run {run_id}") as s:
            base = require_row(
                s, BaseModelRow, BaseModelRow.name == base_model, f"base {base_model}"
            )
            self._require(s, "run.started", run_id, f"start run {run_id}")
            row = RunRow(
                id=run_id,
                base_model_id=base.id,
                dataset_id=dataset_id,
                status="running",
                config=dict(config),
                seed=seed,
                metrics={},
                environment=dict(environment),
                created_by=self.actor,
            )
            s.add(row)
            s.flush()
            self._audit(
                s,
                "run.started",
                run_id,
                {"base_model": base_model, "dataset_id": dataset_id, "seed": seed,
                 "config": dict(config)},
            )  # fmt: skip
            return to_run(row)

    def finish_run(self, run_id: str, *, status: str, metrics: Mapping[str, Any]) -> Run:
        with self._write(f"finish run {run_id}") as s:
            row = get_locked(s, RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            self._require(s, "run.finished", run_id, f"finish run {run_id}")
            row.status = status
            row.metrics = dict(metrics)
            row.finished_at = utcnow()
            self._audit(s, "run.finished", run_id, {"status": status, "metrics": dict(metrics)})
            return to_run(row)

    def list_runs(self, status: str | None = None) -> list[Run]:
        """Runs, oldest first; only those with ``status`` when given (e.g. ``running``)."""
        with self._session("list runs") as s:
            query = select(RunRow).order_by(RunRow.started_at, RunRow.id)
            if status is not None:
                query = query.where(RunRow.status == status)
            return [to_run(r) for r in s.scalars(query)]

    def get_run(self, run_id: str) -> Run:
        with self._session(f"read run {run_id}") as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            return to_run(row)
