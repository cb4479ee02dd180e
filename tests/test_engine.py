"""The transformers engine: mixed-adapter batches, per-row stopping, streams, LRU, bad adapters.

A tiny untrained base (hidden 32, 2 layers) and LoRA adapters with random
weights (no training needed: each one changes the outputs differently).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain
from modelyard.errors import ConfigError, EngineOverloaded
from modelyard.serving import (
    EngineError,
    SamplingParams,
    TransformersEngine,
    placement,
    render_chat,
)
from modelyard.store import ModelVersion, Store
from tinymodels import QUICK_BASE, WEIGHTS, chatty_adapter, register_adapter, tamper
from tinymodels import random_adapter as _random_adapter

GREEDY = SamplingParams(max_tokens=8, temperature=0)


@dataclass
class World:
    store: Store
    artifacts: ArtifactStore
    good: list[ModelVersion]  # four adapters with different random weights
    tampered: ModelVersion  # stored bytes changed after registration
    garbage: ModelVersion  # registered, but its weights file is not safetensors
    wrong_base: ModelVersion  # LoRA shapes of another base
    prompts: list[str]
    chatty: ModelVersion  # never ends an answer (long rows, whatever a tiny model says)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("engine")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp / "home"))
        env.delenv("MODELYARD_STORE_URL", raising=False)
        env.delenv("MODELYARD_ARTIFACTS", raising=False)
        corpus = domain_corpus(DOMAINS, 300, seed=0)
        base = create_tiny_base(corpus, tmp / "base", **QUICK_BASE).path
        artifacts = ArtifactStore(tmp / "artifacts")
        with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
            store.register_base_model("tiny", str(base), {})
            store.create_registered_model("bot")
            good = [
                register_adapter(store, artifacts, _random_adapter(base, tmp / f"a{i}", seed=i))
                for i in range(4)
            ]
            source = tmp / "a0"
            # tampered: registered, then one stored byte flipped
            tampered = register_adapter(store, artifacts, _random_adapter(base, tmp / "t", seed=9))
            tamper(artifacts, tampered.artifact_digest)
            # garbage: a weights file that is not safetensors, registered as is
            shutil.copytree(source, tmp / "g")
            (tmp / "g" / WEIGHTS).write_bytes(b"not a safetensors file")
            garbage = register_adapter(store, artifacts, tmp / "g")
            # wrong base: LoRA matrices shaped for a wider model
            shutil.copytree(source, tmp / "w")
            wide = {
                k: torch.zeros(v.shape[0], v.shape[1] + 16)
                if "lora_A" in k
                else torch.zeros(v.shape[0] + 16, v.shape[1])
                for k, v in load_file(source / WEIGHTS).items()
            }
            save_file(wide, tmp / "w" / WEIGHTS)
            wrong_base = register_adapter(store, artifacts, tmp / "w")
            rows = synthetic_domain("it-support", 8, seed=0)
            chatty = register_adapter(store, artifacts, chatty_adapter(base, tmp / "chatty"))
            yield World(
                store,
                artifacts,
                good,
                tampered,
                garbage,
                wrong_base,
                [render_prompt(r) for r in rows],
                chatty,
            )


@pytest.fixture
def engine(world: World) -> Iterator[TransformersEngine]:
    eng = TransformersEngine(
        world.artifacts, max_batch_size=8, batch_window_ms=300, max_adapters=8, store=world.store
    )
    yield eng
    eng.close()


def _one_at_a_time(
    engine: TransformersEngine, jobs: list[tuple[ModelVersion, str, SamplingParams]]
) -> list[str]:
    return [engine.generate(v, prompt, p).text for v, prompt, p in jobs]


def test_mixed_adapter_batch_equals_one_at_a_time(world: World, engine: TransformersEngine) -> None:
    # 8 requests on 4 adapters, each with its own max_tokens
    jobs = [
        (world.good[i % 4], world.prompts[i], SamplingParams(max_tokens=3 + i, temperature=0))
        for i in range(8)
    ]
    alone = _one_at_a_time(engine, jobs)
    before = engine.stats()
    streams = [engine.stream(v, prompt, p) for v, prompt, p in jobs]  # submitted together
    together = [s.result() for s in streams]
    assert [g.text for g in together] == alone
    assert engine.stats().batches == before.batches + 1
    assert engine.stats().largest_batch == 8
    # each row stopped at its own limit (unless it ended first)
    for g, (_, _, p) in zip(together, jobs, strict=True):
        assert g.completion_tokens <= p.max_tokens
        assert g.finish_reason == ("length" if g.completion_tokens == p.max_tokens else "stop")
    # the adapters really differ, so a wrong adapter per row would show
    same_prompt = [engine.generate(v, world.prompts[0], GREEDY).text for v in world.good]
    assert len(set(same_prompt)) > 1


def test_stream_delivers_tokens_as_they_come(world: World, engine: TransformersEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0)
    whole = engine.generate(world.chatty, world.prompts[2], params)
    assert (whole.completion_tokens, whole.finish_reason) == (24, "length")
    events = list(engine.stream(world.chatty, world.prompts[2], params))
    pieces = [e.text for e in events if e.text]
    final = events[-1].generation
    assert final is not None and all(e.generation is None for e in events[:-1])
    assert len(pieces) > 3
    assert "".join(pieces) == final.text == whole.text
    assert final.completion_tokens == whole.completion_tokens
    assert final.ttft_ms is not None and final.ttft_ms > 0


def test_stop_strings_cut_each_row_on_its_own(world: World, engine: TransformersEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=0)
    prompts = world.prompts[:2]  # the chatty adapter says 16 tokens of letters to each
    full = [engine.generate(world.chatty, p, params).text for p in prompts]
    stops = [full[0][8:11], full[1][4:6]]  # text in the middle of each answer
    streams = [
        engine.stream(world.chatty, p, SamplingParams(16, 0.0, stop=(stop,)))
        for p, stop in zip(prompts, stops, strict=True)
    ]
    for stream, text, stop in zip(streams, full, stops, strict=True):
        gen = stream.result()
        assert gen.text == text[: text.index(stop)].rstrip()
        assert gen.finish_reason == "stop"
        assert gen.completion_tokens < 16


def test_cancelling_a_stream_stops_only_its_row(world: World, engine: TransformersEngine) -> None:
    params = SamplingParams(max_tokens=150, temperature=0)
    prompt = "hello"
    rows = [world.chatty, world.good[0]]
    expected = [engine.generate(v, prompt, params) for v in rows]
    assert expected[0].finish_reason == "length"  # the leaving row would run all 150 tokens
    leaving, staying = (engine.stream(v, prompt, params) for v in rows)
    next(leaving)
    leaving.cancel()
    gone = leaving.result()
    assert gone.finish_reason == "cancelled"
    assert 0 < gone.completion_tokens < 150
    assert staying.result().text == expected[1].text


def test_bad_adapters_fail_only_their_own_requests(world: World) -> None:
    # A fresh engine whose first load is a bad one, on a bare base: the base must stay clean.
    engine = TransformersEngine(world.artifacts, batch_window_ms=300, store=world.store)
    reference = TransformersEngine(world.artifacts)
    try:
        bad = [world.wrong_base, world.tampered, world.garbage]
        good = world.good[:2]
        expected = [reference.generate(v, world.prompts[3], GREEDY).text for v in good]
        streams = [engine.stream(v, world.prompts[3], GREEDY) for v in [*bad, *good]]
        errors = []
        for stream in streams[:3]:
            with pytest.raises(EngineError) as info:
                stream.result()
            errors.append(info.value.message)
        assert [s.result().text for s in streams[3:]] == expected
        assert f"cannot load the adapter of {world.wrong_base.ref}: " in errors[0]
        assert "size mismatch" in errors[0]
        assert f"refusing to serve {world.tampered.ref}" in errors[1]
        assert "do not match their manifest" in errors[1]
        assert f"cannot load the adapter of {world.garbage.ref}: " in errors[2]
        events = world.store.list_audit_events(action="artifact.verification_failed")
        assert [e.subject for e in events] == [world.tampered.ref]
        assert engine.stats().adapter_load_failures == 3
        # a bad version fails fast afterwards, without another load attempt or audit event
        with pytest.raises(EngineError, match="manifest"):
            engine.generate(world.tampered, world.prompts[3], GREEDY)
        assert engine.stats().adapter_load_failures == 3
        assert len(world.store.list_audit_events(action="artifact.verification_failed")) == 1
        assert engine.generate(good[0], world.prompts[3], GREEDY).text == expected[0]
    finally:
        engine.close()
        reference.close()


def test_running_out_of_memory_copying_one_adapter_fails_only_its_requests(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy of one adapter into its slot raises torch.OutOfMemoryError (part way: after
    the copy, before the slot is marked held); the other tenants in the batch are answered."""
    from modelyard.serving._adapters import AdapterCache
    from modelyard.serving._multilora import MultiLora

    victim = world.good[2]
    loading: list[int] = []  # the version whose adapter is being copied (scheduler thread)
    ensure_one, put = AdapterCache._ensure_one, MultiLora.put

    def ensure_one_noting(cache: AdapterCache, version: ModelVersion, protected: object) -> None:
        loading.append(version.id)
        try:
            ensure_one(cache, version, protected)  # type: ignore[arg-type]
        finally:
            loading.pop()

    def put_out_of_memory(lora: MultiLora, slot: int, weights: object) -> None:
        put(lora, slot, weights)  # type: ignore[arg-type]
        if loading and loading[-1] == victim.id:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    reference = TransformersEngine(world.artifacts)
    engine = TransformersEngine(world.artifacts, batch_window_ms=300)
    try:
        others = [world.good[0], world.good[1], world.good[3], world.good[0]]
        expected = [reference.generate(v, world.prompts[4], GREEDY).text for v in others]
        victim_text = reference.generate(victim, world.prompts[4], GREEDY).text
        monkeypatch.setattr(AdapterCache, "_ensure_one", ensure_one_noting)
        monkeypatch.setattr(MultiLora, "put", put_out_of_memory)
        jobs = [others[0], victim, others[1], victim, others[2], others[3]]
        streams = [engine.stream(v, world.prompts[4], GREEDY) for v in jobs]
        for i in (1, 3):
            with pytest.raises(EngineError) as info:
                streams[i].result()
            assert f"cannot load the adapter of {victim.ref} into its slot" in info.value.message
            assert "OutOfMemoryError" in info.value.message
        answered = [streams[i].result().text for i in (0, 2, 4, 5)]
        assert answered == expected
        assert engine.stats().batches == 1  # they really ran together
        assert victim.ref not in engine.loaded()
        # memory is back: the next request loads it (no cached failure) and answers right
        monkeypatch.undo()
        assert engine.generate(victim, world.prompts[4], GREEDY).text == victim_text
        assert engine.generate(others[0], world.prompts[4], GREEDY).text == expected[0]
    finally:
        engine.close()
        reference.close()


