"""``modelyard finetune`` and ``modelyard evaluate``."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli._common import (
    RichReporter,
    console,
    err_console,
    open_artifacts,
    open_store,
    out_file,
    print_json,
    settings,
)
from modelyard.cli._home import check_home, store_exists
from modelyard.errors import ConfigError, GateFailed

if TYPE_CHECKING:
    from modelyard.finetune import FinetuneInterrupted

JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _metrics_table(
    metrics: dict[str, float], base: dict[str, float], champion: dict[str, float] | None
) -> Table:
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column("this version", justify="right")
    if base:
        table.add_column("base", justify="right")
    if champion is not None:
        table.add_column("champion", justify="right")
    for name, value in metrics.items():
        row = [name, f"{value:.4g}"]
        if base:
            row.append(f"{base[name]:.4g}" if name in base else "")
        if champion is not None:
            row.append(f"{champion[name]:.4g}" if name in champion else "")
        table.add_row(*row)
    return table


SLURM_ONLY = ("nodes", "gpus_per_node", "partition", "time_limit", "out")
NOT_WITH_SLURM = ("check", "resume", "gpus")
# Slurm's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or unlimited
SLURM_TIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|unlimited|infinite)$")


def _option(ctx: typer.Context, name: str) -> str:
    """How the user spells the option behind parameter ``name`` (``--gpus-per-node``)."""
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def _check_options(ctx: typer.Context, slurm: bool, partition: str | None, time: str) -> None:
    """Refuse an option that this combination would silently ignore."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    given = [
        name for name, source in sources.items() if getattr(source, "name", "") == "COMMANDLINE"
    ]
    if not slurm:
        ignored = [_option(ctx, n) for n in given if n in SLURM_ONLY]
        if ignored:
            raise ConfigError(
                f"{', '.join(ignored)} only apply with --slurm",
                hint="Add --slurm to write an sbatch script, or drop them.",
                field=ignored[0],
            )
        return
    ignored = [_option(ctx, n) for n in given if n in NOT_WITH_SLURM]
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)} cannot be combined with --slurm, which only writes a script",
            hint="Use --nodes and --gpus-per-node for the job's size; run the check or the "
            "resume without --slurm.",
            field=ignored[0],
        )
    if not SLURM_TIME.match(time.strip().lower()):
        raise ConfigError(
            f"invalid --time {time!r}",
            hint="Use Slurm's format: MINUTES, HH:MM:SS or DAYS-HH:MM:SS, e.g. 04:00:00.",
            field="time",
        )
    if partition is not None and not re.fullmatch(r"[A-Za-z0-9_.,-]+", partition):
        raise ConfigError(
            f"invalid --partition {partition!r}",
            hint="Give partition names: letters, digits, '_', '.', '-', separated by commas.",
            field="partition",
        )


def _write_script(out: Path, text: str) -> None:
    """Write the sbatch script, or say in one line why it cannot be written."""
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the sbatch script to {out}: {exc.strerror}",
            hint="Pass --out with a file path in a directory that exists and is writable.",
            field="out",
        ) from exc


