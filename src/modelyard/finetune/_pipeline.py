"""``modelyard finetune``: raw rows -> dataset version -> run -> model version -> gates -> alias.

Everything a config can get wrong is checked in ``prepare`` before any
training starts (and before anything is written to the store). Under
``torchrun``/``accelerate launch`` every process trains; only the main process
(rank 0) writes to the store, evaluates and registers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelyard.artifacts import ArtifactStore, this_host
from modelyard.base import load_tokenizer, model_dir
from modelyard.data import PromptTemplate, load_rows, split_rows, template_for, validate_rows
from modelyard.errors import (
    ConfigError,
    DataError,
    GateFailed,
    PermissionDenied,
)
from modelyard.evaluation import (
    check_metric_names,
    evaluate_gates,
    gated_metrics,
    gates_passed,
    parse_gates,
)
from modelyard.finetune._bases import registered_name
from modelyard.finetune._cleanup import Written, clean_up, held_signals, interrupted
from modelyard.finetune._config import FinetuneConfig
from modelyard.finetune._cost import gpu_hour_price, priced
from modelyard.finetune._evaluate import champion_of, evaluate_rows
from modelyard.finetune._tracking import MlflowTracker
from modelyard.gpu import gpu_readings, summarize
from modelyard.judges import judge_name, judge_source
from modelyard.registry import (
    ensure_base_model,
    ensure_model,
    environment,
    lineage_record,
    load_version_model,
    records_origin,
    rows_digest,
    store_dataset,
)
from modelyard.store import Store, VersionKind
from modelyard.training import TrainResult, last_checkpoint, plan_training, train_model

UpdateFn = Callable[[int, int, str], None]


class Reporter(Protocol):
    """How long work reports: lines of text and progress bars (Rich in the CLI)."""

    def info(self, message: str) -> None: ...

    def bar(self, description: str, total: int, unit: str) -> AbstractContextManager[UpdateFn]: ...


@dataclass(frozen=True)
class Prepared:
    """A validated config with its data loaded, split, rendered and checked."""

    config: FinetuneConfig
    template: PromptTemplate
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    report: dict[str, Any]
    base_dir: Path
    source_digest: str  # of every row of data.train, before the split (its lineage)
    eval_numbers: tuple[int, ...] = ()  # each eval row's number in its file (data.eval or .train)


@dataclass
class FinetuneOutcome:
    """What the command prints and returns as JSON."""

    run_id: str
    model: str
    version: int | None = None
    ref: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    base_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = True
    alias: str | None = None
    alias_refused: str | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def gate_failure(self) -> GateFailed | None:
        """The error to raise when a gate failed (the version is registered regardless)."""
        if self.passed:
            return None
        failed = [v for v in self.verdicts if not v["passed"]]
        return GateFailed(
            f"{len(failed)} of {len(self.verdicts)} gates failed for {self.ref}: "
            + "; ".join(str(v["gate"]) for v in failed),
            hint="The version is registered with its verdicts; the alias was not moved.",
        )


def rank() -> int:
    """This process's rank in a distributed run (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def _check_shape(config: FinetuneConfig, base_dir: Path) -> None:
    """Rows no longer than the base's positions, and a LoRA rank not above its hidden size
    (a rank past it adds nothing to a projection, and costs memory: ``r: 100000`` passed
    ``--check`` and then filled the machine), from the base's config alone."""
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    limit = getattr(base, "max_position_embeddings", None)
    if isinstance(limit, int) and config.data.max_seq_len > limit:
        raise ConfigError(
            f"data.max_seq_len {config.data.max_seq_len} is larger than the base model "
            f"supports ({limit} positions)",
            hint=f"Set data.max_seq_len to at most {limit}.",
            field="data.max_seq_len",
        )
    hidden, r = getattr(base, "hidden_size", None), config.method.r
    if config.method.type != "full" and isinstance(hidden, int) and r > hidden:
        raise ConfigError(
            f"method.r {r} is above the base model's hidden size ({hidden}): a LoRA rank "
            "past it adds nothing and costs memory",
            hint=f"Set method.r to at most {hidden} (8 to 64 is usual).",
            field="method.r",
        )