def test_lru_keeps_the_most_recently_used_adapters(world: World) -> None:
    a, b, c = world.good[:3]
    engine = TransformersEngine(world.artifacts, max_adapters=2, batch_window_ms=100)
    try:
        for version in (a, b, a, c):  # c evicts b, the least recently used
            engine.generate(version, world.prompts[0], GREEDY)
        assert engine.loaded() == [a.ref, c.ref]
        stats = engine.stats()
        assert (stats.adapter_hits, stats.adapter_misses) == (1, 3)
        assert (stats.adapter_loads, stats.adapter_evictions) == (3, 1)
        first = engine.generate(b, world.prompts[0], GREEDY).text  # reloads b, evicts a
        assert engine.loaded() == [c.ref, b.ref]
        assert engine.stats().adapter_evictions == 2
        # a batch that needs more adapters than the cache holds runs in turns
        streams = [engine.stream(v, world.prompts[0], GREEDY) for v in world.good]
        assert streams[1].result().text == first
        assert all(s.result().text for s in streams)
        assert engine.loaded() == [world.good[2].ref, world.good[3].ref]
    finally:
        engine.close()


def test_a_full_queue_is_refused_at_once(world: World) -> None:
    engine = TransformersEngine(world.artifacts, max_queue=1, max_batch_size=1)
    try:
        busy = engine.stream(world.good[0], "hello", SamplingParams(150, 0.0))
        next(busy)  # the scheduler is generating it: the queue is empty
        waiting = engine.stream(world.good[0], "hello", GREEDY)
        with pytest.raises(EngineOverloaded, match="at capacity"):
            engine.stream(world.good[0], "hello", GREEDY)
        busy.cancel()
        assert waiting.result().completion_tokens > 0
    finally:
        engine.close()


