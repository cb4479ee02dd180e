"""vLLM's sampling extensions on the OpenAI wire: ``top_k``, ``min_p``,
``repetition_penalty`` and ``min_tokens`` in a request body (the openai SDK sends them
through ``extra_body``), checked as strictly as OpenAI's own parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from modelyard.serving._types import MAX_REPETITION_PENALTY


class SamplingExtensions(BaseModel):
    """The fields of a completion request (``CommonRequest`` inherits them); null or a
    neutral value (``top_k`` 0 or -1, ``min_p`` 0, ``repetition_penalty`` 1, ``min_tokens``
    0) changes nothing, on every engine."""

    # strict: "5", 5.0 or true for an integer is a 400, never converted
    top_k: int | None = Field(default=None, ge=-1, strict=True)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True)
    repetition_penalty: float | None = Field(
        default=None, gt=0.0, le=MAX_REPETITION_PENALTY, allow_inf_nan=False, strict=True
    )
    min_tokens: int | None = Field(default=None, ge=0, strict=True)

    def extensions(self) -> dict[str, Any]:
        """The extensions as ``SamplingParams`` takes them (``min_tokens`` above
        ``max_tokens`` is its 400)."""
        return {
            "top_k": max(self.top_k or 0, 0),
            "min_p": self.min_p or 0.0,
            "repetition_penalty": 1.0
            if self.repetition_penalty is None
            else self.repetition_penalty,
            "min_tokens": self.min_tokens or 0,
        }


__all__ = ["SamplingExtensions"]
