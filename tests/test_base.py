"""Tests of modelyard.data (prompt template, synthetic data) and modelyard.base."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelyard.base import TinyBaseInfo, create_tiny_base, load_base, weight_hashes
from modelyard.data import (
    DOMAINS,
    PROMPT_TEMPLATE_NAME,
    domain_corpus,
    render_prompt,
    synthetic_domain,
)
from modelyard.errors import BaseModelNotFound, ConfigError, DataError, DatasetNotFound

QUICK = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}
"""A structurally complete base in about a second: enough to test files and loading."""


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return domain_corpus(DOMAINS, 300, seed=0)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> TinyBaseInfo:
    return create_tiny_base(corpus, tmp_path_factory.mktemp("base") / "tiny", **QUICK)


# --- data -------------------------------------------------------------------------


def test_render_prompt_with_and_without_input() -> None:
    row = {"instruction": "Classify.", "input": "The VPN drops.", "output": "network"}
    assert render_prompt(row) == (
        "### Instruction:\nClassify.\n\n### Input:\nThe VPN drops.\n\n### Response:\n"
    )
    assert render_prompt({"instruction": "Say hi.", "input": "  ", "output": "hi"}) == (
        "### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert PROMPT_TEMPLATE_NAME == "alpaca"


def test_render_prompt_needs_an_instruction() -> None:
    with pytest.raises(DataError, match="instruction"):
        render_prompt({"input": "x", "output": "y"})


@pytest.mark.parametrize("domain", DOMAINS)
def test_synthetic_domain_is_deterministic_balanced_and_distinct(domain: str) -> None:
    rows = synthetic_domain(domain, 150, seed=3)
    assert rows == synthetic_domain(domain, 150, seed=3)
    assert rows != synthetic_domain(domain, 150, seed=4)
    assert synthetic_domain(domain, 40, seed=3) == rows[:40]
    assert len({row["input"] for row in rows}) == 150
    assert {row.keys() == {"instruction", "input", "output"} for row in rows} == {True}
    assert len({row["instruction"] for row in rows}) == 1
    counts = {
        label: sum(r["output"] == label for r in rows) for label in {r["output"] for r in rows}
    }
    assert len(counts) == 3
    assert max(counts.values()) - min(counts.values()) <= 15


def test_unknown_domain_names_the_valid_ones() -> None:
    with pytest.raises(DataError) as info:
        synthetic_domain("legal", 3, seed=0)
    assert all(domain in info.value.one_line() for domain in DOMAINS)
    with pytest.raises(DataError):
        domain_corpus(["it-support", "legal"], 3, seed=0)


def test_corpus_mentions_labels_but_never_the_prompt_format(corpus: list[str]) -> None:
    text = "\n".join(corpus)
    assert len(corpus) == 300
    for marker in ("###", "Instruction", "Response:", "Input:"):
        assert marker not in text
    labels = {row["output"] for domain in DOMAINS for row in synthetic_domain(domain, 9, 0)}
    assert all(f" {label} " in text for label in labels)
    assert domain_corpus(DOMAINS, 300, seed=0) == corpus


def test_corpus_does_not_contain_task_inputs(corpus: list[str]) -> None:
    inputs = {row["input"] for domain in DOMAINS for row in synthetic_domain(domain, 200, 0)}
    assert not any(text in doc for doc in corpus for text in inputs)


# --- create_tiny_base -------------------------------------------------------------


def test_tiny_base_reloads_with_auto_classes(tiny_base: TinyBaseInfo) -> None:
    files = {path.name for path in tiny_base.path.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith(".bin") for name in files)
    model = AutoModelForCausalLM.from_pretrained(tiny_base.path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base.path, local_files_only=True)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == tiny_base.parameters
    assert len(tokenizer) == tiny_base.vocab_size == model.config.vocab_size
    assert tiny_base.steps == QUICK["steps"]
    assert tiny_base.final_loss > 0


def test_tokenizer_round_trips_text_and_has_special_tokens(tiny_base: TinyBaseInfo) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base.path, local_files_only=True)
    text = "Hi team, the VPN disconnects every few minutes — ünïcode & 123!\nThanks."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token} == {
        "<s>",
        "</s>",
        "<pad>",
    }
    answer = tokenizer("auto", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(answer) == "auto"


def test_load_base_returns_model_and_tokenizer(tiny_base: TinyBaseInfo) -> None:
    model, tokenizer = load_base(tiny_base.path)
    assert not model.training
    assert tokenizer.pad_token_id is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    model_from_str, _ = load_base(str(tiny_base.path))
    assert model_from_str.config.hidden_size == QUICK["hidden_size"]


def test_same_seed_gives_identical_weights(tmp_path: Path, corpus: list[str]) -> None:
    first = create_tiny_base(corpus, tmp_path / "a", **QUICK, seed=1)
    second = create_tiny_base(corpus, tmp_path / "b", **QUICK, seed=1)
    assert weight_hashes(first.path) == weight_hashes(second.path)


def test_progress_reports_every_step(tmp_path: Path, corpus: list[str]) -> None:
    calls: list[tuple[int, int, float]] = []
    create_tiny_base(
        corpus, tmp_path / "b", **QUICK, progress=lambda s, n, loss: calls.append((s, n, loss))
    )
    assert [c[0] for c in calls] == list(range(1, QUICK["steps"] + 1))
    assert {c[1] for c in calls} == {QUICK["steps"]}


def test_corpus_file_one_document_per_line(tmp_path: Path, corpus: list[str]) -> None:
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(corpus) + "\n", encoding="utf-8")
    info = create_tiny_base(corpus_file, tmp_path / "b", **QUICK)
    assert info.corpus_documents == len(corpus)


def test_missing_or_empty_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="does not exist"):
        create_tiny_base(tmp_path / "nope.txt", tmp_path / "b", **QUICK)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        create_tiny_base(empty, tmp_path / "b", **QUICK)
    with pytest.raises(DataError, match="too small"):
        create_tiny_base(["one short document"], tmp_path / "b", **QUICK)
    assert not (tmp_path / "b").exists()


def test_refuses_to_overwrite_unless_asked(tmp_path: Path, corpus: list[str]) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="not empty"):
        create_tiny_base(corpus, out, **QUICK)
    create_tiny_base(corpus, out, **QUICK, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging leftovers


# --- load_base and weight_hashes --------------------------------------------------


def test_load_base_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(BaseModelNotFound, match=str(missing)):
        load_base(missing)
    with pytest.raises(BaseModelNotFound, match="does not exist"):
        load_base("./no-such-model-dir")


def test_load_base_on_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(BaseModelNotFound, match=r"no config\.json"):
        load_base(tmp_path)
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BaseModelNotFound) as info:
        load_base(tmp_path)
    assert "\n" not in info.value.message


def test_weight_hashes_are_sha256_of_safetensors(tiny_base: TinyBaseInfo) -> None:
    hashes = weight_hashes(tiny_base.path)
    weights = tiny_base.path / "model.safetensors"
    assert hashes == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}


def test_weight_hashes_of_missing_or_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(BaseModelNotFound):
        weight_hashes(tmp_path / "missing")
    with pytest.raises(BaseModelNotFound, match="safetensors"):
        weight_hashes(tmp_path)