def test_seeded_sampling_repeats_and_runs_alone(world: World, engine: TransformersEngine) -> None:
    seeded = SamplingParams(max_tokens=12, temperature=0.9, seed=7)
    first = engine.generate(world.good[0], world.prompts[1], seeded).text
    before = engine.stats().batches
    streams = [
        engine.stream(world.good[0], world.prompts[1], seeded),
        engine.stream(world.good[0], world.prompts[1], seeded),
    ]
    assert [s.result().text for s in streams] == [first, first]
    assert engine.stats().batches == before + 2  # a seeded request never shares a batch


def test_prompt_longer_than_the_context_is_refused(
    world: World, engine: TransformersEngine
) -> None:
    with pytest.raises(ConfigError, match="256-token context"):
        engine.stream(world.good[0], "word " * 300, GREEDY)
    with pytest.raises(ConfigError, match="max_tokens is 250"):
        engine.stream(world.good[0], world.prompts[0], SamplingParams(250, 0.0))


def test_concurrent_submitters_each_get_their_own_answer(
    world: World, engine: TransformersEngine
) -> None:
    jobs = [(world.good[i % 4], world.prompts[i], GREEDY) for i in range(8)]
    alone = _one_at_a_time(engine, jobs)
    got: list[str] = [""] * 8

    def ask(i: int) -> None:
        version, prompt, params = jobs[i]
        got[i] = engine.generate(version, prompt, params).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == alone


