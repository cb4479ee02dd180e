"""Stacked mixed-adapter LoRA against peft, the host cache of verified adapters, joining batches.

A tiny untrained base (hidden 32, 2 layers) and LoRA adapters with random
weights and different ranks, alphas, patterns and targets: peft is the
reference for what each adapter computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base, load_base
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain
from modelyard.serving import EngineError, SamplingParams, TransformersEngine
from modelyard.serving._multilora import LoraFormatError, MultiLora, read_lora
from modelyard.store import ModelVersion, Store
from tinymodels import QUICK_BASE, chatty_adapter, register_adapter
from tinymodels import random_adapter as _adapter

GREEDY = SamplingParams(max_tokens=10, temperature=0)

# different ranks, alphas, per-module patterns, rsLoRA and target sets
CONFIGS: list[dict[str, Any]] = [
    {"r": 4, "lora_alpha": 64, "target_modules": "all-linear"},
    {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": "all-linear",
        "rank_pattern": {"o_proj": 2, "down_proj": 6},
        "alpha_pattern": {"gate_proj": 40},
    },
    {"r": 6, "lora_alpha": 12, "target_modules": ["k_proj", "up_proj"], "use_rslora": True},
]


@dataclass
class World:
    base: Path
    dirs: list[Path]
    store: Store
    artifacts: ArtifactStore
    versions: list[ModelVersion]
    prompts: list[str]
    tmp: Path
    chatty: ModelVersion  # never ends an answer (long rows, whatever a tiny model says)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("multilora")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp / "home"))
        env.delenv("MODELYARD_STORE_URL", raising=False)
        env.delenv("MODELYARD_ARTIFACTS", raising=False)
        base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), tmp / "base", **QUICK_BASE)
        dirs = [_adapter(base.path, tmp / f"a{i}", i, **c) for i, c in enumerate(CONFIGS)]
        artifacts = ArtifactStore(tmp / "artifacts")
        with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
            store.register_base_model("tiny", str(base.path), {})
            store.create_registered_model("bot")
            versions = [register_adapter(store, artifacts, d) for d in dirs]
            rows = synthetic_domain("it-support", 8, seed=1)
            prompts = [render_prompt(r) for r in rows]
            chatty = register_adapter(store, artifacts, chatty_adapter(base.path, tmp / "chatty"))
            yield World(base.path, dirs, store, artifacts, versions, prompts, tmp, chatty)


def _peft_model(world: World) -> Any:
    """One peft model holding every adapter, by name a0..a3."""
    from peft import PeftModel

    model = load_base(world.base)[0]
    model = PeftModel.from_pretrained(model, world.dirs[0], adapter_name="a0")
    for i, directory in enumerate(world.dirs[1:], start=1):
        model.load_adapter(directory, adapter_name=f"a{i}")
    return model.eval()


def _same_length_batch(world: World, count: int) -> torch.Tensor:
    """``count`` prompts cut to one length, so no row needs padding."""
    tokenizer = load_base(world.base)[1]
    ids = [tokenizer(p)["input_ids"] for p in world.prompts[:count]]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])


def test_mixed_batch_logits_match_peft_per_row(world: World) -> None:
    reference = _peft_model(world)
    model = load_base(world.base)[0].eval()
    lora = MultiLora(model, slots=4)
    for slot, directory in enumerate(world.dirs):
        lora.put(slot, read_lora(directory, model))
    ids = _same_length_batch(world, 8)
    slots = [i % 4 for i in range(8)]
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        lora.route(slots)
        mixed = model(input_ids=ids).logits
        lora.route([2] * 8)
        single = model(input_ids=ids).logits
        lora.unroute()
        unrouted = model(input_ids=ids).logits
        expected = reference(input_ids=ids, adapter_names=[f"a{s}" for s in slots]).logits
        for slot in range(4):  # each row alone, peft's plain single-adapter path
            reference.set_adapter(f"a{slot}")
            alone = reference(input_ids=ids[slot : slot + 1]).logits
            torch.testing.assert_close(mixed[slot : slot + 1], alone, rtol=1e-4, atol=1e-4)
        reference.set_adapter("a2")
        expected_single = reference(input_ids=ids).logits
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single, expected_single, rtol=1e-5, atol=1e-6)
    assert torch.equal(unrouted, plain)
    # the adapters really change the outputs, each differently
    assert all((mixed[i] - plain[i]).abs().max() > 1e-2 for i in range(4))
    assert (mixed[0] - mixed[1]).abs().max() > 1e-2
    lora.close()
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, plain)  # forward restored


def test_engine_answers_like_peft_generate_per_adapter(world: World) -> None:
    reference = _peft_model(world)
    tokenizer = load_base(world.base)[1]
    jobs = [(i % 4, world.prompts[i]) for i in range(8)]
    expected = []
    with torch.inference_mode():
        for slot, prompt in jobs:
            reference.set_adapter(f"a{slot}")
            inputs = tokenizer(prompt, return_tensors="pt")
            out = reference.generate(
                **inputs,
                max_new_tokens=GREEDY.max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[0, inputs["input_ids"].shape[1] :]
            expected.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    engine = TransformersEngine(world.artifacts, max_batch_size=8, batch_window_ms=300)
    try:
        streams = [engine.stream(world.versions[s], p, GREEDY) for s, p in jobs]
        together = [s.result().text for s in streams]
        assert engine.stats().largest_batch == 8  # one mixed batch of four adapters
        alone = [engine.generate(world.versions[s], p, GREEDY).text for s, p in jobs]
    finally:
        engine.close()
    assert together == expected
    assert alone == expected
    assert len(set(expected)) > 1


def test_reloads_after_eviction_come_from_host_memory(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    open_verified = world.artifacts.open_verified

    def counting(digest: str) -> Path:
        opened.append(digest)
        return open_verified(digest)

    monkeypatch.setattr(world.artifacts, "open_verified", counting)
    a, b = world.versions[:2]
    for host_cache_mb, reads in ((64.0, 2), (0.0, 4)):
        opened.clear()
        engine = TransformersEngine(world.artifacts, max_adapters=1, host_cache_mb=host_cache_mb)
        try:
            first = [engine.generate(v, world.prompts[0], GREEDY).text for v in (a, b)]
            again = [engine.generate(v, world.prompts[0], GREEDY).text for v in (a, b)]
            stats = engine.stats()
        finally:
            engine.close()
        assert again == first and first[0] != first[1]
        assert (stats.adapter_loads, stats.adapter_evictions) == (4, 3)
        # with a host cache, each artifact was verified once; without, at every load
        assert opened == [a.artifact_digest, b.artifact_digest] * (reads // 2)


def test_a_request_joins_a_running_batch(world: World) -> None:
    engine = TransformersEngine(world.artifacts, batch_window_ms=0)
    try:
        long = SamplingParams(max_tokens=150, temperature=0)
        expected_long = engine.generate(world.chatty, "hello", long)
        expected_short = engine.generate(world.versions[1], world.prompts[2], GREEDY).text
        expected_tiny = engine.generate(world.versions[3], "hello there", GREEDY).text
        assert expected_long.finish_reason == "length"
        batches = engine.stats().batches
        running = engine.stream(world.chatty, "hello", long)
        next(running)  # it is being decoded
        # a prompt longer than the running row's cache so far: the batch's cache is padded
        joined = engine.stream(world.versions[1], world.prompts[2], GREEDY)
        assert joined.result().text == expected_short
        assert not running.done  # it joined the running batch instead of waiting for its end
        # then a prompt shorter than the batch's cache: the newcomer's cache is padded
        tiny = engine.stream(world.versions[3], "hello there", GREEDY)
        assert tiny.result().text == expected_tiny
        assert not running.done
        assert running.result().text == expected_long.text
        assert engine.stats().batches == batches + 3
    finally:
        engine.close()


def test_sampled_requests_wait_for_their_own_batch(world: World) -> None:
    engine = TransformersEngine(world.artifacts, batch_window_ms=0)
    try:
        sampled = SamplingParams(max_tokens=6, temperature=0.8, seed=3)
        expected = engine.generate(world.versions[2], world.prompts[1], sampled).text
        running = engine.stream(world.chatty, "hello", SamplingParams(120, 0.0))
        next(running)
        waiting = engine.stream(world.versions[2], world.prompts[1], sampled)
        greedy_after = engine.stream(world.versions[3], world.prompts[3], GREEDY)
        assert waiting.result().text == expected  # seeded: alone, same text
        assert running.done  # it waited for the greedy batch to end, and so did the next one
        assert greedy_after.result().completion_tokens > 0
    finally:
        engine.close()


def _save_config_only(source: Path, out: Path, **changes: Any) -> Path:
    import json
    import shutil

    shutil.copytree(source, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    ("lora", "named"),
    [
        ({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True}, "use_dora"),
        ({"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens"]}, "the embedding"),
        (
            {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
            "modules_to_save",
        ),
        ({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "lora_only"}, "bias"),
    ],
)
def test_lora_features_this_engine_cannot_apply_are_refused(
    world: World, lora: dict[str, Any], named: str
) -> None:
    directory = _adapter(world.base, world.tmp / f"refused-{named}", 5, **lora)
    model = load_base(world.base)[0]
    with pytest.raises(LoraFormatError, match=named):
        read_lora(directory, model)
    version = register_adapter(world.store, world.artifacts, directory)
    engine = TransformersEngine(world.artifacts)
    try:
        with pytest.raises(EngineError, match=f"cannot load the adapter of {version.ref}.*{named}"):
            engine.generate(version, world.prompts[0], GREEDY)
        assert engine.generate(world.versions[0], world.prompts[0], GREEDY).text  # others go on
    finally:
        engine.close()


def test_rank_that_disagrees_with_the_config_is_a_size_mismatch(world: World) -> None:
    directory = _save_config_only(world.dirs[0], world.tmp / "wrong-rank", r=5)
    with pytest.raises(LoraFormatError, match=r"size mismatch for .*lora_A\.weight"):
        read_lora(directory, load_base(world.base)[0])
