"""Tests of modelyard.training and modelyard.evaluation.

The tests use a structurally complete but barely trained base. The quickstart's
promise (one tiny base shared by two tenants, each with a LoRA adapter that clearly
beats the base on held-out rows) is tests/test_quickstart.py's: the same base, rows,
settings and thresholds, through ``modelyard quickstart``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from modelyard.base import create_tiny_base, load_base, weight_hashes
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain
from modelyard.data._templates import template_for
from modelyard.errors import ArtifactNotFound, ConfigError, DataError, TrainingError
from modelyard.evaluation import (
    BASE_ADAPTER,
    exact_match,
    generate,
    load_adapter,
    load_adapters,
    normalize,
)
from modelyard.training import IGNORE_INDEX, TrainSettings, encode_row, train_model
from modelyard.training._dataset import PackedCollator, pack_features

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}
QUICK_LORA = TrainSettings(max_steps=3, batch_size=4, dropout=0.1)


@pytest.fixture(scope="module")
def quick_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = domain_corpus(DOMAINS, 300, seed=0)
    return create_tiny_base(corpus, tmp_path_factory.mktemp("quick") / "base", **QUICK_BASE).path


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return synthetic_domain("it-support", 12, seed=0)


# --- metrics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Auto.", "auto"),
        ("  AUTO\n", "auto"),
        ('"health!"', "health"),
        ("wi-fi   issue", "wi-fi issue"),
        ("...", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_exact_match() -> None:
    assert exact_match(["Auto.", "health", "x"], ["auto", "property", "x"]) == pytest.approx(2 / 3)
    with pytest.raises(DataError):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(DataError):
        exact_match([], [])


# --- settings and features --------------------------------------------------------


def test_lora_settings_validate_into_config_error() -> None:
    settings = TrainSettings.from_mapping({"r": 4, "target_modules": "all-linear"})
    assert settings.r == 4
    assert settings.target_modules == "all-linear"
    with pytest.raises(ConfigError, match="r"):
        TrainSettings.from_mapping({"r": 0})
    with pytest.raises(ConfigError, match="bogus"):
        TrainSettings.from_mapping({"bogus": 1})


def test_encode_row_puts_the_loss_on_the_response_only(
    quick_base: Path, rows: list[dict[str, str]]
) -> None:
    _, tokenizer = load_base(quick_base)
    features = encode_row(tokenizer, rows[0], max_seq_len=256)
    prompt_ids = tokenizer(render_prompt(rows[0]))["input_ids"]
    n_prompt = len(prompt_ids)
    assert features["input_ids"][:n_prompt] == prompt_ids
    assert features["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer = features["labels"][n_prompt:]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == rows[0]["output"]
    assert features["input_ids"][n_prompt:] == answer
    with pytest.raises(DataError, match="max_seq_len"):
        encode_row(tokenizer, rows[0], max_seq_len=10)


# --- train_model, quick ------------------------------------------------------------


def test_train_lora_saves_only_the_adapter(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    calls: list[tuple[int, int, float]] = []
    result = train_model(
        quick_base,
        rows,
        tmp_path / "adapter",
        QUICK_LORA,
        eval_rows=rows[:4],
        progress=lambda step, total, loss: calls.append((step, total, loss)),
    )
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert [c[0] for c in calls] == [1, 2, 3]
    assert {c[1] for c in calls} == {3}
    assert result.steps == 3
    assert result.examples == len(rows)
    assert 0 < result.trainable_parameters < result.total_parameters
    assert result.train_tokens > 0 and result.tokens_per_second > 0
    assert result.eval_loss is not None and result.eval_loss > 0
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no checkpoints or staging


def test_train_lora_is_deterministic(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    first = train_model(quick_base, rows, tmp_path / "a", QUICK_LORA)
    second = train_model(quick_base, rows, tmp_path / "b", QUICK_LORA)
    weights = "adapter_model.safetensors"
    assert (first.adapter_dir / weights).read_bytes() == (second.adapter_dir / weights).read_bytes()
    config = "adapter_config.json"
    assert (first.adapter_dir / config).read_text() == (second.adapter_dir / config).read_text()
    other_seed = train_model(
        quick_base, rows, tmp_path / "c", QUICK_LORA.model_copy(update={"seed": 1})
    )
    assert weight_hashes(other_seed.adapter_dir) != weight_hashes(first.adapter_dir)


def test_train_lora_rejects_bad_inputs(tmp_path: Path, quick_base: Path) -> None:
    with pytest.raises(DataError):
        train_model(quick_base, [], tmp_path / "a", QUICK_LORA)
    with pytest.raises(DataError, match="output"):
        train_model(quick_base, [{"instruction": "x", "input": "y"}], tmp_path / "a", QUICK_LORA)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "f").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="not empty"):
        train_model(quick_base, [{"instruction": "x", "output": "y"}], occupied, QUICK_LORA)


# --- formats, packing, full fine-tuning, checkpoints --------------------------------


def test_templates_mask_each_format_on_its_response(quick_base: Path) -> None:
    _, tokenizer = load_base(quick_base)
    chat = {
        "messages": [
            {"role": "system", "content": "Route the ticket."},
            {"role": "user", "content": "vpn is down"},
            {"role": "assistant", "content": "network"},
        ]
    }
    cases = [
        ("chat", chat, "network"),
        ("classification", {"text": "vpn is down", "label": "network"}, "network"),
        ("text", {"text": "hello there"}, "hello there"),
    ]
    for fmt, row, response in cases:
        template = template_for(fmt, tokenizer)
        features = encode_row(tokenizer, row, 128, template)
        answer = [t for t in features["labels"] if t != IGNORE_INDEX]
        assert tokenizer.decode(answer[:-1]) == response, fmt
    assert template_for("chat", tokenizer).name == "chat-fallback"  # tiny tokenizer: no template
    prompt = template_for("chat", tokenizer).prompt(chat)
    assert prompt.endswith("<|user|>\nvpn is down\n<|assistant|>\n")
    with pytest.raises(DataError, match="last message"):
        template_for("chat").render({"messages": chat["messages"][:2]})


def test_packed_rows_do_not_attend_across_examples(
    quick_base: Path, rows: list[dict[str, str]]
) -> None:
    model, tokenizer = load_base(quick_base)
    first, second = (encode_row(tokenizer, row, 128) for row in rows[:2])
    (packed,) = pack_features([first, second], 256)
    starts = [i for i, p in enumerate(packed["position_ids"]) if p == 0]
    assert len(starts) == 2
    batch = PackedCollator(tokenizer.pad_token_id)([packed, second])  # second row gets padding
    with torch.no_grad():
        # As in training: no KV cache (transformers reads packed position ids only then).
        together = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        for example in (first, second):
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            n = len(example["input_ids"])
            start = next(
                s for s in starts if packed["input_ids"][s : s + n] == example["input_ids"]
            )
            # Each example inside the packed row sees exactly what it sees alone.
            assert torch.allclose(together[0, start : start + n], alone, atol=1e-5)
        alone = model(input_ids=torch.tensor([second["input_ids"]])).logits[0]
    # The padded copy in the next row too: padding is a segment of its own.
    assert torch.allclose(together[1, : len(second["input_ids"])], alone, atol=1e-5)


def test_packing_trains_fewer_longer_rows(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    one_epoch = QUICK_LORA.model_copy(update={"max_steps": None, "epochs": 1.0})
    padded = train_model(quick_base, rows, tmp_path / "a", one_epoch)
    packed = train_model(
        quick_base, rows, tmp_path / "b", one_epoch.model_copy(update={"packing": True})
    )
    assert padded.steps == math.ceil(len(rows) / one_epoch.batch_size)
    assert packed.steps < padded.steps  # several examples per row of max_seq_len tokens
    assert math.isfinite(packed.train_loss)
    assert (packed.output_dir / "adapter_model.safetensors").is_file()


def test_full_fine_tuning_saves_a_standalone_model(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    settings = TrainSettings(method="full", max_steps=2, batch_size=4, learning_rate=1e-3)
    result = train_model(quick_base, rows, tmp_path / "full", settings)
    names = {p.name for p in result.output_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert result.trainable_parameters == result.total_parameters
    model, tokenizer = load_base(result.output_dir)  # loads like any HF model
    assert generate(model, tokenizer, [render_prompt(rows[0])], max_new_tokens=2)


def test_early_stopping_needs_eval_rows(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    settings = QUICK_LORA.model_copy(update={"early_stopping": 1, "eval_every": 1, "max_steps": 8})
    with pytest.raises(ConfigError, match="early_stopping"):
        train_model(quick_base, rows, tmp_path / "a", settings)
    # A huge learning rate makes the eval loss rise at once: patience 1 stops early.
    wild = settings.model_copy(update={"learning_rate": 5.0, "warmup_ratio": 0.0})
    result = train_model(
        quick_base, rows, tmp_path / "b", wild, eval_rows=rows[:4], checkpoint_dir=tmp_path / "ck"
    )
    assert result.stopped_early and result.steps < 8
    assert any("eval_loss" in entry for entry in result.history)


def test_resume_continues_from_the_last_checkpoint(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    settings = QUICK_LORA.model_copy(update={"max_steps": 4, "save_every": 2})
    checkpoints = tmp_path / "ck"

    def crash(entry: dict[str, float]) -> None:
        if entry["step"] >= 3:
            raise KeyboardInterrupt  # the machine went away after the step-2 checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_model(
            quick_base, rows, tmp_path / "a", settings, checkpoint_dir=checkpoints, on_log=crash
        )
    assert (checkpoints / "checkpoint-2").is_dir()
    resumed = train_model(
        quick_base, rows, tmp_path / "a", settings, checkpoint_dir=checkpoints, resume=True
    )
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-2")
    assert resumed.steps == 4
    assert [int(e["step"]) for e in resumed.history if "loss" in e] == [3, 4]
    with pytest.raises(TrainingError, match="no checkpoint"):
        train_model(
            quick_base,
            rows,
            tmp_path / "b",
            settings,
            checkpoint_dir=tmp_path / "none",
            resume=True,
        )


def test_only_the_newest_checkpoints_are_kept_and_resume_still_works(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    settings = QUICK_LORA.model_copy(update={"max_steps": 6, "save_every": 1})
    checkpoints = tmp_path / "ck"

    def crash(entry: dict[str, float]) -> None:
        if entry["step"] >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(
            quick_base, rows, tmp_path / "a", settings, checkpoint_dir=checkpoints, on_log=crash
        )
    kept = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-3", "checkpoint-4"]  # keep_checkpoints defaults to 2
    resumed = train_model(
        quick_base, rows, tmp_path / "a", settings, checkpoint_dir=checkpoints, resume=True
    )
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.steps == 6
    kept = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-5", "checkpoint-6"]


def test_keep_checkpoints_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        TrainSettings.from_mapping({"keep_checkpoints": 0})


# --- generation and adapters, quick -----------------------------------------------


def test_batched_generation_matches_one_by_one(
    quick_base: Path, rows: list[dict[str, str]]
) -> None:
    model, tokenizer = load_base(quick_base)
    prompts = [render_prompt(row) for row in rows[:5]]
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    single = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored after generation


def test_several_adapters_on_one_base(
    tmp_path: Path, quick_base: Path, rows: list[dict[str, str]]
) -> None:
    settings = QUICK_LORA.model_copy(update={"learning_rate": 0.05, "max_steps": 4})
    a = train_model(quick_base, rows, tmp_path / "a", settings).adapter_dir
    b = train_model(quick_base, rows, tmp_path / "b", settings.model_copy(update={"seed": 7}))
    prompts = [render_prompt(row) for row in rows[:3]]
    expected = {}
    for name, directory in (("a", a), ("b", b.adapter_dir)):
        model, tokenizer = load_base(quick_base)
        expected[name] = generate(
            load_adapter(model, directory), tokenizer, prompts, max_new_tokens=5
        )
    model, tokenizer = load_base(quick_base)
    expected[BASE_ADAPTER] = generate(model, tokenizer, prompts, max_new_tokens=5)
    served = load_adapters(model, {"a": a, "b": b.adapter_dir})
    names = ["a", "b", BASE_ADAPTER]
    mixed = generate(served, tokenizer, prompts, max_new_tokens=5, adapter_names=names)
    assert mixed == [expected[name][i] for i, name in enumerate(names)]
    assert expected["a"] != expected[BASE_ADAPTER]  # the adapters really change the outputs
    assert expected["a"] != expected["b"]


def test_load_adapter_on_a_missing_dir(tmp_path: Path, quick_base: Path) -> None:
    model, _ = load_base(quick_base)
    with pytest.raises(ArtifactNotFound, match=r"adapter_config\.json"):
        load_adapter(model, tmp_path)
