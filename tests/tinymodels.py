"""Tiny models for tests: a base that builds in seconds, LoRA adapters with random weights."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from modelyard.artifacts import ArtifactStore
from modelyard.store import ModelVersion, Store

# hidden 32, 2 layers: pretrained for 8 steps, enough to be a valid model
QUICK_BASE: dict[str, Any] = {
    "steps": 8,
    "batch_size": 4,
    "seq_len": 64,
    "hidden_size": 32,
    "vocab_size": 512,
}
WEIGHTS = "adapter_model.safetensors"


def random_adapter(base: Path, out: Path, seed: int, **lora: Any) -> Path:
    """A peft LoRA adapter on ``base`` with random (not zero) B matrices, saved to ``out``.

    ``lora`` are LoraConfig fields (default r 4, alpha 64, every linear layer), so
    each seed changes the model's outputs differently.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = {"r": 4, "lora_alpha": 64, "target_modules": "all-linear", **lora}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    with warnings.catch_warnings():  # peft warns about adapting the tied embeddings
        warnings.simplefilter("ignore", UserWarning)
        get_peft_model(model, LoraConfig(init_lora_weights=False, **config)).save_pretrained(out)
    return out


def register_adapter(
    store: Store, artifacts: ArtifactStore, directory: Path, model: str = "bot"
) -> ModelVersion:
    """Put ``directory`` in the artifact store and register it as a version of ``model``."""
    return store.create_model_version(
        model,
        kind="adapter",
        artifact_digest=artifacts.put_dir(directory, kind="adapter").digest,
        base_model="tiny",
        run_id=None,
        lineage={"prompt_template": "alpaca"},
        metrics={},
    )


def tamper(artifacts: ArtifactStore, digest: str) -> None:
    """Flip the last byte of a stored adapter's weights (it no longer matches its manifest)."""
    stored = next(artifacts.root.rglob(f"{digest}/files/{WEIGHTS}"))
    stored.chmod(0o644)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))


def chatty_adapter(base: Path, out: Path, scale: float = 100.0) -> Path:
    """A LoRA adapter on ``base`` that never ends an answer and always says visible words.

    It adapts only ``lm_head``: ``A`` is the identity and ``B`` gives each hidden
    dimension ``i`` one word for ``+h[i]`` and another for ``-h[i]``, so every step
    some word gets a logit boost of at least ``scale * max|h|`` while the end of
    sequence (and every special token) gets none. Its answers run to ``max_tokens``
    under greedy decoding and sampling alike: tests of streams and lengths do not
    depend on what a tiny model happens to say.
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    special = set(tokenizer.all_special_ids)
    words = [
        i for i in range(vocab) if i not in special and tokenizer.decode([i]).strip().isalpha()
    ][: 2 * hidden]
    assert len(words) == 2 * hidden, "the base's vocabulary is too small for a chatty adapter"
    config = LoraConfig(r=hidden, lora_alpha=scale * hidden, target_modules=["lm_head"])
    with warnings.catch_warnings():  # peft warns about adapting the tied embeddings
        warnings.simplefilter("ignore", UserWarning)
        get_peft_model(model, config).save_pretrained(out)
    tensors = load_file(out / WEIGHTS)
    a_key = next(k for k in tensors if k.endswith("lm_head.lora_A.weight"))
    b_key = next(k for k in tensors if k.endswith("lm_head.lora_B.weight"))
    a = torch.eye(hidden)
    b = torch.zeros(vocab, hidden)
    for i in range(hidden):
        b[words[2 * i], i], b[words[2 * i + 1], i] = 1.0, -1.0
    save_file({a_key: a.contiguous(), b_key: b.contiguous()}, out / WEIGHTS)
    return out


def ending_adapter(base: Path, out: Path) -> Path:
    """A ``chatty_adapter`` whose end of sequence is boosted too, by the first half of the
    hidden dimensions less the second half: on the tiny base its answers are one token of
    text and then the end of sequence, whatever the prompt (tests that use it check that
    the answer has text and ``finish_reason`` stop). Its end of sequence is sampled, as a
    model's that ends its answers is: a test of how it is counted."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    chatty_adapter(base, out)
    tensors = load_file(out / WEIGHTS)
    b_key = next(k for k in tensors if k.endswith("lm_head.lora_B.weight"))
    b = tensors[b_key].clone()
    half = b.shape[1] // 2
    b[AutoTokenizer.from_pretrained(base).eos_token_id] = torch.cat(
        [torch.ones(half), -torch.ones(b.shape[1] - half)]
    )
    save_file({**tensors, b_key: b.contiguous()}, out / WEIGHTS)
    return out


@contextmanager
def rambler_server(tmp: Path) -> Iterator[tuple[str, Store, str]]:
    """The transformers engine on a tiny base (a 256-token context) behind a real server:
    tenant acme's endpoint ``rambler`` on an adapter that never ends an answer (it runs to
    the token limit), rendering messages with ``chat-fallback``. Yields the server's URL,
    the store and acme's key; the home and store live under ``tmp``."""
    from modelyard.access import create_api_key
    from modelyard.base import create_tiny_base
    from modelyard.data import DOMAINS, domain_corpus
    from modelyard.serving import BackgroundServer, TransformersEngine, create_app

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp / "home"))
        env.delenv("MODELYARD_STORE_URL", raising=False)
        env.delenv("MODELYARD_ARTIFACTS", raising=False)
        base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), tmp / "base", **QUICK_BASE)
        artifacts = ArtifactStore(tmp / "artifacts")
        with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
            store.register_base_model("tiny", str(base.path), {})
            store.create_tenant("acme")
            store.create_registered_model("bot", tenant="acme")
            adapter = artifacts.put_dir(chatty_adapter(base.path, tmp / "chatty"), kind="adapter")
            store.create_model_version(
                "bot", kind="adapter", artifact_digest=adapter.digest, base_model="tiny",
                run_id=None, lineage={"prompt_template": "chat-fallback"}, metrics={},
            )  # fmt: skip
            store.create_endpoint("rambler", model_ref="bot:1", tenant="acme")
            key = create_api_key(store, "acme")[1]
            engine = TransformersEngine(artifacts, store=store)
            try:
                app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
                with BackgroundServer(app) as server:
                    yield server.base_url, store, key
            finally:
                engine.close()


class Rambler(NamedTuple):
    """``rambler_server`` through the official SDK: its client, the tiny base's tokenizer,
    and the directory holding the base (``base``) and the adapter (``chatty``)."""

    client: Any
    tokenizer: Any
    tmp: Path
