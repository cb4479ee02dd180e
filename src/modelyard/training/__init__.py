"""Fine-tuning of a base model with the Hugging Face Trainer: LoRA or QLoRA adapters, or
full weights.

``train_model`` renders rows with a prompt template (alpaca, chat, classification,
text), masks the prompt out of the loss, and saves an adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, so many tenants can
share one base) or a whole model. ``plan_training`` decides the device, precision,
attention and sharding first, and refuses what this machine cannot run.
"""

from modelyard.training._dataset import IGNORE_INDEX, SupervisedDataset, encode_row
from modelyard.training._plan import Device, TrainPlan, plan_training, this_device
from modelyard.training._settings import (
    LLAMA_PROJECTIONS,
    ConfigSection,
    TrainingOptions,
    TrainResult,
    TrainSettings,
)
from modelyard.training._train import LogFn, ProgressFn, last_checkpoint, train_model

__all__ = [
    "IGNORE_INDEX",
    "LLAMA_PROJECTIONS",
    "ConfigSection",
    "Device",
    "LogFn",
    "ProgressFn",
    "SupervisedDataset",
    "TrainPlan",
    "TrainResult",
    "TrainSettings",
    "TrainingOptions",
    "encode_row",
    "last_checkpoint",
    "plan_training",
    "this_device",
    "train_model",
]
