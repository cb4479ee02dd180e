"""Running a checked pipeline: a preflight against the store, the stages in order, the audit.

``check_against_store`` looks up everything the file names before anything is written:
the endpoints, the version filter, the record status, and that the rollout's endpoint
serves the model the fine-tune registers. ``run_pipeline`` then appends
``pipeline.started``, runs each stage and appends one ``pipeline.stage`` event per stage,
and ends with ``pipeline.finished`` or ``pipeline.failed``. Each of those events names
the previous one (``previous``: its seq and hash), so the chain reads
records → dataset → model version → rollout; the new version is tagged with the
pipeline and the run. The first failure stops the run: a failed gate before the
rollout, no usable records before training.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.audit import AuditEvent
from modelyard.errors import ConfigError, DataError, ModelyardError, NotFound
from modelyard.finetune import Reporter, check_registry
from modelyard.pipeline._schema import Pipeline
from modelyard.pipeline._stages import StageOutput, collect, roll_out, train
from modelyard.store import Store


@dataclass
class StageResult:
    """One stage as it ran: done or failed, what it made, its audit event."""

    stage: str
    status: str  # done | failed
    summary: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class PipelineRun:
    """What ``run_pipeline`` did; ``error`` is the failure that stopped it (None: it ran)."""

    id: str
    name: str
    file: str
    stages: list[StageResult] = field(default_factory=list)
    started: dict[str, Any] | None = None
    ended: dict[str, Any] | None = None
    error: ModelyardError | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error is not None else "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "file": self.file,
            "status": self.status,
            "error": None if self.error is None else self.error.one_line(),
            "started_event": self.started,
            "ended_event": self.ended,
            "stages": [s.__dict__ for s in self.stages],
        }


def _link(event: AuditEvent) -> dict[str, Any]:
    return {"seq": event.seq, "hash": event.hash, "action": event.action}


def check_against_store(store: Store, pipeline: Pipeline) -> None:
    """Everything the file names exists, and the rollout's endpoint serves the fine-tune's
    model (a ``ConfigError`` naming the field otherwise); nothing is written."""
    records = pipeline.records
    try:
        ep = store.get_endpoint(records.endpoint)
    except NotFound as exc:
        raise ConfigError(
            f"pipeline {pipeline.path.name}: from_records.endpoint: no endpoint named "
            f"{records.endpoint!r}",
            hint="`modelyard endpoints list` shows the endpoints.",
            field="from_records.endpoint",
        ) from exc
    if records.version is not None:
        try:
            store.get_model_version(ep.model, records.version)
        except NotFound as exc:
            raise ConfigError(
                f"pipeline {pipeline.path.name}: from_records.version: endpoint "
                f"{ep.name!r} serves model {ep.model!r}, which has no version {records.version}",
                field="from_records.version",
            ) from exc
    try:
        store.query_records(endpoint=ep.name, status=records.status, limit=1)
    except ConfigError as exc:
        raise ConfigError(
            f"pipeline {pipeline.path.name}: from_records.status: {exc.message}",
            field="from_records.status",
        ) from exc
    try:
        check_registry(pipeline.finetune, store)
    except ConfigError as exc:
        raise ConfigError(
            f"pipeline {pipeline.path.name}: finetune {exc.message}",
            hint=exc.hint,
            field=f"finetune.{exc.context.get('field', 'registry')}",
        ) from exc
    _check_judges(store, pipeline)
    rollout = pipeline.rollout
    if rollout is None:
        return
    try:
        target = store.get_endpoint(rollout.endpoint)
    except NotFound as exc:
        raise ConfigError(
            f"pipeline {pipeline.path.name}: rollout.endpoint: no endpoint named "
            f"{rollout.endpoint!r}",
            hint="`modelyard endpoints list` shows the endpoints.",
            field="rollout.endpoint",
        ) from exc
    model = pipeline.finetune.registry.model
    if target.model != model:
        raise ConfigError(
            f"pipeline {pipeline.path.name}: rollout.endpoint: {target.name!r} serves model "
            f"{target.model!r}, but the fine-tune registers {model!r}",
            hint="Roll out on an endpoint of that model, or set finetune registry.model.",
            field="rollout.endpoint",
        )


def _check_judges(store: Store, pipeline: Pipeline) -> None:
    """The judges the fine-tune's metrics and gates and the rollout's guards name exist and
    can do what is asked of them (the held-out rows give each what its rubric needs), before
    any stage runs (not after hours of training); so is data.eval, which must parse."""
    from modelyard.data import load_rows
    from modelyard.delivery import check_judge_guards
    from modelyard.evaluation import gated_metrics, parse_gates
    from modelyard.judges import judge_source

    evaluation = pipeline.finetune.evaluation
    metrics = [*evaluation.metrics, *gated_metrics(parse_gates(evaluation.gates))]

    data = pipeline.finetune.data
    try:  # data.eval is there already (data.train is what a stage makes)
        held_out = None if data.eval is None else load_rows(data.eval, data.format)
    except (DataError, NotFound) as exc:
        raise ConfigError(
            f"pipeline {pipeline.path.name}: finetune.data.eval: {exc.message}",
            hint=exc.hint,
            field="finetune.data.eval",
        ) from exc

    def held_out_rows() -> None:
        judges = judge_source(store, metrics, where="finetune")
        if judges is not None and held_out is not None:
            judges.check_rows(held_out, data.format, where="data.eval row")

    checks: list[tuple[str, Any]] = [("finetune.evaluation", held_out_rows)]
    if pipeline.rollout is not None:
        guards = pipeline.rollout.policy.guards
        checks.append(("rollout.guards", lambda: check_judge_guards(store, guards)))
    for field_name, check in checks:
        try:
            check()
        except (ConfigError, NotFound) as exc:
            raise ConfigError(
                f"pipeline {pipeline.path.name}: {field_name}: {exc.message}",
                hint=exc.hint or "`modelyard judges list` shows the judges.",
                field=field_name,
            ) from exc


def plan_of(pipeline: Pipeline) -> dict[str, Any]:
    """The stages as they will run (``--dry-run`` and the ``pipeline.started`` event)."""
    r = pipeline.records
    plan: dict[str, Any] = {
        "from_records": {
            "endpoint": r.endpoint,
            "since": r.since,
            "until": r.until or "now",
            "version": r.version,
            "status": r.status,
            "min_score": r.min_score,
            "labels": list(r.labels),
            "format": r.data_format,
            "out": str(r.out),
            "dataset": r.dataset,
            "fail_on": list(r.fail_on),
        },
        "finetune": {
            "config": None if pipeline.finetune_source is None else str(pipeline.finetune_source),
            "model": pipeline.finetune.registry.model,
            "base_model": pipeline.finetune.base_model,
            "train": str(pipeline.finetune.data.train),
            "gates": [
                g if isinstance(g, str) else dict(g) for g in pipeline.finetune.evaluation.gates
            ],
        },
    }
    if pipeline.rollout is not None:
        ro = pipeline.rollout
        plan["rollout"] = {
            "endpoint": ro.endpoint,
            "strategy": ro.strategy,
            "steps": list(ro.policy.steps),
            "bake_s": ro.policy.bake_s,
            "min_requests": ro.policy.min_requests,
            "guards": list(ro.policy.guards),
            "promote_alias": ro.promote_alias,
            "wait": ro.wait,
            "timeout_s": ro.timeout_s,
        }
    return plan


def _stopped(error: ModelyardError, name: str, stage: str) -> ModelyardError:
    """The same error (so the same exit code), its message saying where the pipeline stopped."""
    error.message = f"pipeline {name} stopped at {stage}: {error.message}"
    error.args = (error.message,)
    return error


class _Chain:
    """The run's audit events, each stage's naming the one before it."""

    def __init__(self, store: Store, run: PipelineRun) -> None:
        self.store = store
        self.run = run
        self.last: AuditEvent | None = None

    def append(self, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = {**payload, "pipeline": self.run.name, "pipeline_run": self.run.id}
        if self.last is not None:
            body["previous"] = _link(self.last)
        self.last = self.store.record_audit_event(action, self.run.name, body)
        return _link(self.last)


def run_pipeline(
    store: Store,
    artifacts: ArtifactStore,
    pipeline: Pipeline,
    *,
    home: Path,
    ui: Reporter,
    trigger: Mapping[str, Any] | None = None,
) -> PipelineRun:
    """Run the stages in order (see the module's docstring); a failure is in ``.error``."""
    check_against_store(store, pipeline)
    run = PipelineRun(str(uuid.uuid4()), pipeline.name, str(pipeline.path))
    chain = _Chain(store, run)
    run.started = chain.append(
        "pipeline.started",
        {
            "file": str(pipeline.path),
            "sha256": pipeline.digest,
            "stages": list(pipeline.stages),
            "plan": plan_of(pipeline),
            "trigger": dict(trigger) if trigger else None,
        },
    )
    total = len(pipeline.stages)
    for index, stage in enumerate(pipeline.stages, start=1):
        ui.info(f"[{index}/{total}] {stage}")
        try:
            output = _run_stage(store, artifacts, pipeline, stage, run, home=home, ui=ui)
        except ModelyardError as exc:
            _fail(chain, run, stage, StageOutput(), exc, pipeline.stages)
            return run
        except BaseException as exc:  # Ctrl-C, a bug: the chain still records the end
            stopped = ModelyardError(f"stopped by {type(exc).__name__}: {exc}".rstrip(": "))
            _fail(chain, run, stage, StageOutput(), stopped, pipeline.stages)
            raise
        if output.failure is not None:
            _fail(chain, run, stage, output, output.failure, pipeline.stages)
            return run
        result = StageResult(stage, "done", output.summary, output.artifacts)
        result.event = chain.append(
            "pipeline.stage", {"stage": stage, "status": "done", **output.artifacts}
        )
        run.stages.append(result)
        ui.info(output.summary)
    run.ended = chain.append(
        "pipeline.finished",
        {"status": "succeeded", "stages": [s.stage for s in run.stages]},
    )
    return run


def _run_stage(
    store: Store,
    artifacts: ArtifactStore,
    pipeline: Pipeline,
    stage: str,
    run: PipelineRun,
    *,
    home: Path,
    ui: Reporter,
) -> StageOutput:
    if stage == "from_records":
        return collect(store, artifacts, pipeline.records, ui=ui)
    if stage == "finetune":
        output = train(store, artifacts, pipeline.finetune, home=home, ui=ui)
        ref = output.artifacts.get("model_version")
        if ref:  # the version says which pipeline run made it
            store.set_version_tags(ref, {"pipeline": run.name, "pipeline_run": run.id})
        return output
    assert pipeline.rollout is not None
    trained = next(s for s in run.stages if s.stage == "finetune")
    return roll_out(store, pipeline.rollout, str(trained.artifacts["model_version"]), ui=ui)


def _fail(
    chain: _Chain,
    run: PipelineRun,
    stage: str,
    output: StageOutput,
    error: ModelyardError,
    stages: Sequence[str],
) -> None:
    """Record the failed stage (with what it made: a version whose gate failed) and the end."""
    message = error.one_line()
    result = StageResult(stage, "failed", output.summary, output.artifacts, error=message)
    if output.artifacts:
        result.event = chain.append(
            "pipeline.stage",
            {"stage": stage, "status": "failed", "error": message, **output.artifacts},
        )
    run.stages.append(result)
    ran = {r.stage for r in run.stages}
    left = [s for s in stages if s not in ran]
    run.ended = chain.append(
        "pipeline.failed",
        {"stage": stage, "error": message, "not_run": left, "code": error.code},
    )
    run.error = _stopped(error, run.name, stage)