def _check_method(config: FinetuneConfig) -> None:
    """What this machine cannot run (QLoRA or fp16 without CUDA, flash-attention not
    installed) is refused here, before the data is read."""
    plan_training(config.train_settings())


def _checked_rows(
    rows: Sequence[dict[str, Any]], template: PromptTemplate, what: str
) -> list[dict[str, Any]]:
    """Every row renders with the template, or a ``DataError`` naming the first bad row."""
    for number, row in enumerate(rows, start=1):
        try:
            template.render(row)
        except DataError as exc:
            raise DataError(
                f"{what} row {number}: {exc.message}", hint=exc.hint, row=number
            ) from exc
    return list(rows)


def _token_count(tokenizer: Any, template: PromptTemplate, row: Mapping[str, Any]) -> int:
    """Tokens of prompt + response + eos, exactly as training encodes the row."""
    from modelyard.training import encode_row

    return len(encode_row(tokenizer, row, 1 << 30, template)["input_ids"])


def prepare(config: FinetuneConfig) -> Prepared:
    """Validate everything a run needs before it starts; raises one clear error."""
    _check_method(config)
    gates = parse_gates(config.evaluation.gates)
    check_metric_names(config.evaluation.metrics, where="evaluation.metrics")
    metrics = list(dict.fromkeys([*config.evaluation.metrics, *gated_metrics(gates)]))
    if config.data.format == "text":
        unsupported = [m for m in metrics if m != "perplexity" and not m.endswith(("_ms", "_mb"))]
        if unsupported:
            judged = judge_name(unsupported[0]) is not None
            needs = "the model's answers to prompts" if judged else "references"
            hint = "Use perplexity (and latency/memory) with data.format 'text'."
            if judged:
                hint += " A judge needs rows that ask something: alpaca, chat or classification."
            raise ConfigError(
                f"metric {unsupported[0]!r} needs {needs}, which 'text' data has not",
                hint=hint,
                field="evaluation.metrics",
            )
    base_dir = model_dir(config.base_model)
    tokenizer = load_tokenizer(config.base_model)
    _check_shape(config, base_dir)
    template = template_for(config.data.format, tokenizer)
    # Rows are checked, and named, by their number in the file a person can open.
    rows = _checked_rows(load_rows(config.data.train, config.data.format), template, "data.train")
    if config.data.eval is not None:
        train_rows = rows
        eval_rows = _checked_rows(
            load_rows(config.data.eval, config.data.format), template, "data.eval"
        )
        numbers = {id(row): number for number, row in enumerate(eval_rows, start=1)}
    else:
        train_rows, eval_rows = split_rows(
            rows,
            config.data.eval_fraction,
            seed=config.training.seed,
            stratify=config.data.stratify,
        )
        numbers = {id(row): number for number, row in enumerate(rows, start=1)}
    if not eval_rows:
        raise DataError(
            "no evaluation rows: gates need held-out examples",
            hint="Give data.eval or raise data.eval_fraction.",
        )
    report = validate_rows(
        train_rows,
        config.data.format,
        tokenizer=tokenizer,
        max_seq_len=config.data.max_seq_len,
        eval_rows=eval_rows,
    )
    held_out = {id(row) for row in eval_rows}
    too_long = [
        number
        for number, row in enumerate(rows, start=1)  # data.train's numbers, split or not
        if id(row) not in held_out
        and _token_count(tokenizer, template, row) > config.data.max_seq_len
    ]
    if too_long:
        raise DataError(
            f"{len(too_long)} training rows are longer than data.max_seq_len "
            f"{config.data.max_seq_len} tokens (data.train rows "
            f"{', '.join(map(str, too_long[:10]))})",
            hint="Raise data.max_seq_len or shorten those rows.",
            field="data.max_seq_len",
        )
    digest = rows_digest(rows)  # all of data.train: what `data from-records` registered
    return Prepared(
        config, template, train_rows, eval_rows, report.to_dict(), base_dir, digest,
        eval_numbers=tuple(numbers[id(row)] for row in eval_rows),
    )  # fmt: skip


