"""The OpenAI wire format: request bodies (pydantic) and the ``usage`` of a response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelyard.errors import ConfigError
from modelyard.serving._types import Generation, SamplingParams


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CommonRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, cap: int) -> SamplingParams:
        wanted = self.max_completion_tokens or self.max_tokens or min(64, cap)
        if wanted > cap:
            field_name = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
            raise ConfigError(
                f"{field_name} is {wanted}, above this server's limit of {cap} "
                "(max_tokens cap, --max-tokens-cap)",
                hint=f"Ask for at most {cap} tokens.",
                param=field_name,
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(wanted, self.temperature, self.top_p, self.seed, stop)


class ChatCompletionRequest(CommonRequest):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(CommonRequest):
    prompt: str


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a verdict on one answered request (by its ``id``)."""

    model_config = ConfigDict(extra="ignore")
    request_id: str = Field(min_length=1, max_length=64)
    score: float | None = Field(default=None, ge=-1.0, le=1.0, allow_inf_nan=False)
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackRequest:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("send exactly one of score (-1 to 1) or thumbs (up or down)")
        return self

    @property
    def value(self) -> float:
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else -1.0
        assert self.score is not None  # one of the two, checked above
        return self.score


def usage(gen: Generation) -> dict[str, int]:
    """A response's ``usage``: real token counts from the engine."""
    total = gen.prompt_tokens + gen.completion_tokens
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": total,
    }


def include_usage(body: CommonRequest) -> bool:
    """Whether a streamed answer ends with a ``usage`` chunk (``stream_options``)."""
    return body.stream_options is not None and body.stream_options.include_usage


__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CommonRequest",
    "CompletionRequest",
    "FeedbackRequest",
    "StreamOptions",
    "include_usage",
    "usage",
]
