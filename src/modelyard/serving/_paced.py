"""``PacedEchoEngine``: the echo fake, one word every ``delay_s``, for tests of time.

Streams that take a while (graceful shutdown, request timeouts, load) without a
model: each request gets its own thread that pushes the echo answer word by
word, and stops at the next word when its consumer cancels (finishing with
``finish_reason`` ``"cancelled"``, like the real engine).
"""

from __future__ import annotations

import re
import threading
import time

from modelyard.errors import ConfigError
from modelyard.serving._engine import EchoEngine
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import Generation, SamplingParams
from modelyard.store import ModelVersion


class PacedEchoEngine(EchoEngine):
    """The EchoEngine's answers, one word per ``delay_s`` seconds."""

    name = "echo"

    def __init__(self, delay_s: float) -> None:
        if not delay_s >= 0:
            raise ConfigError(f"delay_s is {delay_s}; it must be 0 or more", field="delay_s")
        self.delay_s = delay_s

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        whole = super().stream(version, prompt, params).result()
        stream = TokenStream()
        pieces = re.findall(r"\s*\S+|\s+$", whole.text)
        started = time.perf_counter()
        threading.Thread(
            target=self._pace, args=(stream, pieces, whole, started), daemon=True
        ).start()
        return stream

    def _pace(
        self, stream: TokenStream, pieces: list[str], whole: Generation, started: float
    ) -> None:
        sent: list[str] = []
        ttft: float | None = None
        for piece in pieces:
            time.sleep(self.delay_s)
            if stream.cancelled:
                text = "".join(sent)
                stream.finish(
                    Generation(text, whole.prompt_tokens, len(text.split()), "cancelled", ttft)
                )
                return
            stream.push(piece)
            sent.append(piece)
            if ttft is None:
                ttft = (time.perf_counter() - started) * 1000
        stream.finish(
            Generation(
                whole.text, whole.prompt_tokens, whole.completion_tokens, whole.finish_reason, ttft
            )
        )


__all__ = ["PacedEchoEngine"]