def finetune(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", "-c", help="The finetune YAML config."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint of this config and data."
    ),
    check: bool = typer.Option(
        False, "--check", help="Validate the config, base and data, then stop (no training)."
    ),
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        min=1,
        help="Train on N GPUs of this machine (torchrun, one process per GPU: DDP, or FSDP "
        "for full fine-tuning).",
    ),
    slurm: bool = typer.Option(
        False,
        "--slurm",
        help="Write an sbatch script (torchrun on every node) instead of training.",
    ),
    nodes: int = typer.Option(1, min=1, help="--slurm: nodes to run on."),
    gpus_per_node: int = typer.Option(1, min=1, help="--slurm: GPUs (processes) per node."),
    partition: str | None = typer.Option(None, help="--slurm: the Slurm partition."),
    time_limit: str = typer.Option("04:00:00", "--time", help="--slurm: the job's time limit."),
    out: Path = typer.Option(
        Path("finetune.sbatch"), "--out", help="--slurm: where to write the script."
    ),
    json_out: bool = JSON,
) -> None:
    """Train, evaluate, gate and register a model version from one YAML config.

    Data, base model, metrics and gates are all checked before training starts.
    The version is registered even when a gate fails (with its verdicts), but
    then the alias does not move and the command exits 1, so a CI job stops.
    Works unchanged under `torchrun` / `accelerate launch`; --gpus N starts torchrun
    itself on N GPUs of this machine.
    """
    from modelyard.finetune import (
        FinetuneInterrupted,
        SlurmOptions,
        check_alias_on_pass,
        check_gpus,
        check_judges,
        check_registry,
        launch,
        load_config,
        prepare,
        rank,
        resolve_base,
        run_finetune,
        sbatch_script,
        visible_gpus,
    )

    _check_options(ctx, slurm, partition, time_limit)
    loaded = load_config(config)
    s = settings()
    if slurm:
        env = {
            "MODELYARD_STORE_URL": s.resolved_store_url,
            "MODELYARD_ARTIFACTS": s.artifacts_location,
        }
        options = SlurmOptions(
            nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, time=time_limit
        )
        _write_script(out, sbatch_script(config, options, env))
        err_console.print(f"wrote {out}; submit it with: sbatch {out}")
        if nodes > 1 and env["MODELYARD_STORE_URL"].startswith("sqlite"):
            err_console.print(
                f"[yellow]warning:[/] the job registers into the SQLite file "
                f"{escape(env['MODELYARD_STORE_URL'])}: a node sees it only where it is on a "
                "filesystem every node shares (else set MODELYARD_STORE_URL to PostgreSQL)",
                soft_wrap=True,
            )
        return
    if gpus is not None and not _launched():
        check_gpus(gpus, visible_gpus())
        if gpus > 1 and not check:
            prepare(loaded)  # a config this machine cannot run fails here, not in N processes
            code = launch(config, gpus, resume=resume, json_out=json_out)
            if code:
                raise typer.Exit(code)
            return
    reporter = RichReporter()
    if not check:
        check_home(s)  # no store to register in: say so before any data or base is read
    if store_exists(s):  # a base registered by name (`base create-tiny --name`) resolves
        with open_store(s) as store:
            check_registry(loaded, store)
            loaded = resolve_base(loaded, store)
    elif not check:  # the store is made at registration: it cannot hold the tenant yet
        check_registry(loaded, None)
    if check:  # a run that cannot move its alias ends in exit 1: --check says so now
        check_alias_on_pass(loaded, s.protected_alias_set)
    prepared = prepare(loaded)
    if check and store_exists(s):  # the judges it names, and what the held-out rows give them
        with open_store(s) as store:
            check_judges(prepared, store)
    if check:
        summary = {
            "train_rows": len(prepared.train_rows),
            "eval_rows": len(prepared.eval_rows),
            "template": prepared.template.name,
            "base_model": str(prepared.base_dir),
            "report": prepared.report,
        }
        if json_out:
            print_json(summary)
        else:
            console.print(
                f"config OK: {summary['train_rows']} training rows, {summary['eval_rows']} held "
                f"out, template {summary['template']}, base {summary['base_model']}"
            )
        return
    if resume and rank() == 0:
        _check_resumable(prepared, s.ensure_home())
    if rank() != 0:
        with _sigterm_interrupts():
            run_finetune(
                prepared, store=None, artifacts=None, home=s.ensure_home(), ui=reporter,
                resume=resume,
            )  # fmt: skip
        return
    with open_store(s) as store, _sigterm_interrupts() as stopped:
        try:
            outcome = run_finetune(
                prepared,
                store=store,
                artifacts=open_artifacts(s),
                home=s.ensure_home(),
                ui=reporter,
                resume=resume,
            )
        except FinetuneInterrupted as exc:
            _say_interrupted(exc, config)
            raise typer.Exit(128 + (stopped[0] if stopped else signal.SIGINT)) from None
        except KeyboardInterrupt:  # once the version was registered: it stands, as said
            raise typer.Exit(128 + (stopped[0] if stopped else signal.SIGINT)) from None
    assert outcome is not None
    if json_out:
        print_json(outcome)
    else:
        from modelyard.evaluation import GateVerdict, verdicts_table

        console.print(
            _metrics_table(outcome.metrics, outcome.base_metrics, outcome.champion_metrics)
        )
        if outcome.verdicts:
            console.print(verdicts_table([GateVerdict(**v) for v in outcome.verdicts]))
        moved = f"; {outcome.model}@{outcome.alias} -> {outcome.ref}" if outcome.alias else ""
        resumed = outcome.training.get("resumed_from")
        if resumed:
            moved += f"; resumed from step {str(resumed).rsplit('-', 1)[-1]}"
        console.print(f"registered [bold]{outcome.ref}[/] (run {outcome.run_id}){moved}")
        if outcome.passed and outcome.alias is None and outcome.alias_refused is None:
            err_console.print(
                f"no alias moved: the config sets no registry.alias_on_pass (e.g. champion); "
                f"point one at it with `modelyard registry alias {outcome.model} champion "
                f"{outcome.version}`"
            )
    failure = outcome.gate_failure()
    if failure is not None:
        raise failure
    if outcome.alias_refused is not None:
        _alias_not_moved(outcome, prepared.config.registry.alias_on_pass)


