"""Fine-tuning (LoRA or full) with the Hugging Face ``Trainer``.

The loop is ``transformers.Trainer`` (on a ``peft`` model for LoRA), not a
hand-written one, so the same code runs on one CPU, one GPU, or under
``accelerate launch`` / ``torchrun`` without changes. modelyard adds the
response-only loss masking, padding-free packing, checkpoints and resume, early
stopping, progress reporting, atomic saving, and clear errors.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from modelyard.base import check_out_dir, publish_dir, quiet_progress
from modelyard.data import PromptTemplate
from modelyard.errors import ConfigError, TrainingError
from modelyard.gpu import gpu_readings
from modelyard.training._dataset import (
    ALPACA,
    IGNORE_INDEX,
    PackedCollator,
    PackedDataset,
    SupervisedDataset,
)
from modelyard.training._load import load_for_training
from modelyard.training._plan import TrainPlan, plan_training
from modelyard.training._settings import TrainResult, TrainSettings

ProgressFn = Callable[[int, int, float], None]
"""``progress(step, total_steps, loss)``, called after every optimizer step."""

LogFn = Callable[[dict[str, float]], None]
"""``on_log(entry)``: every logged step as ``{"step", "loss", "learning_rate", "tokens", ...}``,
with ``gpuN_memory_used_bytes`` and ``gpuN_utilization`` (0..1) per GPU where there are GPUs."""

DEFAULT_EVAL_EVERY = 10


class _ProgressCallback(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here
    """Forward logged losses to ``progress`` and keep a per-step history (for tracking)."""

    def __init__(self, progress: ProgressFn | None, on_log: LogFn | None) -> None:
        self._progress = progress
        self._on_log = on_log
        self.last_loss = math.nan
        self.history: list[dict[str, float]] = []

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any
    ) -> None:
        if not logs or not ({"loss", "eval_loss"} & logs.keys()):
            return
        entry = {"step": float(state.global_step), "tokens": float(state.num_input_tokens_seen)}
        entry.update({k: float(v) for k, v in logs.items() if isinstance(v, int | float)})
        for gpu in gpu_readings():
            entry[f"gpu{gpu.index}_memory_used_bytes"] = float(gpu.memory_used_bytes)
            if gpu.utilization is not None:
                entry[f"gpu{gpu.index}_utilization"] = gpu.utilization
        self.history.append(entry)
        if self._on_log is not None:
            self._on_log(entry)
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
            if self._progress is not None:
                self._progress(int(state.global_step), int(state.max_steps), self.last_loss)


def _lora_model(model: Any, settings: TrainSettings) -> Any:
    """Wrap ``model`` with a freshly initialised LoRA adapter (seeded, so init is reproducible)."""
    target = (
        settings.target_modules
        if isinstance(settings.target_modules, str)
        else list(settings.target_modules)
    )
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target,
        bias="none",
    )
    set_seed(settings.seed)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingError(
            f"cannot attach LoRA to this base: {str(exc).splitlines()[0]}",
            hint="Check target_modules against the base model's layer names, or use 'all-linear'.",
        ) from exc


def _schedule(settings: TrainSettings, has_eval: bool) -> dict[str, Any]:
    """Checkpoint and evaluation cadence: none, ``save_every``, or what early stopping needs."""
    if settings.early_stopping is not None:
        if not has_eval:
            raise ConfigError(
                "early_stopping needs held-out rows to compute an eval loss",
                hint="Give data.eval or data.eval_fraction, or drop training.early_stopping.",
                field="training.early_stopping",
            )
        every = settings.eval_every or settings.save_every or DEFAULT_EVAL_EVERY
        if settings.save_every is not None and settings.save_every % every:
            raise ConfigError(
                f"save_every={settings.save_every} is not a multiple of eval_every={every}",
                hint="Early stopping keeps the best checkpoint, so saves must fall on evaluations.",
                field="training.save_every",
            )
        return {
            "eval_strategy": "steps",
            "eval_steps": every,
            "save_strategy": "steps",
            "save_steps": settings.save_every or every,
            "save_total_limit": settings.keep_checkpoints,
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
        }
    if settings.save_every is not None:
        return {
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": settings.save_every,
            "save_total_limit": settings.keep_checkpoints,
        }
    return {"eval_strategy": "no", "save_strategy": "no"}


def _training_args(settings: TrainSettings, plan: TrainPlan, work_dir: str, has_eval: bool) -> Any:
    """Trainer arguments: no trackers, no tqdm; precision, device and sharding from ``plan``."""
    return TrainingArguments(
        output_dir=work_dir,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_ratio,
        weight_decay=0.0,
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        **_schedule(settings, has_eval),
        **plan.trainer_args(settings.gradient_checkpointing),
    )


def _count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of a peft model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return int(trainable), int(total)


def _run(trainer: Any, resume_from: str | None) -> Any:
    """``trainer.train()`` with failures turned into one-line ``TrainingError``s."""
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"training failed: {str(exc).strip().splitlines()[0]}") from exc
    if not math.isfinite(output.training_loss):
        raise TrainingError(
            "training diverged (the loss is not a finite number)",
            hint="Lower learning_rate or check the data.",
        )
    return output


def _collator(tokenizer: Any, packing: bool, plan: TrainPlan) -> Any:
    """Padded batches, or batches of packed rows (``packing``, see ``PackedCollator``),
    padded to a multiple of ``plan.pad_multiple`` (8 for half precision on a GPU)."""
    multiple = plan.pad_multiple
    if packing:
        return PackedCollator(int(tokenizer.pad_token_id), multiple)
    return DataCollatorForSeq2Seq(
        tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, pad_to_multiple_of=multiple
    )


def _make_trainer(
    model: Any,
    tokenizer: Any,
    settings: TrainSettings,
    plan: TrainPlan,
    work_dir: str,
    datasets: tuple[SupervisedDataset, SupervisedDataset | None],
    callbacks: list[Any],
) -> Any:
    """A ``Trainer`` that masks prompt labels and reports only via our callbacks."""
    if settings.early_stopping is not None:
        callbacks = [*callbacks, EarlyStoppingCallback(settings.early_stopping)]
    trainer = Trainer(
        model=model,
        args=_training_args(settings, plan, work_dir, datasets[1] is not None),
        train_dataset=(
            PackedDataset(datasets[0], settings.max_seq_len) if settings.packing else datasets[0]
        ),
        eval_dataset=datasets[1],
        data_collator=_collator(tokenizer, settings.packing, plan),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm would print raw log dicts
    return trainer


def _save_adapter(model: Any, out_dir: Path) -> None:
    """Save only the adapter, with a reproducible config and without peft's model card stub.

    peft writes ``target_modules`` in set order (it varies between processes) and
    a boilerplate README; sorting the one and dropping the other makes two runs
    with the same inputs produce identical files. When the output head or the
    embedding is adapted, peft would also save a copy of that frozen layer
    (``save_embedding_layers``, for a vocabulary that was resized; modelyard never
    resizes it): the copy is the base's own weights, and it would make the adapter
    one that serving refuses (plain LoRA only), so it is not saved.
    """
    with publish_dir(out_dir) as staging, quiet_progress():
        model.save_pretrained(str(staging), safe_serialization=True, save_embedding_layers=False)
        (staging / "README.md").unlink(missing_ok=True)
        config_path = staging / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )


def _save_full(trainer: Any, tokenizer: Any, out_dir: Path, plan: TrainPlan) -> None:
    """Save every weight (safetensors) with the tokenizer: a standalone model directory.

    Under FSDP each process holds a shard: every process takes part in gathering the
    whole state dict, and the main one writes it."""
    fsdp = plan.distributed == "fsdp"
    state = trainer.accelerator.get_state_dict(trainer.model) if fsdp else None
    if not trainer.is_world_process_zero():
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    with publish_dir(out_dir) as staging, quiet_progress():
        model.save_pretrained(str(staging), safe_serialization=True, state_dict=state)
        tokenizer.save_pretrained(str(staging))


def last_checkpoint(checkpoint_dir: Path | None) -> tuple[str, int] | None:
    """The newest complete checkpoint under ``checkpoint_dir`` and its step, or None.

    A checkpoint is complete once the Trainer has written its ``trainer_state.json``
    (its last file): one cut short by Ctrl-C or a kill while it was being saved is
    skipped, and the run resumes from the one before."""
    if checkpoint_dir is None or not checkpoint_dir.is_dir():
        return None
    complete = [
        (int(d.name.rsplit("-", 1)[-1]), d)
        for d in checkpoint_dir.iterdir()
        if d.is_dir()
        and d.name.rsplit("-", 1)[-1].isdigit()
        and d.name.startswith("checkpoint-")
        and (d / "trainer_state.json").is_file()
    ]
    if not complete:
        return None
    step, last = max(complete)
    return str(last), step


def _resume_point(checkpoint_dir: Path | None, resume: bool) -> str | None:
    """The last checkpoint under ``checkpoint_dir`` when resuming (a clear error if none)."""
    if not resume:
        return None
    last = last_checkpoint(checkpoint_dir)
    if last is None:
        raise TrainingError(
            f"no checkpoint to resume from in {checkpoint_dir}",
            hint="Resume needs a run started with training.save_every; or start afresh.",
        )
    return last[0]


def train_model(
    base: str | Path,
    train_rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    settings: TrainSettings,
    *,
    template: PromptTemplate = ALPACA,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    on_log: LogFn | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune ``base`` on rows rendered by ``template`` and save the result to ``out_dir``.

    The loss covers only the response tokens (and the closing eos), so the model
    learns to answer, not to echo prompts. A LoRA or QLoRA run saves
    ``adapter_config.json`` and ``adapter_model.safetensors``; a full run saves
    the whole model and its tokenizer. Precision, attention and the 4-bit base
    are planned first (``plan_training``: a ``ConfigError`` when this machine
    cannot, e.g. QLoRA without CUDA), and the result's ``compute`` says what ran.
    The same base, rows and settings give byte-identical files on the same
    hardware and software. Checkpoints (with ``save_every`` or early stopping) go
    to ``checkpoint_dir``, and ``resume`` continues from the last one there. With
    ``eval_rows`` the result also reports the held-out loss.
    """
    started = time.perf_counter()
    plan = plan_training(settings)
    check_out_dir(out_dir, overwrite)
    resume_from = _resume_point(checkpoint_dir, resume)
    model, tokenizer = load_for_training(base, plan)
    tokenizer.padding_side = "right"
    train_set = SupervisedDataset(tokenizer, train_rows, settings.max_seq_len, template)
    eval_set = (
        SupervisedDataset(tokenizer, eval_rows, settings.max_seq_len, template)
        if eval_rows
        else None
    )
    # Training never reuses a KV cache; without one, transformers also honours the
    # per-example position ids of packed rows (a block-diagonal mask).
    use_cache = model.config.use_cache
    model.config.use_cache = False
    if settings.method != "full":
        model = _lora_model(model, settings)
    else:
        set_seed(settings.seed)
    callback = _ProgressCallback(progress, on_log)
    with tempfile.TemporaryDirectory(prefix="modelyard-trainer-") as scratch:
        work_dir = str(checkpoint_dir) if checkpoint_dir is not None else scratch
        trainer = _make_trainer(
            model, tokenizer, settings, plan, work_dir, (train_set, eval_set), [callback]
        )
        output = _run(trainer, resume_from)
        eval_loss = float(trainer.evaluate()["eval_loss"]) if eval_set is not None else None
        trainer.model.config.use_cache = use_cache  # saved configs keep the base's setting
        if settings.method == "full":
            _save_full(trainer, tokenizer, out_dir, plan)
        elif trainer.is_world_process_zero():
            _save_adapter(trainer.model, out_dir)
    trainable, total = _count_parameters(model)
    tokens = int(trainer.state.num_input_tokens_seen)
    train_seconds = float(output.metrics.get("train_runtime", 0.0))
    planned = int(trainer.state.max_steps)
    seconds = time.perf_counter() - started
    return TrainResult(
        output_dir=out_dir,
        train_loss=float(output.training_loss),
        final_loss=callback.last_loss,
        eval_loss=eval_loss,
        steps=int(output.global_step),
        epochs=float(trainer.state.epoch or 0.0),
        examples=len(train_set),
        train_tokens=tokens,
        seconds=seconds,
        tokens_per_second=tokens / train_seconds if train_seconds > 0 else 0.0,
        trainable_parameters=trainable,
        total_parameters=total,
        settings=settings,
        history=tuple(callback.history),
        stopped_early=settings.early_stopping is not None and int(output.global_step) < planned,
        resumed_from=resume_from,
        compute=plan.record(seconds, settings.gradient_checkpointing),
    )
