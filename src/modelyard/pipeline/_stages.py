"""The three stages of a pipeline, each the library call its own command makes.

``collect`` is ``modelyard data from-records`` (``curate.harvest`` + ``curate.save``),
``train`` is ``modelyard finetune`` (``finetune.prepare`` + ``finetune.run_finetune``,
gates included) and ``roll_out`` is ``modelyard rollout start`` (+ ``rollout wait``).
Each returns what it produced as plain JSON values: what the stage's audit event holds
and ``--json`` prints. A stage that cannot go on raises the same error its command
raises (so the exit code is the same).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.curate import harvest, save
from modelyard.delivery import ended_badly, start_rollout, wait_rollout
from modelyard.errors import (
    ConfigError,
    DataChecksFailed,
    DataError,
    ModelyardError,
    NotFound,
    RolloutTimedOut,
)
from modelyard.finetune import FinetuneConfig, FinetuneOutcome, Reporter, prepare, resolve_base
from modelyard.finetune import run_finetune as _run_finetune
from modelyard.pipeline._schema import RecordsPlan, RolloutPlan
from modelyard.store import Rollout, Store

MAX_IDS_IN_EVENT = 1000
"""Record ids an audit event lists; the dataset's lineage always has them all."""


@dataclass
class StageOutput:
    """What a stage made (JSON values) and one line for people."""

    artifacts: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    failure: ModelyardError | None = None  # a gate failed: the version exists, the stage failed


@contextmanager
def _as_bad_input(field: str) -> Iterator[None]:
    """A missing endpoint, version or file named in the pipeline is bad input (exit 2)."""
    try:
        yield
    except (DataError, NotFound) as exc:
        raise ConfigError(exc.message, hint=exc.hint, field=field) from exc


def collect(
    store: Store, artifacts: ArtifactStore, plan: RecordsPlan, *, ui: Reporter
) -> StageOutput:
    """The endpoint's records in the window → validated rows → ``plan.out`` and a dataset."""
    filters = plan.filters()
    with ui.bar("turning records into rows", 0, "records") as update, _as_bad_input("from_records"):
        found = harvest(
            store,
            artifacts,
            endpoint=plan.endpoint,
            filters=filters,
            data_format=plan.data_format,
            exclude=plan.exclude,
            progress=lambda done, total: update(done, total, ""),
        )
    tripped = found.validation.tripped(list(plan.fail_on))
    if tripped:
        counts = found.validation.findings()
        listed = ", ".join(f"{rule} ({counts[rule]})" for rule in tripped)
        raise DataChecksFailed(
            f"the rows failed validation, nothing written: {listed}",
            hint="See them with `modelyard data from-records` and the same filters, or "
            "change from_records.fail_on.",
        )
    dataset = save(store, artifacts, found, plan.out, plan.dataset)
    left_out = {
        **{f"filter {k}": n for k, n in found.selection.filtered.items() if n},
        **{k: n for k, n in found.selection.skipped.items() if n},
    }
    ids = list(found.selection.record_ids)
    out = {
        "endpoint": found.endpoint,
        "window": {"since": filters.since.isoformat(), "until": filters.until.isoformat()},
        "format": found.data_format,
        "records_read": found.selection.read,
        "rows": len(found.rows),
        "left_out": left_out,
        "record_ids": ids[:MAX_IDS_IN_EVENT],
        "record_ids_complete": len(ids) <= MAX_IDS_IN_EVENT,
        "out": str(plan.out),
        "dataset": {
            "ref": f"{dataset.name}:{dataset.version}",
            "name": dataset.name,
            "version": dataset.version,
            "digest": dataset.digest,
        },
    }
    if left_out:
        why = ", ".join(f"{reason} {n}" for reason, n in left_out.items())
        ui.info(f"left out of {found.selection.read} records: {why}")
    summary = (
        f"{len(found.rows)} {found.data_format} rows from {found.selection.read} records of "
        f"{found.endpoint} -> dataset {dataset.name}:{dataset.version} ({plan.out.name})"
    )
    return StageOutput(out, summary)


