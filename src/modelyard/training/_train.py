"""LoRA fine-tuning with the Hugging Face ``Trainer``.

The loop is ``transformers.Trainer`` on a ``peft`` model, not a hand-written
one, so the same code runs on one CPU, one GPU, or under ``accelerate launch`` /
``torchrun`` without changes. modelyard adds the response-only loss masking,
progress reporting, atomic adapter saving, and clear errors.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    DataCollatorForSeq2Seq,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from modelyard.base import load_base
from modelyard.base._fs import check_out_dir, publish_dir
from modelyard.base._hf import quiet_progress
from modelyard.errors import TrainingError
from modelyard.training._dataset import IGNORE_INDEX, SupervisedDataset
from modelyard.training._settings import LoraSettings, TrainResult

ProgressFn = Callable[[int, int, float], None]
"""``progress(step, total_steps, loss)``, called after every optimizer step."""


class _ProgressCallback(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here
    """Forward every logged training loss to a ``progress(step, total, loss)`` function."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self._progress = progress
        self.last_loss = math.nan

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any
    ) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            if self._progress is not None:
                self._progress(int(state.global_step), int(state.max_steps), self.last_loss)


def _lora_model(model: Any, settings: LoraSettings) -> Any:
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


def _training_args(settings: LoraSettings, work_dir: str) -> Any:
    """Trainer arguments: no checkpoints, no trackers, no tqdm; CPU when there is no CUDA."""
    return TrainingArguments(
        output_dir=work_dir,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=settings.warmup_ratio,
        weight_decay=0.0,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )


def _count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of a peft model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return int(trainable), int(total)


def _run(trainer: Any) -> Any:
    """``trainer.train()`` with failures turned into one-line ``TrainingError``s."""
    try:
        output = trainer.train()
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"training failed: {str(exc).strip().splitlines()[0]}") from exc
    if not math.isfinite(output.training_loss):
        raise TrainingError(
            "training diverged (the loss is not a finite number)",
            hint="Lower learning_rate or check the data.",
        )
    return output


def _make_trainer(
    model: Any,
    tokenizer: Any,
    settings: LoraSettings,
    work_dir: str,
    datasets: tuple[SupervisedDataset, SupervisedDataset | None],
    callback: _ProgressCallback,
) -> Any:
    """A ``Trainer`` that pads labels with ``IGNORE_INDEX`` and reports only via ``callback``."""
    trainer = Trainer(
        model=model,
        args=_training_args(settings, work_dir),
        train_dataset=datasets[0],
        eval_dataset=datasets[1],
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True
        ),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm would print raw log dicts
    return trainer


def _save_adapter(model: Any, out_dir: Path) -> None:
    """Save only the adapter, with a reproducible config and without peft's model card stub.

    peft writes ``target_modules`` in set order (it varies between processes) and
    a boilerplate README; sorting the one and dropping the other makes two runs
    with the same inputs produce identical files.
    """
    with publish_dir(out_dir) as staging, quiet_progress():
        model.save_pretrained(str(staging), safe_serialization=True)
        (staging / "README.md").unlink(missing_ok=True)
        config_path = staging / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )


def train_lora(
    base: str | Path,
    train_rows: Sequence[Mapping[str, str]],
    out_dir: Path,
    settings: LoraSettings,
    *,
    eval_rows: Sequence[Mapping[str, str]] | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter of ``base`` on alpaca rows and save only the adapter.

    The loss covers only the response tokens (and the closing eos), so the adapter
    learns to answer, not to echo prompts. ``out_dir`` receives
    ``adapter_config.json`` and ``adapter_model.safetensors``; the same base, rows
    and settings give byte-identical files on the same hardware and software.
    With ``eval_rows`` the result also reports the held-out loss.
    """
    started = time.perf_counter()
    check_out_dir(out_dir, overwrite)
    model, tokenizer = load_base(base)
    tokenizer.padding_side = "right"
    train_set = SupervisedDataset(tokenizer, train_rows, settings.max_seq_len)
    eval_set = SupervisedDataset(tokenizer, eval_rows, settings.max_seq_len) if eval_rows else None
    peft_model = _lora_model(model, settings)
    callback = _ProgressCallback(progress)
    with tempfile.TemporaryDirectory(prefix="modelyard-trainer-") as work_dir:
        trainer = _make_trainer(
            peft_model, tokenizer, settings, work_dir, (train_set, eval_set), callback
        )
        output = _run(trainer)
        eval_loss = float(trainer.evaluate()["eval_loss"]) if eval_set is not None else None
        if trainer.is_world_process_zero():
            _save_adapter(trainer.model, out_dir)
    trainable, total = _count_parameters(peft_model)
    tokens = int(trainer.state.num_input_tokens_seen)
    train_seconds = float(output.metrics.get("train_runtime", 0.0))
    return TrainResult(
        adapter_dir=out_dir,
        train_loss=float(output.training_loss),
        final_loss=callback.last_loss,
        eval_loss=eval_loss,
        steps=int(output.global_step),
        epochs=float(trainer.state.epoch or 0.0),
        examples=len(train_set),
        train_tokens=tokens,
        seconds=time.perf_counter() - started,
        tokens_per_second=tokens / train_seconds if train_seconds > 0 else 0.0,
        trainable_parameters=trainable,
        total_parameters=total,
        settings=settings,
    )
