"""Loading the base for training as a ``TrainPlan`` says: its dtype, its attention
implementation, and for QLoRA the 4-bit NF4 weights (bitsandbytes, double quantization,
computing in the plan's precision), frozen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelyard.base import load_base
from modelyard.training import _varlen
from modelyard.training._plan import TrainPlan


def quantization_config(plan: TrainPlan) -> Any:
    """bitsandbytes' 4-bit NF4 with double quantization, computing in the plan's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=plan.compute_dtype,
    )


def load_options(plan: TrainPlan) -> dict[str, Any]:
    """What ``from_pretrained`` gets for this plan."""
    if plan.attention == _varlen.NAME:
        _varlen.register()
    options: dict[str, Any] = {"dtype": plan.load_dtype, "attn_implementation": plan.attention}
    if plan.quantized:
        options["quantization_config"] = quantization_config(plan)
        # quantized weights are placed at load (they cannot be moved after): each process
        # loads its copy onto its own GPU
        where: Any = int(os.environ.get("LOCAL_RANK", "0")) if plan.device.kind == "cuda" else "cpu"
        options["device_map"] = {"": where}
    return options


def load_for_training(base: str | Path, plan: TrainPlan) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``base`` loaded for ``plan``.

    A QLoRA base is frozen, and its weights that stay unquantized (the embedding, the
    norms, the output head) stay in the plan's dtype, as the frozen base of a LoRA run
    does. peft's ``prepare_model_for_kbit_training`` would cast them to fp32: the weights
    of benchmarks/gpu.py's 1 B model with a 32 k vocabulary then take 0.88 GiB, not 0.64
    (its bf16 base: 1.78), and the residual stream runs in fp32, which doubles its
    activations, while under autocast every matmul computes in the half dtype either way.
    Activation checkpointing is the Trainer's (``TrainPlan.trainer_args``), not enabled here.
    """
    model, tokenizer = load_base(base, load_options(plan))
    if plan.quantized:
        for parameter in model.parameters():
            parameter.requires_grad = False
    return model, tokenizer