def _outcome(outcome: FinetuneOutcome) -> dict[str, Any]:
    derived = outcome.dataset.get("derived_from") or {}
    return {
        "model_version": outcome.ref,
        "model": outcome.model,
        "version": outcome.version,
        "run_id": outcome.run_id,
        "passed": outcome.passed,
        "metrics": dict(outcome.metrics),
        "champion_metrics": outcome.champion_metrics,
        "gates": [
            {"gate": v["gate"], "passed": v["passed"], "reason": v.get("reason")}
            for v in outcome.verdicts
        ],
        "dataset": {k: outcome.dataset[k] for k in ("name", "version", "digest")},
        "derived_from": {k: derived[k] for k in ("dataset", "records", "endpoint") if k in derived},
    }


def train(
    store: Store,
    artifacts: ArtifactStore,
    config: FinetuneConfig,
    *,
    home: Path,
    ui: Reporter,
) -> StageOutput:
    """Train on the collected rows, evaluate (the champion too, when a gate names it),
    register and gate. A failed gate leaves the version registered with its verdicts."""
    prepared = prepare(resolve_base(config, store))
    outcome = _run_finetune(prepared, store=store, artifacts=artifacts, home=home, ui=ui)
    assert outcome is not None  # this process is rank 0
    out = _outcome(outcome)
    verdicts = f"{sum(v['passed'] for v in out['gates'])} of {len(out['gates'])} gates passed"
    return StageOutput(
        out, f"registered {outcome.ref} ({verdicts})", failure=outcome.gate_failure()
    )


def _rollout_json(r: Rollout) -> dict[str, Any]:
    return {
        "id": r.id,
        "endpoint": r.endpoint,
        "target": f"{r.model}:{r.target}",
        "strategy": r.strategy,
        "steps": list(r.steps),
        "bake_s": r.bake_s,
        "min_requests": r.min_requests,
        "guards": list(r.guards),
        "promote_alias": r.promote_alias,
        "status": r.status,
    }


def roll_out(store: Store, plan: RolloutPlan, ref: str, *, ui: Reporter) -> StageOutput:
    """Start the rollout of ``ref`` (its gates passed); with ``wait``, until it ends."""
    policy = plan.policy
    r = start_rollout(
        store,
        plan.endpoint,
        ref,
        steps=policy.steps,
        bake_s=policy.bake_s,
        min_requests=policy.min_requests,
        guards=policy.guards,
        promote_alias=plan.promote_alias,
    )
    out = _rollout_json(r)
    steps = ",".join(str(s) for s in r.steps)
    summary = (
        f"rollout {r.id} of {ref} on {r.endpoint}: steps {steps}, guards {'; '.join(r.guards)}"
    )
    if not plan.wait:
        return StageOutput(out, summary + " (the controller moves it)")
    ui.info(f"waiting for the rollout on {plan.endpoint} (at most {plan.timeout_s:g} s)")
    seen: list[str] = []

    def moved(now: Rollout) -> None:
        line = f"rollout {now.status}, step {now.step_index + 1} of {len(now.steps)}"
        if now.active and line not in seen:
            seen.append(line)
            ui.info(line)

    final, timed_out = wait_rollout(store, plan.endpoint, timeout_s=plan.timeout_s, on_change=moved)
    out = {**out, "status": final.status, "reason": final.reason, "timed_out": timed_out}
    if timed_out:
        failure: ModelyardError = RolloutTimedOut(
            f"the rollout on {plan.endpoint} was still {final.status} after {plan.timeout_s:g} s",
            hint=f"It goes on: follow it with `modelyard rollout status {plan.endpoint}`.",
            endpoint=plan.endpoint,
        )
        return StageOutput(out, summary, failure=failure)
    ended = ended_badly(final)
    if ended is not None:
        return StageOutput(out, summary, failure=ended)
    return StageOutput(out, summary + " - succeeded")
