"""Attach a trained LoRA adapter directory to a loaded base (plain ``peft``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.base._hf import quiet_progress
from modelyard.errors import ArtifactNotFound


def check_adapter_dir(directory: Path) -> str:
    """``directory`` as a string, once it is known to hold an adapter (``adapter_config.json``)."""
    if not (directory / "adapter_config.json").is_file():
        raise ArtifactNotFound(
            f"{directory} is not a LoRA adapter directory (no adapter_config.json)",
            hint="Point at the directory train_model wrote.",
            path=str(directory),
        )
    return str(directory)


def load_adapter(base_model: Any, adapter_dir: Path, *, adapter_name: str = "default") -> Any:
    """Attach a trained LoRA adapter to ``base_model`` for inference; returns the peft model.

    ``base_model`` is modified in place (LoRA layers are injected), so evaluate the
    bare base first, or use ``with peft_model.disable_adapter():`` for base outputs.
    """
    from peft import PeftModel

    with quiet_progress():
        model = PeftModel.from_pretrained(
            base_model,
            check_adapter_dir(adapter_dir),
            adapter_name=adapter_name,
            is_trainable=False,
        )
    model.eval()
    return model
