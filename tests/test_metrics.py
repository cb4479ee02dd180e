"""Tests of modelyard.evaluation metrics, perplexity and evaluate_model (on a tiny real model)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from modelyard.base import TinyBaseInfo, create_tiny_base, load_base
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain
from modelyard.data._templates import template_for
from modelyard.errors import ConfigError, DataError
from modelyard.evaluation import (
    METRICS,
    EvalReport,
    accuracy,
    encode_pair,
    evaluate_model,
    exact_match,
    macro_f1,
    perplexity,
    renderer_for,
    rouge_l,
    token_f1,
)
from modelyard.training import encode_row

QUICK = {"steps": 5, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}

# --- text metrics -----------------------------------------------------------------


def test_exact_match_normalizes_case_whitespace_and_edge_punctuation() -> None:
    assert exact_match(["Auto.", " property\n", "wi-fi"], ["auto", "Property", "wifi"]) == 2 / 3


def test_token_f1_is_squad_style_bag_of_tokens() -> None:
    # pred tokens [cat, sat, on, mat] vs [cat, sat]: P = 2/4, R = 2/2, F1 = 2/3
    assert token_f1(["The cat sat on the mat."], ["a cat sat"]) == pytest.approx(2 / 3)
    # punctuation splits: [wi, fi, down] vs [wifi, down]: P = 1/3, R = 1/2, F1 = 0.4
    assert token_f1(["Wi-Fi down!"], ["wifi down"]) == pytest.approx(0.4)
    # repeated tokens count once per occurrence: [a_, a_] ∩ [a_] = 1 -> P = 1/2, R = 1
    assert token_f1(["yes yes"], ["yes"]) == pytest.approx(2 / 3)
    # both empty after normalisation is right; only one empty is wrong; mean over rows
    assert token_f1(["the", "", "auto"], ["a", "auto", "auto"]) == pytest.approx((1 + 0 + 1) / 3)


def test_rouge_l_is_the_mean_lcs_f_measure() -> None:
    # reference "the cat", prediction "the cat sat": LCS 2, P = 2/3, R = 1, F = 0.8
    assert rouge_l(["the cat sat"], ["the cat"]) == pytest.approx(0.8)
    assert rouge_l(["the cat sat", "dog"], ["the cat", "dog"]) == pytest.approx(0.9)
    # "cat the" vs "the cat": LCS 1, P = R = 1/2
    assert rouge_l(["cat the"], ["the cat"]) == pytest.approx(0.5)


def test_rouge_l_drops_non_ascii_as_documented() -> None:
    assert rouge_l(["日本"], ["日本"]) == 0.0
    assert rouge_l(["über café"], ["uber cafe"]) == 0.0


def test_accuracy_compares_normalized_labels() -> None:
    assert accuracy(["Network.", "auth", "billing"], ["network", "billing", "billing"]) == 2 / 3


def test_macro_f1_averages_per_label_f1() -> None:
    # a: TP 1, FP 1, FN 1 -> 1/2; b: TP 1, FP 1, FN 0 -> 2/3; c: TP 0, FN 1 -> 0
    refs, preds = ["a", "a", "b", "c"], ["a", "b", "b", "A."]
    assert macro_f1(preds, refs) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert macro_f1(["x", "y"], ["x", "y"]) == 1.0


def test_macro_f1_counts_an_off_label_answer_as_its_own_label() -> None:
    # labels x (F1 1), y (F1 0: never predicted), banana (F1 0: never a reference)
    assert macro_f1(["x", "banana"], ["x", "y"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("metric", [exact_match, token_f1, rouge_l, accuracy, macro_f1])
def test_metrics_refuse_empty_and_mismatched_input(metric: Any) -> None:
    with pytest.raises(DataError, match="zero examples"):
        metric([], [])
    with pytest.raises(DataError, match="2 predictions for 1 references"):
        metric(["a", "b"], ["a"])


# --- rendering --------------------------------------------------------------------


def test_rows_render_with_the_training_template_of_their_format() -> None:
    row = {"text": " The VPN drops. ", "label": "network"}
    assert renderer_for("classification")(row) == template_for("classification").render(row)
    assert renderer_for("alpaca")({"instruction": "Say hi.", "output": "hi"}) == (
        "### Instruction:\nSay hi.\n\n### Response:\n",
        "hi",
    )
    assert renderer_for("chat", lambda r: ("p", "r"))(row) == ("p", "r")


# --- a tiny real model --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    corpus = domain_corpus(DOMAINS, 300, seed=0)
    info: TinyBaseInfo = create_tiny_base(corpus, tmp_path_factory.mktemp("base") / "tiny", **QUICK)
    return load_base(info.path)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return synthetic_domain(DOMAINS[0], 6, seed=1)


def test_encode_pair_matches_training_tokenization(tiny: tuple[Any, Any], rows: Any) -> None:
    _, tokenizer = tiny
    labelled = [{"text": row["input"], "label": row["output"]} for row in rows]
    for data_format, examples in (("alpaca", rows), ("classification", labelled)):
        template = template_for(data_format, tokenizer)
        for row in examples:
            ids, labels = encode_pair(tokenizer, *template.render(row))
            features = encode_row(tokenizer, row, 512, template)
            assert ids == features["input_ids"]
            assert labels == features["labels"]


def test_perplexity_is_exp_of_the_training_loss(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    features = encode_row(tokenizer, rows[0], max_seq_len=512)
    with torch.no_grad():
        loss = model(
            input_ids=torch.tensor([features["input_ids"]]),
            labels=torch.tensor([features["labels"]]),
        ).loss
    assert perplexity(model, tokenizer, rows[:1]) == pytest.approx(math.exp(float(loss)), rel=1e-4)


def test_perplexity_does_not_depend_on_batching(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    one_by_one = perplexity(model, tokenizer, rows, batch_size=1)
    batched = perplexity(model, tokenizer, rows, batch_size=4)
    assert math.isfinite(one_by_one) and one_by_one > 1.0
    assert batched == pytest.approx(one_by_one, rel=1e-4)


def test_perplexity_refuses_a_row_over_the_length_limit(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    with pytest.raises(DataError, match=r"row 1 is \d+ tokens long, over the limit of 8"):
        perplexity(model, tokenizer, rows, max_seq_len=8)


def test_evaluate_model_reports_every_requested_metric(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    report = evaluate_model(model, tokenizer, rows, metrics=list(METRICS), batch_size=4)
    assert list(report.metrics) == list(METRICS)
    assert report.n == len(rows) == len(report.predictions)
    assert report.latency_mode == "sequential"
    assert 0 < report.metrics["p50_latency_ms"] <= report.metrics["p95_latency_ms"]
    assert all(p.latency_ms is not None and p.latency_ms > 0 for p in report.predictions)
    assert math.isfinite(report.metrics["perplexity"]) and report.metrics["perplexity"] > 1
    assert report.metrics["peak_memory_mb"] == report.peak_rss_mb > 0
    assert report.peak_cuda_mb is None  # the tests run on CPU
    for name in ("exact_match", "token_f1", "rouge_l", "accuracy", "macro_f1"):
        assert 0.0 <= report.metrics[name] <= 1.0
    assert [p.reference for p in report.predictions] == [row["output"] for row in rows]
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["metrics"]["perplexity"] == pytest.approx(report.metrics["perplexity"])
    assert data["predictions"][0].keys() == {
        "index",
        "reference",
        "predicted",
        "matched",
        "latency_ms",
    }


def test_evaluate_model_scores_a_right_answer(tiny: tuple[Any, Any], rows: Any) -> None:
    """Use the model's own greedy answers as references: every metric must then be perfect."""
    model, tokenizer = tiny
    first = evaluate_model(model, tokenizer, rows, metrics=["exact_match"], max_new_tokens=3)
    assert first.latency_mode == "batched"
    assert all(p.latency_ms is None for p in first.predictions)
    answers = [
        {**row, "output": p.predicted} for row, p in zip(rows, first.predictions, strict=True)
    ]
    answers = [row for row in answers if row["output"]]
    assert answers, "the tiny model generated only empty answers"
    second = evaluate_model(
        model,
        tokenizer,
        answers,
        metrics=["exact_match", "token_f1", "accuracy", "macro_f1"],
        max_new_tokens=3,
    )
    assert second.metrics == {"exact_match": 1.0, "token_f1": 1.0, "accuracy": 1.0, "macro_f1": 1.0}
    assert all(p.matched for p in second.predictions)


