"""``modelyard pipeline run``: from-records → finetune (gated) → rollout, from one YAML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli._common import (
    RichReporter,
    console,
    open_artifacts,
    open_store,
    print_json,
    settings,
)
from modelyard.cli._home import check_home, store_exists

if TYPE_CHECKING:
    from modelyard.pipeline import Pipeline, PipelineRun

app = typer.Typer(
    help="Closing the loop: production records → dataset → gated fine-tune → rollout.",
    no_args_is_help=True,
)


def _plan_table(pipeline: Pipeline, plan: dict[str, Any]) -> Table:
    table = Table("stage", "what it does", title=f"pipeline {pipeline.name}")
    r = plan["from_records"]
    filters = [f"{k} {v}" for k in ("version", "status", "min_score") if (v := r[k]) is not None]
    if r["labels"]:
        filters.append("labels " + ", ".join(r["labels"]))
    table.add_row(
        "from_records",
        f"records of {r['endpoint']} since {r['since']} (until {r['until']})"
        + (f", {'; '.join(filters)}" if filters else "")
        + f" -> {r['format']} rows in {r['out']}, dataset {r['dataset']}",
    )
    f = plan["finetune"]
    gates = "; ".join(str(g) for g in f["gates"]) or "none"
    table.add_row(
        "finetune",
        f"train {f['model']} on those rows (base {f['base_model']}), gates: {gates}",
    )
    if "rollout" in plan:
        ro = plan["rollout"]
        steps = ",".join(str(s) for s in ro["steps"])
        alias = f", then {ro['promote_alias']} moves" if ro["promote_alias"] else ""
        wait = "; wait for the end" if ro["wait"] else ""
        table.add_row(
            "rollout",
            f"{ro['strategy']} on {ro['endpoint']}: steps {steps}, bake {ro['bake_s']:g} s, "
            f"guards {'; '.join(ro['guards']) or 'none'}{alias}{wait}",
        )
    return table


def _result_table(run: PipelineRun) -> Table:
    table = Table("stage", "status", "result", "audit event", title=f"pipeline {run.name}")
    for s in run.stages:
        event = f"#{s.event['seq']} {s.event['hash'][:12]}" if s.event else ""
        table.add_row(s.stage, s.status, escape(s.summary or s.error or ""), event)
    return table


@app.command("run")
def run(
    path: Path = typer.Argument(..., help="The pipeline YAML (docs/closing-the-loop.md)."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the file (and the store, when there is one), print the "
        "plan, and stop: nothing is written.",
    ),
    alert: str | None = typer.Option(
        None,
        "--alert",
        help="The alert that started this run (a monitoring rule's pipeline "
        "action passes it), recorded in the pipeline.started event.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan or the result as JSON."),
) -> None:
    """Run a pipeline: an endpoint's records and feedback become a dataset, a fine-tune on it
    is gated (e.g. against the champion) and registered, and a rollout with guards starts.

    Everything the file names is checked before anything runs. The first failure stops
    it: no usable records before training, a failed gate before the rollout. Each stage
    writes an audit event naming the previous one (`modelyard audit log --action
    'pipeline.*'`). Exits 0 when every stage ran, 2 for a mistake in the file, 1 when a
    gate failed or a rollout was rolled back, 3 when waiting for the rollout timed out.
    """
    from modelyard.pipeline import check_against_store, load_pipeline, plan_of, run_pipeline

    pipeline = load_pipeline(path)
    s = settings()
    if dry_run:
        checked = store_exists(s)
        if checked:
            with open_store(s) as store:
                check_against_store(store, pipeline)
        plan = plan_of(pipeline)
        if json_out:
            print_json({"name": pipeline.name, "file": str(pipeline.path), "plan": plan,
                        "store_checked": checked})  # fmt: skip
            return
        console.print(_plan_table(pipeline, plan))
        where = "checked against the store" if checked else "no store here to check it against"
        console.print(f"pipeline {escape(pipeline.name)} is valid ({where}); nothing was run")
        return
    check_home(s)
    with open_store(s) as store:
        result = run_pipeline(
            store,
            open_artifacts(s),
            pipeline,
            home=s.ensure_home(),
            ui=RichReporter(),
            trigger=None if alert is None else {"alert": alert},
        )
    if json_out:
        print_json(result.to_dict())
    else:
        console.print(_result_table(result))
        if result.error is None:
            console.print(f"[green]pipeline {escape(result.name)} succeeded[/] (run {result.id})")
    if result.error is not None:
        raise result.error