# -- templates ---------------------------------------------------------------------------


def _version_with(template: str | None) -> ModelVersion:
    from datetime import UTC, datetime

    lineage = {} if template is None else {"prompt_template": template}
    return ModelVersion(
        id=1,
        model="m",
        version=1,
        kind="adapter",
        status="ready",
        artifact_digest="00" * 32,
        base_model="tiny",
        base_model_source="/nowhere",
        run_id=None,
        lineage=lineage,
        metrics={},
        aliases=(),
        created_at=datetime.now(UTC),
    )


CHAT = [
    {"role": "developer", "content": "Route the ticket."},
    {"role": "user", "content": "vpn is down"},
]


def test_chat_messages_render_in_the_versions_template() -> None:
    alpaca = render_chat(_version_with(None), CHAT)
    assert alpaca == render_prompt({"instruction": "Route the ticket.", "input": "vpn is down"})
    assert render_chat(_version_with("alpaca"), CHAT[1:]) == render_prompt(
        {"instruction": "vpn is down"}
    )
    assert render_chat(_version_with("chat-fallback"), CHAT) == (
        "<|system|>\nRoute the ticket.\n<|user|>\nvpn is down\n<|assistant|>\n"
    )
    assert render_chat(_version_with("classification"), CHAT) == (
        "### Text:\nvpn is down\n\n### Label:\n"
    )
    assert render_chat(_version_with("text"), CHAT) == "vpn is down"
    with pytest.raises(EngineError, match="chat template"):
        render_chat(_version_with("chat"), CHAT)  # no tokenizer with a chat template
    with pytest.raises(EngineError, match="unknown prompt template"):
        render_chat(_version_with("jinja-special"), CHAT)
    with pytest.raises(ConfigError, match="'alpaca' has no place for tools"):
        render_chat(_version_with("alpaca"), [*CHAT, {"role": "tool", "content": "x"}])
    with pytest.raises(ConfigError, match="role 'function'"):
        render_chat(_version_with("alpaca"), [*CHAT, {"role": "function", "content": "x"}])
    with pytest.raises(ConfigError, match="role 'user'"):
        render_chat(_version_with("alpaca"), CHAT[:1])