def test_evaluate_model_classification_rows(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    labelled = [{"text": row["input"], "label": row["output"]} for row in rows]
    report = evaluate_model(
        model, tokenizer, labelled, metrics=["accuracy", "macro_f1"], format="classification"
    )
    assert report.format == "classification"
    assert [p.reference for p in report.predictions] == [row["label"] for row in labelled]


def test_evaluate_model_chat_rows_with_the_default_or_a_given_render(
    tiny: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny
    chats = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "auto"}]}
    ]
    report = evaluate_model(
        model, tokenizer, chats, metrics=["exact_match", "perplexity"], format="chat"
    )
    assert report.predictions[0].reference == "auto"
    assert math.isfinite(report.metrics["perplexity"])

    def render(row: Mapping[str, Any]) -> tuple[str, str]:
        *history, last = row["messages"]
        return render_prompt({"instruction": history[-1]["content"]}), last["content"].upper()

    custom = evaluate_model(
        model, tokenizer, chats, metrics=["exact_match"], format="chat", render=render
    )
    assert custom.predictions[0].reference == "AUTO"


def test_text_rows_get_perplexity_without_generating(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    texts = [{"text": doc} for doc in domain_corpus(DOMAINS, 3, seed=5)]
    report = evaluate_model(model, tokenizer, texts, metrics=["perplexity"], format="text")
    assert math.isfinite(report.metrics["perplexity"]) and report.metrics["perplexity"] > 1
    assert report.predictions == []
    assert report.latency_mode == "none"
    with pytest.raises(ConfigError, match="'exact_match' needs reference answers"):
        evaluate_model(
            model, tokenizer, texts, metrics=["perplexity", "exact_match"], format="text"
        )


def test_unknown_metric_names_the_nearest_valid_one(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    with pytest.raises(ConfigError) as info:
        evaluate_model(model, tokenizer, rows, metrics=["exact_match", "rouge-l"])
    assert "unknown metric 'rouge-l'" in info.value.message
    assert "Did you mean 'rouge_l'?" in info.value.hint
    with pytest.raises(ConfigError, match="no metrics"):
        evaluate_model(model, tokenizer, rows, metrics=[])


def test_bad_format_and_sizes_are_config_errors(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    with pytest.raises(ConfigError) as info:
        evaluate_model(model, tokenizer, rows, metrics=["exact_match"], format="alpacca")
    assert "Did you mean 'alpaca'?" in info.value.one_line()
    with pytest.raises(ConfigError, match="at least 1"):
        evaluate_model(model, tokenizer, rows, metrics=["exact_match"], batch_size=0)


def test_a_bad_row_is_named_by_its_number(tiny: tuple[Any, Any], rows: Any) -> None:
    model, tokenizer = tiny
    broken = [rows[0], {"instruction": "Classify.", "input": "x"}]
    with pytest.raises(DataError, match=r"row 2: an example has no 'output'"):
        evaluate_model(model, tokenizer, broken, metrics=["exact_match"])
    with pytest.raises(DataError, match="no rows"):
        evaluate_model(model, tokenizer, [], metrics=["exact_match"])


def test_report_to_dict_replaces_an_infinite_perplexity() -> None:
    report = EvalReport(
        metrics={"perplexity": math.inf, "exact_match": 0.5},
        n=2,
        predictions=[],
        format="alpaca",
        max_new_tokens=4,
        batch_size=1,
        latency_mode="batched",
        seconds=0.1,
        peak_rss_mb=10.0,
    )
    data = report.to_dict()
    assert data["metrics"] == {"perplexity": None, "exact_match": 0.5}
    assert json.loads(json.dumps(data, allow_nan=False))["n"] == 2
