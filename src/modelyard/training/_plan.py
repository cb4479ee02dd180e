"""Where a run trains and how, decided before anything loads: device, precision, attention,
the 4-bit base of QLoRA, and DDP or FSDP across processes.

``plan_training`` turns the settings into a ``TrainPlan`` for this machine, or refuses with
one clear ``ConfigError`` (fp16 or QLoRA without CUDA, bf16 on a GPU without it,
flash-attention that is not installed), so a config that cannot run here fails at
``--check`` rather than after the base has loaded.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass
from typing import Any, Literal

import torch

from modelyard.errors import ConfigError
from modelyard.training import _varlen
from modelyard.training._settings import TrainSettings

Precision = Literal["bf16", "fp16", "fp32"]
DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


@dataclass(frozen=True)
class Device:
    """The accelerator this process trains on: ``cpu`` or ``cuda`` (its name and how many)."""

    kind: Literal["cpu", "cuda"]
    name: str
    count: int
    bf16: bool
    """Whether bf16 autocast runs here (CUDA: Ampere or newer; CPU: always, if slowly)."""


def this_device() -> Device:
    """CUDA when torch sees a GPU, else the CPU."""
    if torch.cuda.is_available():
        return Device(
            "cuda",
            torch.cuda.get_device_name(0),
            torch.cuda.device_count(),
            bool(torch.cuda.is_bf16_supported()),
        )
    return Device("cpu", platform.processor() or platform.machine() or "cpu", 0, True)


@dataclass(frozen=True)
class TrainPlan:
    """What ``plan_training`` decided (recorded in the run and the version's lineage)."""

    device: Device
    precision: Precision
    """The autocast dtype (bf16, fp16 with a loss scaler) or plain fp32."""
    load_dtype: torch.dtype
    """What the base weights load as: the half dtype for a frozen LoRA base, fp32 master
    weights for full fine-tuning (autocast computes in the half dtype)."""
    attention: str
    """The implementation loaded: the config's, or ``varlen`` for packed rows on a GPU in
    half precision where the config says ``sdpa`` (see ``_varlen``)."""
    quantized: bool
    """The base loads in 4-bit NF4 with double quantization (QLoRA)."""
    world_size: int
    distributed: Literal["ddp", "fsdp"] | None
    """How several processes share the work (None for one process)."""

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def pad_multiple(self) -> int | None:
        """Batches pad to a multiple of 8 tokens on a GPU in half precision, the shapes its
        tensor cores take whole (padding is masked, so a real token's loss is unchanged);
        None elsewhere, where a batch pads to its longest row as before."""
        return 8 if self.device.kind == "cuda" and self.precision != "fp32" else None

    def trainer_args(self, gradient_checkpointing: bool) -> dict[str, Any]:
        """The ``TrainingArguments`` for precision, placement, checkpointing and sharding.

        FSDP shards every weight across the processes (``FULL_STATE_DICT`` saves one
        ordinary model) and checkpoints activations itself; without FSDP, transformers'
        non-reentrant activation checkpointing (no input-gradient hook needed with LoRA).
        """
        args: dict[str, Any] = {
            "bf16": self.precision == "bf16",
            "fp16": self.precision == "fp16",
            "use_cpu": self.device.kind == "cpu",
        }
        if self.distributed == "fsdp":
            args["fsdp"] = True
            args["fsdp_config"] = {
                "version": 2,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's decoder layers
                "state_dict_type": "FULL_STATE_DICT",
                "activation_checkpointing": gradient_checkpointing,
            }
        elif gradient_checkpointing:
            args["activation_checkpointing"] = True
            args["activation_checkpointing_kwargs"] = {"use_reentrant": False}
        if self.distributed == "ddp":
            args["ddp_find_unused_parameters"] = False
        return args

    def record(self, seconds: float, gradient_checkpointing: bool) -> dict[str, Any]:
        """What the run used, as JSON (for the run and the lineage): the resolved precision
        (it changes the bytes), and GPU-hours as wall time x GPUs (``None`` on CPU, where no
        GPU was held); peak memory is this process's CUDA peak (``None`` on CPU)."""
        gpus = self.world_size if self.device.kind == "cuda" else 0
        cuda = self.device.kind == "cuda" and torch.cuda.is_available()
        return {
            "device": self.device.kind,
            "device_name": self.device.name,
            "precision": self.precision,
            "base_dtype": "nf4" if self.quantized else str(self.load_dtype).removeprefix("torch."),
            "attention": self.attention,
            "gradient_checkpointing": gradient_checkpointing,
            "processes": self.world_size,
            "distributed": self.distributed,
            "gpus": gpus,
            "seconds": round(seconds, 3),
            "gpu_hours": round(seconds * gpus / 3600, 6) if gpus else None,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
        }


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE`` under torchrun or accelerate; else 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _precision(settings: TrainSettings, device: Device) -> Precision:
    requested = settings.precision
    if requested == "auto":
        if device.kind == "cpu":
            return "fp32"
        return "bf16" if device.bf16 else "fp16"
    if requested == "fp16" and device.kind == "cpu":
        raise ConfigError(
            "training.precision 'fp16' needs a CUDA GPU (its loss scaler runs there), and "
            "this machine has none",
            hint="Use precision 'auto' (fp32 here) or 'bf16' on CPU.",
            field="training.precision",
        )
    if requested == "bf16" and not device.bf16:
        raise ConfigError(
            f"training.precision 'bf16' is not supported by this GPU ({device.name})",
            hint="Use precision 'auto' (fp16 with a loss scaler here) or 'fp16'.",
            field="training.precision",
        )
    return requested


def _check_qlora(device: Device) -> None:
    missing = [
        what
        for what, ok in (
            ("a CUDA GPU", device.kind == "cuda"),
            ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes") is not None),
        )
        if not ok
    ]
    if missing:
        raise ConfigError(
            f"method.type 'qlora' needs {' and '.join(missing)}, and this machine lacks it: "
            "the 4-bit NF4 base of QLoRA trains on CUDA only",
            hint="Use method.type 'lora' here (the same adapter format), or run on a GPU "
            "machine with pip install 'modelyard[gpu]'.",
            field="method.type",
        )


def _check_attention(attention: str, device: Device) -> None:
    if attention != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None or device.kind != "cuda":
        lacks = "a CUDA GPU" if device.kind != "cuda" else "the flash-attn package"
        raise ConfigError(
            f"training.attention 'flash_attention_2' needs {lacks}, and this machine lacks it",
            hint="Use attention 'sdpa' (PyTorch's fused attention, the default) or install "
            "flash-attn on the GPU machine.",
            field="training.attention",
        )


def _distributed(settings: TrainSettings, size: int) -> Literal["ddp", "fsdp"] | None:
    if size <= 1:
        return None
    if settings.distributed != "auto":
        if settings.distributed == "fsdp" and settings.method == "qlora":
            raise ConfigError(
                "training.distributed 'fsdp' cannot shard a 4-bit QLoRA base here",
                hint="Use distributed 'ddp' (or 'auto') with method.type 'qlora'.",
                field="training.distributed",
            )
        return settings.distributed
    return "fsdp" if settings.method == "full" else "ddp"


def plan_training(settings: TrainSettings, device: Device | None = None) -> TrainPlan:
    """The plan for ``settings`` on ``device`` (default: this machine), or a ``ConfigError``."""
    device = device or this_device()
    precision = _precision(settings, device)
    if settings.method == "qlora":
        _check_qlora(device)
    _check_attention(settings.attention, device)
    half = precision != "fp32"
    attention: str = settings.attention
    if attention == "sdpa" and settings.packing and device.kind == "cuda" and half:
        # packed rows on a GPU: each example's own triangle, not a masked whole row
        attention = _varlen.NAME if _varlen.available() else attention
    # A frozen base can sit in the half dtype (half the memory; peft keeps the adapter in
    # fp32); trained weights stay fp32 masters under autocast.
    load_dtype = DTYPES[precision] if half and settings.method != "full" else torch.float32
    size = world_size()
    return TrainPlan(
        device=device,
        precision=precision,
        load_dtype=load_dtype,
        attention=attention,
        quantized=settings.method == "qlora",
        world_size=size,
        distributed=_distributed(settings, size),
    )