def test_generations_say_whether_their_adapter_was_loaded_and_unknown_tokens_count(
    world: World,
) -> None:
    engine = TransformersEngine(world.artifacts, max_adapters=2)
    try:
        v = world.good[3]
        first = engine.generate(v, world.prompts[0], GREEDY)
        again = engine.generate(v, world.prompts[1], GREEDY)
        assert first.extra["adapter_cache_hit"] is False
        assert again.extra["adapter_cache_hit"] is True
        # the byte-level BPE tokenizer has no unknown token: every prompt token is known
        assert first.extra["unknown_tokens"] == 0
        assert first.prompt_tokens == engine.count_tokens(v, world.prompts[0])
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("temperature", {"temperature": 1e-40}),
        ("temperature", {"temperature": float("nan")}),
        ("top_p", {"top_p": 0.0}),
        ("seed", {"seed": 2**70}),
        ("max_tokens", {"max_tokens": 0}),
    ],
)
def test_settings_an_engine_cannot_run_are_a_clients_mistake(
    field: str, values: dict[str, float]
) -> None:
    """Whoever builds the settings (the API, a script), a tiny temperature or a seed torch
    cannot take is a ConfigError (400) naming the field, never an engine failure (503)."""
    with pytest.raises(ConfigError) as info:
        SamplingParams(**values)  # type: ignore[arg-type]
    assert info.value.context["param"] == field


def test_full_weights_serve_as_a_version_beside_adapters(
    world: World, engine: TransformersEngine
) -> None:
    """A version with full weights (here the base itself, registered as a version) is
    served from its own verified files with no adapter, in the same batches as adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = world.store.get_base_model("tiny").source
    digest = world.artifacts.put_dir(Path(source), kind="full").digest
    full = world.store.create_model_version(
        "bot", kind="full", artifact_digest=digest, base_model="tiny", run_id=None,
        lineage={"prompt_template": "alpaca"}, metrics={},
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer(world.prompts[0], return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert engine.generate(full, world.prompts[0], GREEDY).text == expected
    # mixed with adapters in one batch: each row as it is alone
    jobs = [(v, world.prompts[i], GREEDY) for i, v in enumerate([full, *world.good[:2], full])]
    alone = _one_at_a_time(engine, jobs)
    together = [s.result().text for s in [engine.stream(v, p, q) for v, p, q in jobs]]
    assert together == alone
    assert full.ref not in engine.loaded()  # it takes no adapter slot


def test_the_engine_places_its_models_on_the_device_and_dtype_given(world: World) -> None:
    assert str(placement()) == ("cuda bfloat16" if torch.cuda.is_available() else "cpu float32")
    bf16 = TransformersEngine(world.artifacts, max_adapters=2, store=world.store,
                              placement=placement("cpu", "bfloat16"))  # fmt: skip
    try:
        jobs = [(v, world.prompts[0], GREEDY) for v in (world.good[0], world.chatty)]
        answers = [s.result() for s in [bf16.stream(v, p, q) for v, p, q in jobs]]
        assert answers[1].completion_tokens == GREEDY.max_tokens  # chatty: never ends early
        assert all(a.text for a in answers[1:])
    finally:
        bf16.close()
    for device, dtype, said in (
        ("tpu", "auto", "unknown --device"),
        ("meta", "auto", "not served"),
        ("cpu", "float16", "not supported on the CPU"),
        ("cpu", "int8", "unknown --dtype"),
    ):
        with pytest.raises(ConfigError, match=said):
            placement(device, dtype)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            placement("cuda", "auto")