def _alias_not_moved(outcome: Any, alias: str | None) -> None:
    """The config's ``alias_on_pass`` was refused (a protected alias and a role that may not
    move it, or no gates to vouch for the version): exit 1, as `rollout wait` does when its
    --promote-alias is refused. A pipeline that went on would deliver the version the alias
    still points at, not this one."""
    from modelyard.errors import PermissionDenied

    vouched = "passed its gates" if outcome.verdicts else "has no gates configured"
    move = f"modelyard registry alias {outcome.model} {alias} {outcome.version}"
    hint = (
        f"The version is registered; someone allowed to can move the alias: `{move}`."
        if outcome.verdicts
        else "The version is registered; give the config evaluation.gates, or an approver "
        f'can move the alias anyway: `{move} --override-gates --reason "why"`.'
    )
    raise PermissionDenied(
        f"{outcome.ref} {vouched}, but {outcome.model}@{alias} was NOT moved to it: "
        f"{outcome.alias_refused}",
        hint=hint,
    )


def _check_resumable(prepared: Any, home: Path) -> None:
    """``--resume`` with no checkpoint fails before a dataset version or a run is written
    (the trainer would say so only once both were)."""
    from modelyard.errors import TrainingError
    from modelyard.finetune import checkpoint_dir
    from modelyard.training import last_checkpoint

    checkpoints = checkpoint_dir(prepared, home)
    if last_checkpoint(checkpoints) is None:
        raise TrainingError(
            f"no checkpoint to resume from in {checkpoints}",
            hint="Resume needs a run of this same config and data started with "
            "training.save_every; or start afresh without --resume.",
        )


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[list[int]]:
    """SIGTERM stops a fine-tune as Ctrl-C does: a CI job cancelled or a pod evicted gets its
    run marked ``interrupted`` and its scratch removed, not a run left ``running``. Yields
    the signals received (SIGTERM: exit 143 rather than 130). A second SIGTERM during that
    clean-up is ignored; SIGKILL, which cannot be caught, is what `modelyard doctor` is for."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread may set handlers (an embedding caller's job)
        return

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launched() -> bool:
    """Whether this process is already one of a launcher's (torchrun sets WORLD_SIZE)."""
    import os

    return "WORLD_SIZE" in os.environ


