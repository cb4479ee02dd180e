"""The ``modelyard finetune`` YAML config: one file from raw data to a gated model version.

The key names are a public contract (see docs/finetune.md). Every section
rejects unknown keys, naming the key and the nearest valid one, so a typo such
as ``learning_rat`` fails before any work starts instead of being ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from modelyard.errors import ConfigError
from modelyard.store import check_name
from modelyard.training import LLAMA_PROJECTIONS, ConfigSection, TrainingOptions, TrainSettings


class _Section(ConfigSection):
    """A section of the config (unknown keys and ``true`` for a number refused)."""


class DataConfig(_Section):
    train: Path = Field(description="training rows: JSONL, JSON, CSV or Parquet")
    eval: Path | None = Field(default=None, description="held-out rows (else split from train)")
    format: Literal["alpaca", "chat", "text", "classification"] = "alpaca"
    eval_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    stratify: str | None = Field(default=None, description="field to stratify the split by")
    max_seq_len: int = Field(default=256, ge=8, description="longest prompt+response in tokens")
    name: str | None = Field(default=None, description="dataset name (default: file stem)")


class MethodConfig(_Section):
    type: Literal["lora", "full", "qlora"] = "lora"
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: list(LLAMA_PROJECTIONS)
    )


class TrainingConfig(TrainingOptions):
    """The ``training:`` section: ``TrainingOptions`` as declared by the trainer."""


class EvaluationConfig(_Section):
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"])
    gates: list[str | dict[str, str]] = Field(
        default_factory=list, description='e.g. "exact_match >= 0.9", "not_worse_than: champion"'
    )
    tolerance: float = Field(default=0.0, ge=0.0, description="slack for not_worse_than gates")
    max_new_tokens: int = Field(default=32, ge=1)
    compare_base: bool = Field(default=True, description="also score the base model")


class RegistryConfig(_Section):
    model: str
    tenant: str | None = None
    alias_on_pass: str | None = None
    description: str = ""

    # Names the store would refuse only after training: refused here, before anything runs.
    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return _name("model", value)

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, value: str | None) -> str | None:
        return None if value is None else _name("tenant", value)

    @field_validator("alias_on_pass")
    @classmethod
    def _alias_name(cls, value: str | None) -> str | None:
        return None if value is None else _name("alias", value)


def _name(kind: str, value: str) -> str:
    """``value`` if the store takes it as a ``kind`` name (else the store's reason)."""
    try:
        return check_name(kind, value)
    except ConfigError as exc:
        raise ValueError(exc.message) from None


class TrackingConfig(_Section):
    mlflow_uri: str | None = None
    experiment: str = "modelyard"


class FinetuneConfig(_Section):
    base_model: str = Field(description="local model directory or Hugging Face id")
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("base_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model directory or a Hugging Face id")
        return value.strip()

    def inputs_digest(self, data_digest: str) -> str:
        """The identity of a run of this config on rows of ``data_digest``: where its
        checkpoints live, so ``--resume`` finds them (``_pipeline.checkpoint_dir``)."""
        payload = json.dumps(
            {"config": self.model_dump(mode="json"), "data": data_digest}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def train_settings(self) -> TrainSettings:
        """The trainer's settings (``qlora`` trains a LoRA adapter on a 4-bit base)."""
        method = self.method
        target: tuple[str, ...] | Literal["all-linear"] = (
            method.target_modules
            if isinstance(method.target_modules, str)
            else tuple(method.target_modules)
        )
        return TrainSettings(
            method=method.type,
            r=method.r,
            alpha=method.alpha,
            dropout=method.dropout,
            target_modules=target,
            max_seq_len=self.data.max_seq_len,
            **self.training.model_dump(),
        )

    def resolved(self, root: Path) -> FinetuneConfig:
        """Relative data paths (and a relative local base) resolved against ``root``."""
        data = self.data.model_copy(
            update={
                "train": _under(root, self.data.train),
                "eval": _under(root, self.data.eval) if self.data.eval else None,
            }
        )
        base = self.base_model
        local = (root / base).exists() or ("/" in base and (root / base).parent.is_dir())
        if base.startswith((".", "~")) or local:
            base = str(_under(root, Path(base)))
        return self.model_copy(update={"data": data, "base_model": base})


def _under(root: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The config section (model class) that holds the key at ``loc``."""
    model: type[BaseModel] = FinetuneConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def _explain(exc: ValidationError) -> ConfigError:
    """One clear error for the first problem: which key, why, and what would be valid."""
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(part) for part in loc) or "config"
    if first["type"] == "extra_forbidden":
        section = _section_at(loc)
        valid = sorted(section.model_fields)
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"Did you mean {near[0]!r}? " if near else ""
        return ConfigError(
            f"unknown config key {key!r}",
            hint=f"{hint}Valid keys here: {', '.join(valid)}.",
            field=key,
        )
    if first["type"] == "missing":
        return ConfigError(
            f"config key {key!r} is required", hint="See docs/finetune.md.", field=key
        )
    message = str(first["msg"]).removeprefix("Value error, ")
    return ConfigError(
        f"invalid config value for {key!r}: {message}",
        hint="See docs/finetune.md for the valid values.",
        field=key,
    )


def parse_config(values: Any) -> FinetuneConfig:
    """Validate a config mapping (raising one clear ``ConfigError``)."""
    if not isinstance(values, dict):
        raise ConfigError(
            "a finetune config must be a YAML mapping of sections",
            hint="Start from the example in docs/finetune.md.",
        )
    try:
        return FinetuneConfig.model_validate(values)
    except ValidationError as exc:
        raise _explain(exc) from exc


class _DuplicateKey(Exception):
    def __init__(self, key: str, first: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first, self.line = key, first, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (two ``training:``
    sections, say), where PyYAML would keep the last and drop the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            if isinstance(key, str):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path) -> FinetuneConfig:
    """Read and validate a YAML config; relative paths are taken from the file's directory."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist", field="config") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start + 1} cannot be decoded)",
            hint="Save the file as UTF-8.",
            field="config",
        ) from exc
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(
            f"config file {path} sets {exc.key!r} twice (lines {exc.first} and {exc.line})",
            hint="Keep one of them: YAML would silently use the last.",
            field=exc.key,
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"config file {path} is not valid YAML{where}",
            hint="Check the indentation and quoting there.",
        ) from exc
    return parse_config(values).resolved(path.resolve().parent)
