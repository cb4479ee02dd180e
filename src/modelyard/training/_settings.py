"""LoRA fine-tuning settings and result records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class LoraSettings(BaseModel):
    """Hyper-parameters of one LoRA fine-tuning run (validated, immutable, JSON-able).

    The defaults are tuned for the quickstart: the tiny base and ~400 rows, about
    125 steps on CPU (a few hundred distinct rows generalise far better than more
    epochs over fewer). For real bases lower ``learning_rate`` (1e-4..3e-4) and
    ``alpha`` (2 x r is usual). ``target_modules="all-linear"`` lets peft pick every linear
    layer except the output head, for architectures with other layer names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: int = Field(default=8, ge=1, description="LoRA rank")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: tuple[str, ...] | Literal["all-linear"] = Field(
        default=LLAMA_PROJECTIONS, description="module names to adapt, or 'all-linear'"
    )
    epochs: float = Field(default=5.0, gt=0, description="passes over the training rows")
    max_steps: int | None = Field(
        default=None, ge=1, description="optimizer steps; overrides epochs"
    )
    learning_rate: float = Field(default=3e-3, gt=0, description="peak learning rate")
    batch_size: int = Field(default=16, ge=1, description="rows per device per micro-batch")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of steps warming up"
    )
    seed: int = Field(default=0, description="seeds LoRA init, dropout and data order")
    max_seq_len: int = Field(default=256, ge=8, description="longest prompt+response in tokens")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LoraSettings:
        """Validate settings from a config file or flags, raising one clear ``ConfigError``."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "settings"
            raise ConfigError(
                f"invalid LoRA setting {field}: {first['msg']}",
                hint="See `LoraSettings` for the valid fields and ranges.",
                field=field,
            ) from exc


@dataclass(frozen=True)
class TrainResult:
    """What one ``train_lora`` run produced and how it went (for lineage and the CLI)."""

    adapter_dir: Path
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
    settings: LoraSettings
