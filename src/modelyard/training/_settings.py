"""Fine-tuning settings (LoRA or full) and result records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from modelyard.errors import ConfigError

LLAMA_PROJECTIONS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""Every linear projection of a Llama-style block: the usual full-coverage LoRA target."""


class ConfigSection(BaseModel):
    """A section of a YAML config: frozen, unknown keys refused, and YAML's ``true`` and
    ``false`` refused where a number is meant (pydantic takes ``true`` for 1, so
    ``r: true`` trained a rank-1 adapter without a word)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = get_args(cls.model_fields[info.field_name].annotation)
            kinds = kinds or (cls.model_fields[info.field_name].annotation,)
            if bool not in kinds and (int in kinds or float in kinds):
                raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


class TrainingOptions(ConfigSection):
    """How a run trains, whatever it trains: length, optimizer, schedule, batches, seed,
    checkpoints and early stopping. Declared once: ``TrainSettings`` extends it with
    what to train, and the ``training:`` section of a finetune config is exactly it.
    """

    epochs: float = Field(
        default=5.0, gt=0, allow_inf_nan=False, description="passes over the training rows"
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="optimizer steps; overrides epochs"
    )
    learning_rate: float = Field(
        default=3e-3, gt=0, allow_inf_nan=False, description="peak learning rate"
    )
    batch_size: int = Field(default=16, ge=1, description="rows per device per micro-batch")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of steps warming up"
    )
    scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = Field(default="linear", description="learning-rate schedule after warmup")
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="seeds LoRA init, dropout and data order"
    )
    packing: bool = Field(
        default=False,
        description="padding-free batches: rows concatenated, attention kept within each row",
    )
    save_every: int | None = Field(
        default=None, ge=1, description="write a resumable checkpoint every N optimizer steps"
    )
    keep_checkpoints: int = Field(
        default=2,
        ge=1,
        description="checkpoints kept on disk (the newest; early stopping also keeps the best)",
    )
    eval_every: int | None = Field(
        default=None, ge=1, description="eval loss every N steps (early stopping; default 10)"
    )
    early_stopping: int | None = Field(
        default=None,
        ge=1,
        description="stop after N evaluations without a lower eval loss (needs eval rows)",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="auto: bf16 autocast on GPUs that have it, fp16 with a loss scaler on "
        "older GPUs, fp32 on CPU",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="recompute activations in the backward pass: less memory"
    )
    attention: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa", description="attention implementation (flash_attention_2 if installed)"
    )
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto",
        description="with several processes: auto is FSDP for full fine-tuning, DDP otherwise",
    )


class TrainSettings(TrainingOptions):
    """Hyper-parameters of one fine-tuning run (validated, immutable, JSON-able).

    ``method="lora"`` trains a LoRA adapter (``r``, ``alpha``, ``dropout``,
    ``target_modules``) and saves only the adapter; ``method="qlora"`` trains the
    same adapter on a base loaded in 4 bits (CUDA and bitsandbytes only);
    ``method="full"`` trains and saves every weight. The defaults are tuned for the
    quickstart: the tiny base and ~400 rows, about 125 steps on CPU (a few hundred
    distinct rows generalise far better than more epochs over fewer). For real bases lower
    ``learning_rate`` (1e-4..3e-4 for LoRA, 1e-5..5e-5 for full) and ``alpha``
    (2 x r is usual). ``target_modules="all-linear"`` lets peft pick every
    linear layer except the output head, for architectures with other names.
    """

    method: Literal["lora", "qlora", "full"] = Field(default="lora", description="what to train")
    r: int = Field(default=8, ge=1, description="LoRA rank")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: tuple[str, ...] | Literal["all-linear"] = Field(
        default=LLAMA_PROJECTIONS, description="module names to adapt, or 'all-linear'"
    )
    max_seq_len: int = Field(default=256, ge=8, description="longest prompt+response in tokens")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Validate settings from a config file or flags, raising one clear ``ConfigError``."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "settings"
            raise ConfigError(
                f"invalid training setting {field}: {first['msg']}",
                hint="See docs/finetune.md for the valid fields and ranges.",
                field=field,
            ) from exc


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced and how it went (for lineage and the CLI).

    ``output_dir`` holds an adapter (``method="lora"``/``"qlora"``) or a whole model with its
    tokenizer (``method="full"``). ``history`` has one entry per logged step.
    """

    output_dir: Path
    train_loss: float
    final_loss: float
    eval_loss: float | None
    steps: int
    epochs: float
    examples: int
    train_tokens: int
    seconds: float
    tokens_per_second: float
    trainable_parameters: int
    total_parameters: int
    settings: TrainSettings
    history: tuple[dict[str, float], ...] = ()
    stopped_early: bool = False
    resumed_from: str | None = None
    compute: Mapping[str, Any] = field(default_factory=dict)
    """Where and how it trained: device, precision, attention, seconds, GPU-hours, peak
    memory (see ``modelyard.training.compute_record``)."""

    @property
    def adapter_dir(self) -> Path:
        """Where a LoRA run saved its adapter (same as ``output_dir``)."""
        return self.output_dir
