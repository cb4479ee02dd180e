"""Perplexity of a model on the reference answers, tokenized exactly as training does.

Each row is encoded like ``modelyard.training.encode_row``: the prompt with the
tokenizer's special tokens, then the reference without them, then eos; only the
reference and eos tokens are scored. Perplexity is ``exp`` of the mean negative
log-likelihood over all scored tokens of all rows (a token-weighted mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional

from modelyard.errors import ConfigError, DataError
from modelyard.evaluation._render import Render, render_rows, renderer_for

_IGNORE = -100
"""Label value cross-entropy skips (the same as ``modelyard.training.IGNORE_INDEX``)."""

_MAX_LOG = 709.0
"""Above this ``math.exp`` overflows a float; such a perplexity is reported as infinity."""


def encode_pair(tokenizer: Any, prompt: str, reference: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of ``prompt + reference + eos``, the prompt masked out.

    The same token ids as training's ``encode_row``: prompt and reference are
    tokenized separately, so the prompt tokens are the ones generation sees.
    """
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    answer_ids = list(tokenizer(reference, add_special_tokens=False)["input_ids"])
    answer_ids.append(int(tokenizer.eos_token_id))
    return prompt_ids + answer_ids, [_IGNORE] * len(prompt_ids) + answer_ids


def max_seq_len_of(model: Any, max_seq_len: int | None) -> int | None:
    """The longest sequence ``model`` takes: ``max_seq_len`` when given, else its
    ``max_position_embeddings`` (None when it has none)."""
    if max_seq_len is not None:
        return max_seq_len
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) else None


def _encode_all(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], limit: int | None
) -> list[tuple[list[int], list[int]]]:
    encoded = []
    for number, (prompt, reference) in enumerate(pairs, start=1):
        ids, labels = encode_pair(tokenizer, prompt, reference)
        if limit is not None and len(ids) > limit:
            raise DataError(
                f"row {number} is {len(ids)} tokens long, over the limit of {limit}",
                hint="Shorten the example, or drop it from the evaluation set.",
                row=number,
            )
        encoded.append((ids, labels))
    return encoded


def _batch_nll(model: Any, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> float:
    """Summed NLL of the scored tokens of one right-padded batch."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), _IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, row_labels) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(row_labels)
        mask[i, : len(ids)] = 1
    logits = model(
        input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)
    ).logits
    # Position t predicts token t+1; float32 so half-precision logits do not lose the sum.
    shifted = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    return float(functional.cross_entropy(shifted, targets, ignore_index=_IGNORE, reduction="sum"))


def perplexity_of_pairs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_seq_len: int | None = None,
) -> float:
    """Perplexity of ``(prompt, reference)`` pairs; see ``perplexity``."""
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    if not pairs:
        raise DataError("perplexity of zero examples is undefined", hint="Give at least one row.")
    encoded = _encode_all(tokenizer, pairs, max_seq_len_of(model, max_seq_len))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll = 0.0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            total_nll += _batch_nll(model, encoded[start : start + batch_size], int(pad_id))
    # The first token has no context and is never scored (it is part of the prompt).
    scored = sum(sum(label != _IGNORE for label in labels[1:]) for _, labels in encoded)
    if scored == 0:
        raise DataError("no reference tokens to score", hint="Give rows with non-empty answers.")
    mean_nll = total_nll / scored
    return math.inf if mean_nll > _MAX_LOG else math.exp(mean_nll)


def perplexity(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    format: str = "alpaca",
    render: Render | None = None,
    batch_size: int = 8,
    max_seq_len: int | None = None,
) -> float:
    """``exp(mean token NLL)`` of each row's reference answer (and eos) given its prompt.

    Rows are rendered as in ``evaluate_model`` (the training template of
    ``format``, or ``render``) and tokenized as training tokenizes them; prompt
    tokens are context only, so for ``text`` rows every token is scored. Batches are
    right-padded and run under ``torch.no_grad()``; put the model in eval mode
    first (``load_base`` and ``load_adapter`` return it so). A row longer than
    ``max_seq_len`` (default: the model's ``max_position_embeddings``) is a
    ``DataError``. Lower is better; 1.0 means every reference token was certain.
    """
    pairs = render_rows(rows, renderer_for(format, render, tokenizer))
    return perplexity_of_pairs(
        model, tokenizer, pairs, batch_size=batch_size, max_seq_len=max_seq_len
    )
