"""LoRA fine-tuning of a base model on alpaca rows, with the Hugging Face Trainer.

``train_lora`` saves only the adapter (``adapter_config.json`` +
``adapter_model.safetensors``), so many tenants can share one base.
"""

from modelyard.training._dataset import IGNORE_INDEX, encode_row
from modelyard.training._settings import LLAMA_PROJECTIONS, LoraSettings, TrainResult
from modelyard.training._train import ProgressFn, train_lora

__all__ = [
    "IGNORE_INDEX",
    "LLAMA_PROJECTIONS",
    "LoraSettings",
    "ProgressFn",
    "TrainResult",
    "encode_row",
    "train_lora",
]
