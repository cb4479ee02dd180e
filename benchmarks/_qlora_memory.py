"""QLoRA's memory against LoRA's, for benchmarks/gpu.py: on the benchmark's 1 B model and on
a 3 B one, where the base's weights are a larger share of what training holds.

Per model:

- the weights' bytes once loaded for training (LoRA: the frozen base in bf16; QLoRA: 4-bit
  NF4 with its quantization constants, the embedding, norms and head in bf16), counted from
  the tensors, so it is measured on CPU too wherever bitsandbytes is installed;
- the peak GPU memory of training with activation checkpointing on both sides (as QLoRA is
  run: its point is a large base on a small GPU) and, for QLoRA, without it (CUDA only).
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from modelyard.training import TrainSettings, plan_training
from modelyard.training._load import load_for_training

_GIB = 1024**3

Run = Callable[[Path, Sequence[dict[str, str]], TrainSettings, Path], dict]


def weights_gib(base: Path, quantized: bool) -> float:
    """The bytes of ``base``'s weights as training loads them (bf16, or QLoRA's 4-bit), in GiB:
    parameters, buffers, and the quantization constants bitsandbytes keeps beside them."""
    plan = replace(plan_training(TrainSettings(precision="bf16")), quantized=quantized)
    model, _ = load_for_training(base, plan)
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        while state is not None:  # double quantization: the constants' own constants
            tensors += [t for t in (state.absmax, state.code) if torch.is_tensor(t)]
            state = getattr(state, "state2", None)
    total = sum(t.numel() * t.element_size() for t in tensors)
    del model
    gc.collect()
    return total / _GIB


def why_no_qlora() -> str | None:
    """Why QLoRA cannot train here (it needs CUDA and bitsandbytes), or None."""
    if not torch.cuda.is_available():
        return "QLoRA trains on a CUDA GPU only"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA needs bitsandbytes (pip install 'modelyard[gpu]')"
    return None


def compare(
    base: Path, rows: Sequence[dict[str, str]], settings: TrainSettings, work: Path, run: Run
) -> dict[str, Any]:
    """QLoRA against LoRA on ``base``: weights (where bitsandbytes is) and training peaks."""
    result: dict[str, Any] = {}
    if importlib.util.find_spec("bitsandbytes") is not None:
        lora, qlora = weights_gib(base, quantized=False), weights_gib(base, quantized=True)
        result["weights_gib"] = {"lora": lora, "qlora": qlora}
        result["weights_ratio"] = qlora / lora
    skipped = why_no_qlora()
    if skipped is not None:
        result["skipped"] = skipped
        return result
    checkpointed = settings.model_copy(update={"gradient_checkpointing": True})
    peaks = {
        "lora": run(base, rows, checkpointed, work)["peak_gib"],
        "qlora": run(base, rows, checkpointed.model_copy(update={"method": "qlora"}), work)[
            "peak_gib"
        ],
        "qlora_no_checkpointing": run(base, rows, settings.model_copy(update={"method": "qlora"}),
                                      work)["peak_gib"],
    }  # fmt: skip
    result["peak_gib"] = peaks
    result["ratio"] = peaks["qlora"] / peaks["lora"]
    return result