def _say_interrupted(exc: FinetuneInterrupted, config: Path) -> None:
    """What Ctrl-C left, and the command that goes on from it."""
    err_console.print(f"[yellow]{exc.message}[/]")
    if exc.checkpoint_step is not None:
        err_console.print(
            f"The last checkpoint is at step {exc.checkpoint_step}; go on from it with:\n"
            f"  modelyard finetune -c {config} --resume"
        )
    else:
        err_console.print(
            "No checkpoint was saved yet (training.save_every sets how often), so there is "
            f"nothing to resume: run it again with\n  modelyard finetune -c {config}"
        )


def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="NAME@alias or NAME:VERSION."),
    data: Path = typer.Option(..., "--data", "-d", help="Rows to evaluate on."),
    data_format: str | None = typer.Option(
        None, "--format", help="Data format (default: the format the version trained on)."
    ),
    metrics: str = typer.Option("exact_match", "--metrics", help="Comma-separated metric names."),
    gate: list[str] = typer.Option(
        [], "--gate", metavar='"METRIC OP VALUE"', help='A gate such as "exact_match >= 0.9".'
    ),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest generated answer."),
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="Also write every row's answer to this file (.jsonl, .csv or .parquet): the "
        "row, its reference, the answer and whether it matched; classification rows also "
        "print a confusion matrix.",
    ),
    json_out: bool = JSON,
) -> None:
    """Evaluate any registered version on a data file, with the template it trained with.

    With --gate, the verdicts are recorded on the version as a fine-tune run records
    them (audited as gate.verdict): `registry show` says passed or failed, and only a
    version whose gates passed takes a protected alias or a rollout without an
    override. A champion gate scores the champion on the same rows. Exits 1 when a
    gate fails.
    """
    from modelyard.batch import table_kind, write_table
    from modelyard.evaluation import GateVerdict, verdicts_table
    from modelyard.finetune import check_evaluation, evaluate_version

    names = metrics.split(",")
    check_evaluation(names, gate, data_format)  # before the store opens: a typo writes nothing
    if predictions is not None:
        table_kind(out_file(predictions, "--predictions"), "--predictions")  # before the run
        if predictions.resolve() == data.resolve():
            raise ConfigError(
                f"--predictions {predictions} is the --data file: writing the answers would "
                "replace the held-out rows",
                hint="Write the predictions to another file.",
                field="--predictions",
            )
    s = settings()
    with open_store(s) as store:
        result = evaluate_version(
            store,
            open_artifacts(s),
            model,
            data,
            metrics=names,
            gates=gate,
            data_format=data_format,
            max_new_tokens=max_new_tokens,
            predictions=predictions is not None,
        )
    if predictions is not None:
        rows = result.pop("predictions")
        columns = list(dict.fromkeys(c for row in rows for c in row))
        write_table(predictions, rows, columns)
    verdicts = [GateVerdict(**v) for v in result["verdicts"]]
    status = result["gate_status"]
    if json_out:
        print_json(result)
    else:
        console.print(_metrics_table(result["metrics"], {}, result["champion_metrics"]))
        if result.get("confusion_matrix"):
            console.print(_confusion_table(result["confusion_matrix"]))
        if predictions is not None:
            console.print(f"wrote {result['rows']} predictions to {predictions}", soft_wrap=True)
        if verdicts:
            console.print(verdicts_table(verdicts))
        if status is not None:
            console.print(f"gates of {result['model']} recorded: {status['summary']}")
    if not result["passed"]:
        raise GateFailed(
            f"a gate failed for {result['model']}",
            hint="See the table above. The verdicts are recorded on the version: it takes no "
            "protected alias or rollout without an approver's --override-gates --reason.",
        )


def _confusion_table(matrix: dict[str, Any]) -> Table:
    """Rows: the true labels; columns: what the model answered."""
    table = Table("true / answered", *matrix["columns"], title="confusion matrix")
    for label, counts in zip(matrix["labels"], matrix["counts"], strict=True):
        table.add_row(label, *(str(c) if c else "·" for c in counts))
    return table
