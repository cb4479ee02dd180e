"""Greedy batched generation, and loading adapters onto a base for evaluation or serving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from modelyard.base._hf import quiet_progress
from modelyard.errors import ArtifactNotFound, ConfigError

BASE_ADAPTER = "__base__"
"""Adapter name that selects the bare base model in a mixed batch (peft's convention)."""


def _cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a generation: the tokenizer's eos and the model's (may be a list)."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    adapter_names: Sequence[str] | None,
) -> list[str]:
    # Left padding, so every prompt ends where generation starts. Passed per call
    # rather than set on the tokenizer, which a server shares between requests.
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    batch = batch.to(model.device)
    extra: dict[str, Any] = {"adapter_names": list(adapter_names)} if adapter_names else {}
    with torch.inference_mode():
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
    new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
    eos_ids = _eos_ids(model, tokenizer)
    texts = (
        tokenizer.decode(_cut_at_eos(ids, eos_ids), skip_special_tokens=True) for ids in new_tokens
    )
    return [text.strip() for text in texts]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    adapter_names: Sequence[str] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts``: only the new text, cut at the first eos, stripped.

    Stripping drops the leading space many tokenizers decode before an answer.
    Prompts are batched with left padding. With a peft model holding several
    adapters, ``adapter_names`` (one per prompt; ``BASE_ADAPTER`` for the bare
    base) serves different tenants in the same batch.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("max_new_tokens and batch_size must be at least 1")
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ConfigError(f"{len(adapter_names)} adapter names for {len(prompts)} prompts")
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        names = adapter_names[start : start + batch_size] if adapter_names else None
        outputs.extend(
            _generate_batch(
                model, tokenizer, prompts[start : start + batch_size], max_new_tokens, names
            )
        )
    return outputs


def _adapter_dir(adapter_dir: Path) -> str:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ArtifactNotFound(
            f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)",
            hint="Point at the directory train_model wrote.",
            path=str(adapter_dir),
        )
    return str(adapter_dir)


def load_adapter(base_model: Any, adapter_dir: Path, *, adapter_name: str = "default") -> Any:
    """Attach a trained LoRA adapter to ``base_model`` for inference; returns the peft model.

    ``base_model`` is modified in place (LoRA layers are injected), so evaluate the
    bare base first, or use ``with peft_model.disable_adapter():`` for base outputs.
    """
    with quiet_progress():
        model = PeftModel.from_pretrained(
            base_model, _adapter_dir(adapter_dir), adapter_name=adapter_name, is_trainable=False
        )
    model.eval()
    return model


def load_adapters(base_model: Any, adapters: Mapping[str, Path]) -> Any:
    """Attach several named adapters to one base (multi-tenant serving).

    Select per request with ``generate(..., adapter_names=[...])``; no weights are
    merged, so the base stays shared and ``BASE_ADAPTER`` still reaches it.
    """
    if not adapters:
        raise ConfigError("no adapters to load")
    if BASE_ADAPTER in adapters:
        raise ConfigError(f"{BASE_ADAPTER!r} is reserved for the bare base model")
    items = list(adapters.items())
    first_name, first_dir = items[0]
    model = load_adapter(base_model, first_dir, adapter_name=first_name)
    for name, directory in items[1:]:
        with quiet_progress():
            model.load_adapter(_adapter_dir(directory), adapter_name=name, is_trainable=False)
    model.eval()
    return model
