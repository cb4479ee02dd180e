"""The OpenAI wire format of answers: a response's ``usage`` and its ``logprobs``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.serving._types import Generation, TokenLogprob


def usage(gen: Generation) -> dict[str, int]:
    """A response's ``usage``: real token counts from the engine."""
    total = gen.prompt_tokens + gen.completion_tokens
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": total,
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="surrogatepass"))


def chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's (or chunk's) ``logprobs``: each token, its log probability, and the
    alternatives."""
    if tokens is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": _token_bytes(t.token),
                "top_logprobs": [
                    {"token": token, "logprob": lp, "bytes": _token_bytes(token)}
                    for token, lp in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(
    tokens: Sequence[TokenLogprob] | None, start: int = 0
) -> dict[str, Any] | None:
    """A legacy completion choice's (or chunk's) ``logprobs``: ``tokens``,
    ``token_logprobs``, ``top_logprobs`` as token → logprob maps, and ``text_offset`` into
    the generated text (a chunk's from ``start``, the characters sent before it)."""
    if tokens is None:
        return None
    offsets, at = [], start
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        # a prompt's first token (echo) has nothing before it: null, as OpenAI sends
        "top_logprobs": [None if t.logprob is None else dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


__all__ = ["chat_logprobs", "completion_logprobs", "usage"]
