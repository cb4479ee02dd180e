"""Greedy batched generation, and several adapters on one base (``load_adapter`` is in base)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modelyard.base import check_adapter_dir, eos_token_ids, load_adapter, quiet_progress
from modelyard.errors import ConfigError

BASE_ADAPTER = "__base__"
"""Adapter name that selects the bare base model in a mixed batch (peft's convention)."""


def _cut_at_eos(ids: list[int], eos_ids: frozenset[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
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
    eos_ids = eos_token_ids(model, tokenizer)
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
            model.load_adapter(check_adapter_dir(directory), adapter_name=name, is_trainable=False)
    model.eval()
    return model
