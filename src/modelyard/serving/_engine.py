"""Engines turn a prompt and a model version into text.

``Engine`` is the small interface the server talks to; ``TransformersEngine``
runs real Hugging Face models on CPU or GPU (a vLLM engine can implement the
same interface); ``EchoEngine`` is a fake for tests where the model is not the
point.
"""

from __future__ import annotations

import abc
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ModelyardError
from modelyard.store import ModelVersion


class EngineError(ModelyardError):
    code = "engine_error"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    ttft_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """Generates text for one model version (an adapter on a base, or full weights)."""

    name: str = "engine"

    @abc.abstractmethod
    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        """Run one request to completion."""

    def loaded(self) -> list[str]:
        """Refs of the versions held in memory (for /ready and heartbeats)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the engine holds."""


def _apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class EchoEngine(Engine):
    """Answers with the last line of the prompt. For tests of routing, auth and records."""

    name = "echo"

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        words = prompt.strip().splitlines()[-1].split() if prompt.strip() else []
        out = words[: params.max_tokens]
        text, stopped = _apply_stop(" ".join(out), params.stop)
        finish = "length" if len(words) > params.max_tokens and not stopped else "stop"
        return Generation(text, len(prompt.split()), len(text.split()), finish, ttft_ms=0.0)


class TransformersEngine(Engine):
    """Hugging Face models: each base loads once; adapters load on first use into an LRU.

    One ``PeftModel`` per base holds the loaded adapters by name; a request
    activates its adapter and generates. Generation is serialized per engine
    (CPU inference gains nothing from running two at once).
    """

    name = "transformers"

    def __init__(self, artifacts: ArtifactStore, *, max_adapters: int = 8) -> None:
        self._artifacts = artifacts
        self._max_adapters = max_adapters
        self._lock = threading.RLock()
        self._bases: dict[str, tuple[Any, Any]] = {}  # source -> (model, tokenizer)
        self._adapters: OrderedDict[str, tuple[str, str]] = OrderedDict()  # name -> (src, ref)

    def loaded(self) -> list[str]:
        with self._lock:
            return [ref for _, ref in self._adapters.values()]

    def _base(self, source: str) -> tuple[Any, Any]:
        if source not in self._bases:
            from modelyard.base import load_base  # heavy import, only when serving real models

            model, tokenizer = load_base(source)
            model.eval()
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._bases[source] = (model, tokenizer)
        return self._bases[source]

    def _activate(self, version: ModelVersion) -> tuple[Any, Any]:
        """The model with ``version``'s adapter active, loading (and evicting) as needed."""
        model, tokenizer = self._base(version.base_model_source)
        if version.kind == "full":
            raise EngineError(f"{version.ref} has full weights; this engine serves adapters")
        name = f"v{version.id}"
        if name in self._adapters:
            self._adapters.move_to_end(name)
        else:
            model = self._load_adapter(model, version, name)
        model.set_adapter(name)
        return model, tokenizer

    def _load_adapter(self, model: Any, version: ModelVersion, name: str) -> Any:
        from peft import PeftModel

        path = self._artifacts.open_verified(version.artifact_digest)  # refuses tampered files
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(path), adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
                self._bases[version.base_model_source] = (
                    model,
                    self._bases[version.base_model_source][1],
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise EngineError(f"cannot load the adapter of {version.ref}: {exc}") from exc
        model.eval()
        self._adapters[name] = (version.base_model_source, version.ref)
        self._evict(model)
        return model

    def _evict(self, model: Any) -> None:
        while len(self._adapters) > self._max_adapters:
            old, _ = self._adapters.popitem(last=False)
            model.delete_adapter(old)

    def generate(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Generation:
        with self._lock:
            model, tokenizer = self._activate(version)
            return self._generate(model, tokenizer, prompt, params)

    def _generate(self, model: Any, tokenizer: Any, prompt: str, p: SamplingParams) -> Generation:
        inputs = tokenizer(prompt, return_tensors="pt")
        n_prompt = int(inputs["input_ids"].shape[1])
        sampling = p.temperature > 0
        if p.seed is not None:
            torch.manual_seed(p.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=p.max_tokens,
                do_sample=sampling,
                temperature=p.temperature if sampling else None,
                top_p=p.top_p if sampling else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        elapsed_ms = (time.perf_counter() - start) * 1000
        new_tokens = out[0, n_prompt:].tolist()
        hit_eos = tokenizer.eos_token_id in new_tokens
        if hit_eos:
            new_tokens = new_tokens[: new_tokens.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        text, stopped = _apply_stop(text, p.stop)
        finish = "stop" if hit_eos or stopped else "length"
        # Non-streaming: the first token is known only when all of them are.
        return Generation(text, n_prompt, len(new_tokens), finish, ttft_ms=elapsed_ms)


__all__ = [
    "EchoEngine",
    "Engine",
    "EngineError",
    "Generation",
    "SamplingParams",
    "TransformersEngine",
]
