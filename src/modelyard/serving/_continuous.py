"""Continuous batching for greedy requests: rows join and leave a running batch between steps.

``DecodeSession`` decodes its rows one token per step with one shared KV cache
(a transformers ``DynamicCache``), without ``generate``: the engine's scheduler
``admit``s requests whenever there is room (their prompts are prefilled together,
left-padded, and their caches merged into the batch's, padded on the left to a
common length), and each row leaves as soon as it ends (its ``max_tokens``, end
of sequence, a stop string, or its client leaving), so a request arriving while
others are being decoded starts at the next step instead of after the whole
batch. Every row has its own adapter slot (``MultiLora.route``, re-routed when
the rows change) and its own position ids, so its tokens are those of the same
request decoded alone, up to float rounding from batching.

Only greedy decoding with a plain ``generation_config`` runs here (no
repetition penalty, suppressed or forced tokens, ...), on models whose cache
layers are all full attention (``continuous_supported``); the rest runs through
``run_batch`` (one ``generate`` per batch).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional

from modelyard.serving._batching import PendingRequest, Row, _decoder
from modelyard.serving._multilora import MultiLora

# generation_config fields that make greedy decoding more than an argmax (their neutral values)
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
}


def continuous_supported(model: Any) -> bool:
    """Whether ``model`` can be decoded by a ``DecodeSession`` (else: ``generate``)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "generation_config", None)
    if config is not None:
        for name, neutral in _NEUTRAL.items():
            if getattr(config, name, None) not in neutral:
                return False
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # an architecture transformers builds no dynamic cache for
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class DecodeSession:
    """Greedy rows of one base decoded together, step by step; rows come and go."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        lora: MultiLora,
        eos_ids: frozenset[int],
        pad_token_id: int,
        tokenizer_lock: threading.Lock,
    ) -> None:
        self._model = model
        self._lora = lora
        self._eos_ids = eos_ids
        self._pad = pad_token_id
        self._decode = _decoder(tokenizer, tokenizer_lock)
        self.rows: list[Row] = []
        self.slots: list[int] = []
        self._generated: list[int] = []  # tokens generated per row
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, cache length] 1 = real token
        self._positions: torch.Tensor | None = None  # [rows] position of the next input token
        self._last: torch.Tensor | None = None  # [rows] the last token of each row
        self._routed: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, requests: Sequence[PendingRequest], slots: Sequence[int]) -> None:
        """Prefill ``requests`` (row ``i`` on adapter slot ``slots[i]``) and add them."""
        from transformers import DynamicCache

        device = self._model.device
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.tensor(
            [[self._pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests],
            device=device,
        )
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
            device=device,
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._model.config)
        self._route(list(slots))
        logits = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        tokens = logits[:, -1, :].argmax(-1)
        self._merge(cache, mask, mask.sum(-1))
        rows = [Row(r, self._decode, self._eos_ids) for r in requests]
        self.rows.extend(rows)
        self.slots.extend(slots)
        self._generated.extend([0] * len(rows))
        self._last = tokens if self._last is None else torch.cat([self._last, tokens])
        self._take(tokens.tolist(), start=len(self.rows) - len(rows))

    def step(self) -> None:
        """One token for every row; rows that end leave."""
        assert self._mask is not None and self._positions is not None and self._last is not None
        self._route(self.slots)
        mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self._model(
            input_ids=self._last[:, None],
            attention_mask=mask,
            position_ids=self._positions[:, None],
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        self._mask = mask
        self._positions = self._positions + 1
        tokens = logits[:, -1, :].argmax(-1)
        self._last = tokens
        self._take(tokens.tolist(), start=0)

    def close(self) -> None:
        """Finish every row still open (after a failure the engine fails them first)."""
        for row in self.rows:
            row.close("cancelled" if row.stream.cancelled else "length")
        self.rows, self.slots = [], []
        self._cache = self._mask = self._positions = self._last = None
        self._lora.unroute()
        self._routed = None

    # -- internals ----------------------------------------------------------------------------

    def _route(self, slots: list[int]) -> None:
        if slots != self._routed:
            self._lora.route(slots)
            self._routed = list(slots)

    def _take(self, tokens: list[int], start: int) -> None:
        """Hand each row from ``start`` on its new token; drop the rows that end."""
        keep: list[int] = list(range(start))
        for i, token in enumerate(tokens, start=start):
            row = self.rows[i]
            self._generated[i] += 1
            row.add(int(token))
            if row.wants_to_stop(int(token), self._generated[i]):
                row.close("cancelled" if row.stream.cancelled else "length")
            else:
                keep.append(i)
        if len(keep) < len(self.rows):
            self._select(keep)

    def _merge(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        """Append the rows of a freshly prefilled ``cache`` to the batch's."""
        if self._cache is None or self._mask is None or self._positions is None:
            self._cache, self._mask, self._positions = cache, mask, positions
            return
        old, new = self._mask.shape[1], mask.shape[1]
        length = max(old, new)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length), _pad_left(theirs.values, length)]
            )
        self._mask = torch.cat(
            [functional.pad(self._mask, (length - old, 0)), functional.pad(mask, (length - new, 0))]
        )
        self._positions = torch.cat([self._positions, positions])

    def _select(self, keep: list[int]) -> None:
        """Keep only the rows ``keep``, and cut the cache columns no row needs any more."""
        self.rows = [self.rows[i] for i in keep]
        self.slots = [self.slots[i] for i in keep]
        self._generated = [self._generated[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._positions = self._last = None
            return
        assert self._mask is not None and self._positions is not None and self._last is not None
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0, 0])  # leading columns that are padding for all
        self._mask = mask[:, first:]
        self._positions = self._positions.index_select(0, index)
        self._last = self._last.index_select(0, index)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]


def _pad_left(states: torch.Tensor, length: int) -> torch.Tensor:
    """``[rows, heads, seq, dim]`` zero-padded on the left of ``seq`` to ``length``."""
    missing = length - states.shape[2]
    return states if missing == 0 else functional.pad(states, (0, 0, missing, 0))


__all__ = ["DecodeSession", "continuous_supported"]