def check_judges(prepared: Prepared, store: Store) -> None:
    """The judges the config's metrics and gates name exist, their key variables are set, and
    every held-out row gives each what its rubric needs (a ConfigError naming the row)."""
    config = prepared.config
    metrics = [*config.evaluation.metrics, *gated_metrics(parse_gates(config.evaluation.gates))]
    judges = judge_source(store, metrics, where="evaluation.metrics")
    if judges is not None:
        where = "data.eval row" if config.data.eval is not None else "data.train row"
        judges.check_rows(
            prepared.eval_rows, config.data.format, where=where, numbers=prepared.eval_numbers
        )


# -- stored inputs ---------------------------------------------------------------------------


def checkpoint_dir(prepared: Prepared, home: Path) -> Path:
    """Where a run of these inputs (config and training rows) keeps its checkpoints, so
    ``--resume`` finds them."""
    digest = prepared.config.inputs_digest(rows_digest(prepared.train_rows))
    return home / "checkpoints" / digest[:16]


# -- the run ---------------------------------------------------------------------------------


def _train(
    prepared: Prepared,
    out_dir: Path,
    checkpoints: Path,
    *,
    resume: bool,
    ui: Reporter,
    on_log: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    config = prepared.config
    settings = config.train_settings()
    tokens: dict[str, float] = {}
    saved = last_checkpoint(checkpoints) if resume else None
    if saved is not None:
        ui.info(f"resuming from step {saved[1]} (checkpoint {saved[0]})")

    def log(entry: dict[str, float]) -> None:
        tokens.update(entry)
        if on_log is not None:
            on_log(entry)

    with ui.bar(f"fine-tuning ({settings.method})", 1, "steps") as update:

        def progress(step: int, total: int, loss: float) -> None:
            runtime = tokens.get("train_runtime") or 0.0
            seen = tokens.get("tokens", 0.0)
            rate = f", {seen / runtime:,.0f} tok/s" if runtime else ""
            gpus = summarize(gpu_readings())
            update(step, total, f"loss {loss:.3f}{rate}" + (f", {gpus}" if gpus else ""))

        return train_model(
            prepared.base_dir,
            prepared.train_rows,
            out_dir,
            settings,
            template=prepared.template,
            eval_rows=prepared.eval_rows,
            progress=progress,
            on_log=log,
            checkpoint_dir=checkpoints,
            resume=resume,
        )


def run_finetune(
    prepared: Prepared,
    *,
    store: Store | None,
    artifacts: ArtifactStore | None,
    home: Path,
    ui: Reporter,
    resume: bool = False,
) -> FinetuneOutcome | None:
    """Run a prepared config to a registered, gated version (``None`` on non-main ranks)."""
    checkpoints = checkpoint_dir(prepared, home)
    if rank() != 0:
        with tempfile.TemporaryDirectory(prefix="modelyard-rank-") as tmp:
            _train(prepared, Path(tmp) / "out", checkpoints, resume=resume, ui=ui, on_log=None)
        return None
    if store is None or artifacts is None:
        raise ConfigError("the main process needs a store and an artifact store")
    return _run_main(prepared, store, artifacts, home, checkpoints, ui=ui, resume=resume)


def _run_main(
    prepared: Prepared,
    store: Store,
    artifacts: ArtifactStore,
    home: Path,
    checkpoints: Path,
    *,
    ui: Reporter,
    resume: bool,
) -> FinetuneOutcome:
    config = prepared.config
    registry = config.registry
    check_judges(prepared, store)  # before anything is stored or trained
    base = ensure_base_model(
        store, config.base_model, name=registered_name(store, config.base_model, prepared.base_dir)
    )
    name = config.data.name or config.data.train.stem
    origin = records_origin(store, prepared.source_digest)  # rows of `data from-records`?
    derived = None if origin is None else {k: origin[k] for k in ("dataset", "records", "endpoint")}
    report = prepared.report if derived is None else {**prepared.report, "derived_from": derived}
    fmt = config.data.format
    dataset = store_dataset(store, artifacts, name, prepared.train_rows, fmt, report)
    eval_set = store_dataset(store, artifacts, f"{name}-eval", prepared.eval_rows, fmt, {})
    ui.info(
        f"dataset {dataset.name} v{dataset.version}: {dataset.n_rows} training rows, "
        f"{eval_set.n_rows} held out (sha256 {dataset.digest[:12]})"
    )
    if origin is not None:
        ui.info(
            f"the data came from {origin['records']} inference records of endpoint "
            f"{origin['endpoint']} (dataset {origin['dataset']})"
        )
    artifacts.sweep_tmp()  # what killed writers left in the work area
    run_id = str(uuid.uuid4())
    outcome = FinetuneOutcome(run_id=run_id, model=registry.model)
    outcome.dataset = {
        "name": dataset.name,
        "version": dataset.version,
        "digest": dataset.digest,
        "eval_digest": eval_set.digest,
    }
    if origin is not None:
        outcome.dataset["derived_from"] = origin
    env = environment()
    config_json = config.model_dump(mode="json")
    store.create_run(
        run_id,
        base_model=base.name,
        dataset_id=dataset.id,
        config=config_json,
        seed=config.training.seed,
        # who runs it: `modelyard doctor` marks the run interrupted once this process is gone
        environment={**env, "process": {"pid": os.getpid(), "host": this_host()}},
    )
    tracker = None
    if config.tracking.mlflow_uri:
        tracker = MlflowTracker(
            config.tracking.mlflow_uri,
            config.tracking.experiment,
            run_name=f"{registry.model}-{run_id[:8]}",
            tags={"modelyard.run_id": run_id, "modelyard.dataset_digest": dataset.digest},
        )
        tracker.log_params(config_json)
        outcome.mlflow_run_id = tracker.run_id
    history: list[dict[str, float]] = []
    work = home / "runs" / run_id
    state = Written()
    try:
        _train_and_register(
            prepared, store, artifacts, checkpoints, work, outcome, state,
            ui=ui, resume=resume, base=base, env=env, history=history, tracker=tracker,
        )  # fmt: skip
    except BaseException as exc:
        status = clean_up(store, artifacts, run_id, state, exc, history, registry.model)
        if isinstance(exc, KeyboardInterrupt) and status is None and outcome.ref:
            ui.info(f"interrupted once {outcome.ref} was registered with its gate verdicts: "
                    "the version stands")  # fmt: skip
        if tracker is not None:
            tracker.finish("failed")
        if isinstance(exc, KeyboardInterrupt) and status is not None:
            raise interrupted(run_id, checkpoints, history, status) from exc
        raise
    if tracker is not None:
        tracker.log_metrics({f"eval_{k}": v for k, v in outcome.metrics.items()})
        tracker.finish("finished")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return outcome


def _train_and_register(
    prepared: Prepared,
    store: Store,
    artifacts: ArtifactStore,
    checkpoints: Path,
    work: Path,
    outcome: FinetuneOutcome,
    state: Written,
    *,
    ui: Reporter,
    resume: bool,
    base: Any,
    env: Mapping[str, Any],
    history: list[dict[str, float]],
    tracker: MlflowTracker | None,
) -> None:
    config = prepared.config
    registry = config.registry
    run_id = outcome.run_id

    def on_log(entry: dict[str, float]) -> None:
        history.append(entry)
        if tracker is not None:
            tracker.log_step(entry)

    result = _train(prepared, work / "output", checkpoints, resume=resume, ui=ui, on_log=on_log)
    outcome.training = {
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_tokens": result.train_tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "seconds": round(result.seconds, 2),
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "stopped_early": result.stopped_early,
        "resumed_from": result.resumed_from,
        "compute": priced(result.compute, gpu_hour_price()),
    }
    state.metrics = dict(outcome.training)
    ui.info(
        f"trained {result.steps} steps in {result.seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tokens/s), train loss {result.train_loss:.3f}"
    )
    kind: VersionKind = "full" if config.method.type == "full" else "adapter"
    blob = artifacts.put_dir(result.output_dir, kind=kind)
    state.blob = blob.digest
    _evaluate_all(prepared, store, artifacts, result.output_dir, kind, base.source, outcome, ui)
    state.metrics = {**outcome.training, **outcome.metrics}
    lineage = lineage_record(
        base,
        prepared.template.name,
        run_id=run_id,
        dataset={**outcome.dataset, "format": config.data.format},
        config=config.model_dump(mode="json"),
        seed=config.training.seed,
        env=env,
        parent=_parent_ref(store, registry.model),
        compute=outcome.training["compute"],
    )
    # What follows registers the version, its verdicts and its alias: a Ctrl-C or SIGTERM
    # meanwhile waits until all of it is written (no version left without its verdicts, no
    # run left 'running' beside its version), then interrupts as before.
    with held_signals():
        state.model_created = ensure_model(
            store, registry.model, tenant=registry.tenant, description=registry.description
        )
        version = store.create_model_version(
            registry.model,
            kind=kind,
            artifact_digest=blob.digest,
            base_model=base.name,
            run_id=run_id,
            lineage=lineage,
            metrics={
                **outcome.metrics,
                **{f"base_{k}": v for k, v in outcome.base_metrics.items()},
            },
        )
        state.registered = True
        store.finish_run(
            run_id,
            status="finished",
            metrics={**outcome.training, **outcome.metrics, "history": history},
        )
        outcome.version, outcome.ref = version.version, version.ref
        gates = parse_gates(config.evaluation.gates)
        verdicts = evaluate_gates(
            gates, outcome.metrics, outcome.champion_metrics, config.evaluation.tolerance
        )
        outcome.verdicts = [v.to_dict() for v in verdicts]
        outcome.passed = gates_passed(verdicts)
        store.record_gate_verdicts(
            registry.model, version.version, outcome.verdicts, passed=outcome.passed
        )
        if outcome.passed and registry.alias_on_pass:
            try:
                store.set_alias(registry.model, registry.alias_on_pass, version.version)
                outcome.alias = registry.alias_on_pass
            except PermissionDenied as exc:  # e.g. champion needs an approver: a separate step
                outcome.alias_refused = exc.message
                passed = "passed its gates" if verdicts else "has no gates configured, so it"
                ui.info(f"{version.ref} {passed} was not promoted: {exc.one_line()}")


def _parent_ref(store: Store, model: str) -> str | None:
    champion = champion_of(store, model)
    return champion.ref if champion else None


def _evaluate_all(
    prepared: Prepared,
    store: Store,
    artifacts: ArtifactStore,
    output_dir: Path,
    kind: VersionKind,
    base_source: str,
    outcome: FinetuneOutcome,
    ui: Reporter,
) -> None:
    """Score the new version, the base (``compare_base``) and the champion (for its gates)."""
    from modelyard.base import load_adapter, load_base

    config = prepared.config
    gates = parse_gates(config.evaluation.gates)
    options: dict[str, Any] = {
        "metrics": list(dict.fromkeys([*config.evaluation.metrics, *gated_metrics(gates)])),
        "template": prepared.template,
        "data_format": config.data.format,
        "max_new_tokens": config.evaluation.max_new_tokens,
    }
    options["judges"] = judge_source(store, options["metrics"], where="evaluation.metrics")
    rows = prepared.eval_rows
    if kind == "adapter":
        model, tokenizer = load_base(prepared.base_dir)
        if config.evaluation.compare_base:
            outcome.base_metrics = evaluate_rows(model, tokenizer, rows, **options)
        tuned = load_adapter(model, output_dir)
        outcome.metrics = evaluate_rows(tuned, tokenizer, rows, **options)
    else:
        if config.evaluation.compare_base:
            model, tokenizer = load_base(prepared.base_dir)
            outcome.base_metrics = evaluate_rows(model, tokenizer, rows, **options)
        tuned, tokenizer = load_base(output_dir)
        outcome.metrics = evaluate_rows(tuned, tokenizer, rows, **options)
    if any(g.kind == "not_worse_than" for g in gates):
        champion = champion_of(store, config.registry.model)
        if champion is not None:
            ui.info(f"scoring the champion {champion.ref} on the same held-out rows")
            model, tokenizer = load_version_model(store, artifacts, champion)
            outcome.champion_metrics = evaluate_rows(model, tokenizer, rows, **options)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in outcome.metrics.items())
    ui.info(f"held-out metrics on {len(rows)} rows: {shown}")
