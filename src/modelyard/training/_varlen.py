"""Variable-length attention for packed rows on CUDA, without the flash-attn package.

Packed rows keep their examples apart by position ids that restart at 0. With ``sdpa``,
transformers turns them into a block-diagonal mask, and a masked ``sdpa`` computes every
pair of tokens in the row and then discards most of them. PyTorch has FlashAttention's
variable-length kernel itself (``torch.nn.attention.varlen.varlen_attn``, CUDA in half
precision): given where each example starts, it computes only each example's own causal
triangle. ``plan_training`` picks this path for packed rows on a GPU in half precision
when the config says ``sdpa`` (the default); the run records ``attention: varlen``.

A batch without position ids (nothing here makes one, but a caller could), attention
dropout, or a model's sliding window falls back to ``sdpa`` with the mask transformers
built for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

NAME = "varlen"
"""The attention implementation's name, registered with transformers (and its mask)."""

Kernel = Callable[..., torch.Tensor]
"""``varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale, window_size,
enable_gqa)`` on ``(tokens, heads, head_dim)`` tensors."""


def _torch_kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    out = varlen_attn(*args, **kwargs)  # a tensor: no return_aux is asked for
    assert isinstance(out, torch.Tensor)
    return out


kernel: Kernel = _torch_kernel
"""What computes the attention (tests put a CPU reference here)."""


def available() -> bool:
    """Whether this torch has the variable-length kernel (torch 2.9 and newer, on CUDA)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


_last: tuple[torch.Tensor, tuple[torch.Tensor, int]] | None = None
"""The batch's position ids and their segments: every layer of one forward (and its
recomputation under checkpointing) gets the same tensor, so they are found once, not
once a layer (each finding waits for the GPU twice: ``nonzero`` and the longest)."""


def _segments_of(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    global _last
    if _last is None or _last[0] is not position_ids:
        _last = (position_ids, segments(position_ids))
    return _last[1]


def segments(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Where each example starts in the flattened batch, as cumulative offsets (int32, the
    batch's total tokens last), and the longest example: a new one wherever positions
    restart at 0, and at the start of every row."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    row_starts = torch.arange(0, flat.numel(), position_ids.shape[-1], device=flat.device)
    starts = torch.unique(torch.cat([starts, row_starts]))  # sorted
    ends = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)])
    longest = int((ends[1:] - ends[:-1]).max())
    return ends.to(torch.int32), longest


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``(batch, heads, seq, dim)`` in, ``(batch, seq,
    heads, dim)`` out, each example attending causally to itself only."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None or dropout or kwargs.get("sliding_window"):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    cu_seq, longest = _segments_of(position_ids)
    cu_seq = cu_seq.to(query.device)
    output = kernel(
        query.transpose(1, 2).reshape(batch * length, heads, dim),
        key.transpose(1, 2).reshape(batch * length, kv_heads, dim),
        value.transpose(1, 2).reshape(batch * length, kv_heads, dim),
        cu_seq,
        cu_seq,
        longest,
        longest,
        scale=scaling,
        window_size=(-1, 0),  # causal
        enable_gqa=kv_heads != heads,
    )
    return output.reshape(batch, length, heads, dim), None


def register() -> None:
    """Make ``attn_implementation="varlen"`` known to transformers (idempotent): this
    attention, and ``sdpa``'s mask for the batches that fall back to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
