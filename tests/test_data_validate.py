"""Dataset files, validation reports and splits, through the modelyard.data library API."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelyard.base import create_tiny_base, load_tokenizer
from modelyard.data import (
    DOMAINS,
    FORMATS,
    REQUIRED_FIELDS,
    RULES,
    check_rules,
    domain_corpus,
    find_pii,
    load_rows,
    split_rows,
    synthetic_domain,
    validate_rows,
    write_jsonl,
)
from modelyard.data._pii import iban_ok, luhn_ok
from modelyard.errors import ConfigError, DataError, DatasetNotFound

ALPACA = [
    {"instruction": "Route the ticket.", "input": "The VPN drops every hour.", "output": "network"},
    {
        "instruction": "Route the ticket.",
        "input": "Reset my password please.",
        "output": "accounts",
    },
    {"instruction": "Summarize.", "input": "", "output": "A short summary."},
]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows in the file type of ``path``'s extension."""
    if path.suffix == ".jsonl":
        write_jsonl(rows, path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- loading ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_type_loads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"train{suffix}", ALPACA)
    assert load_rows(path, "alpaca") == ALPACA


def test_chat_rows_load_from_jsonl_parquet_and_csv(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rows = [{"messages": messages}]
    assert load_rows(_write(tmp_path / "c.jsonl", rows), "chat") == rows
    assert load_rows(_write(tmp_path / "c.parquet", rows), "chat") == rows
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('messages\n"' + json.dumps(messages).replace('"', '""') + '"\n')
    assert load_rows(csv_path, "chat") == rows


def test_required_fields_per_format() -> None:
    assert REQUIRED_FIELDS == {
        "alpaca": ("instruction", "output"),
        "chat": ("messages",),
        "text": ("text",),
        "classification": ("text", "label"),
    }
    assert FORMATS["alpaca"].optional == ("input",)


def test_unknown_extension_names_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("hello\n")
    with pytest.raises(ConfigError) as exc:
        load_rows(path, "text")
    assert ".txt" in exc.value.message
    assert all(ext in exc.value.hint for ext in (".jsonl", ".json", ".csv", ".parquet"))


def test_unknown_format_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_rows(_write(tmp_path / "t.jsonl", ALPACA), "alpacca")
    assert "'alpaca'" in exc.value.hint


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="does not exist"):
        load_rows(tmp_path / "nope.jsonl", "alpaca")


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_files_are_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / ("e.json" if content == "[]" else "e.jsonl")
    path.write_text(content)
    with pytest.raises(DataError, match="has no rows"):
        load_rows(path, "text")


def test_unparseable_jsonl_line_gives_the_line_number(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b",\n')
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        load_rows(path, "text")


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n["b"]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object, got list"):
        load_rows(path, "text")


def test_json_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"text": "a"}')
    with pytest.raises(DataError, match="not a list of rows"):
        load_rows(path, "text")


def test_csv_row_with_too_many_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,a\nhi, there,b\n")
    with pytest.raises(DataError, match="line 3 has more fields than the header"):
        load_rows(path, "classification")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_rows(path, "text")


def test_missing_column_names_it_and_the_columns_the_file_has(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", [{"instruction": "Do it.", "response": "Done."}])
    with pytest.raises(DataError) as exc:
        load_rows(path, "alpaca")
    assert "no 'output' column" in exc.value.message
    assert "its columns are: instruction, response" in exc.value.message


def test_missing_column_suggests_the_format_the_columns_fit(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [{"text": "great", "label": "pos"}])
    with pytest.raises(DataError) as exc:
        load_rows(path, "alpaca")
    assert "classification" in exc.value.hint


# --- validation --------------------------------------------------------------------


def test_clean_rows_trip_no_rule() -> None:
    report = validate_rows(ALPACA, "alpaca", eval_rows=[ALPACA[0] | {"input": "Other text."}])
    assert report.rows == 3 and report.eval_rows == 1
    assert report.tripped(["all"]) == []
    assert set(report.findings().values()) == {0}


def test_missing_and_empty_fields_with_row_numbers() -> None:
    rows = [
        {"text": "fine", "label": "a"},
        {"text": "  ", "label": "b"},
        {"label": "a"},
        {"text": "no label", "label": None},
    ]
    report = validate_rows(rows, "classification")
    problems = [(p.row, p.field, p.problem) for p in report.empty_fields]
    assert problems == [(2, "text", "empty"), (3, "text", "missing"), (4, "label", "empty")]
    assert report.tripped(["empty-fields", "duplicates"]) == ["empty-fields"]


def test_malformed_chats_are_reported_per_row() -> None:
    good = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rows: list[dict[str, Any]] = [
        {"messages": [*good, {"role": "assistant", "content": "Hello"}]},
        {"messages": good},
        {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": "hello"},
        {"messages": []},
        {"messages": [*good, {"role": "assistant", "content": " "}]},
    ]
    report = validate_rows(rows, "chat")
    invalid = {p.row: p.problem for p in report.invalid_rows}
    assert set(invalid) == {2, 3, 4, 6}
    assert "empty" in invalid[6]
    assert "last message must be from the assistant" in invalid[2]
    assert "'bot'" in invalid[3]
    assert [(p.row, p.problem) for p in report.empty_fields] == [(5, "empty")]


def test_exact_duplicates_are_grouped_by_row_number() -> None:
    rows = [
        ALPACA[0],
        ALPACA[1],
        ALPACA[0],
        ALPACA[2],
        ALPACA[0] | {"input": "  The VPN drops every hour. "},
    ]
    report = validate_rows(rows, "alpaca")
    assert report.duplicates == [[1, 3, 5]]
    # fields are compared one by one, and rows with nothing in them are not duplicates
    split_differently = [
        {"instruction": "a b", "input": "c", "output": "x"},
        {"instruction": "a", "input": "b c", "output": "x"},
        {"instruction": "", "output": " "},
        {"instruction": " ", "output": ""},
    ]
    assert validate_rows(split_differently, "alpaca").duplicates == []


_LONG = (
    "The quarterly report shows revenue grew in every region, driven by strong demand for "
    "the new storage product line and a recovery in services contracts across Europe"
)


def test_near_duplicates_found_and_different_rows_left_alone() -> None:
    rows = [
        {"text": _LONG},
        {"text": "A completely different sentence about the weather in spring and rain."},
        {"text": _LONG.upper() + "!!"},  # same words: similarity 1.0, not an exact duplicate
        {"text": _LONG.replace("Europe", "Asia")},  # one word changed in 27
        {"text": _LONG.replace("revenue grew", "costs fell").replace("strong", "weak")},
    ]
    report = validate_rows(rows, "text")
    assert report.duplicates == []
    assert report.near_duplicates == [[1, 3, 4]]


def test_exact_duplicates_are_not_reported_again_as_near_duplicates() -> None:
    rows = [{"text": _LONG}, {"text": _LONG}, {"text": _LONG + " again"}]
    report = validate_rows(rows, "text")
    assert report.duplicates == [[1, 2]]
    assert report.near_duplicates == [[1, 3]]


def test_word_lengths_and_rows_over_the_limit() -> None:
    rows = [{"text": "one two three"}, {"text": "one"}, {"text": " ".join(["w"] * 10)}]
    report = validate_rows(rows, "text", max_seq_len=5)
    lengths = report.lengths
    assert (lengths.unit, lengths.tokenizer) == ("words", None)
    assert (lengths.stats.min, lengths.stats.max, lengths.stats.p50) == (1, 10, 3.0)
    assert lengths.stats.mean == pytest.approx(14 / 3, abs=0.01)
    assert lengths.chars.max == 19
    assert lengths.over_max_len == [3]
    assert report.tripped(["over-max-len"]) == ["over-max-len"]


def test_token_lengths_with_a_base_tokenizer(tmp_path: Path) -> None:
    base = tmp_path / "tiny"
    create_tiny_base(
        domain_corpus(DOMAINS, 50, seed=0),
        base,
        steps=1,
        batch_size=2,
        seq_len=16,
        hidden_size=16,
        heads=2,
        vocab_size=300,
    )
    tokenizer = load_tokenizer(base)
    rows = [{"text": "the printer is jammed again"}, {"text": "hi"}]
    report = validate_rows(rows, "text", tokenizer=tokenizer, max_seq_len=3)
    counts = [len(tokenizer(r["text"])["input_ids"]) for r in rows]
    assert report.lengths.unit == "tokens"
    assert report.lengths.tokenizer == str(base)
    assert (report.lengths.stats.min, report.lengths.stats.max) == (min(counts), max(counts))
    assert report.lengths.over_max_len == [i + 1 for i, n in enumerate(counts) if n > 3]


def test_alpaca_lengths_measure_the_rendered_prompt_and_output() -> None:
    row = {"instruction": "Say hi.", "input": "", "output": "Hi there"}
    report = validate_rows([row], "alpaca")
    # "### Instruction:\nSay hi.\n\n### Response:\nHi there" is 8 words
    assert report.lengths.stats.max == 8


def test_label_balance_and_imbalance_rule() -> None:
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(8)] + [
        {"text": "u1", "label": "neg"},
        {"text": "u2", "label": "neg"},
    ]
    report = validate_rows(rows, "classification")
    assert report.labels is not None
    assert report.labels.counts == {"pos": 8, "neg": 2}
    assert report.labels.ratio == 4.0
    assert report.tripped(["imbalance"]) == ["imbalance"]
    lenient = validate_rows(rows, "classification", imbalance_ratio=4.0)
    assert lenient.tripped(["imbalance"]) == []


def test_numeric_labels_are_counted_as_text() -> None:
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 1}]
    labels = validate_rows(rows, "classification").labels
    assert labels is not None and labels.counts == {"1": 2, "0": 1}


def test_alpaca_outputs_are_counted_only_when_they_look_like_classes() -> None:
    routed = synthetic_domain(DOMAINS[0], 40, seed=0)
    labels = validate_rows(routed, "alpaca").labels
    assert labels is not None and labels.field == "output"
    assert sum(labels.counts.values()) == 40 and len(labels.counts) <= 20
    free_text = [dict(r, output=f"answer {i}") for i, r in enumerate(routed)]
    assert validate_rows(free_text, "alpaca").labels is None


PII_ROWS = [
    {"text": "Mail me at jane.doe@example.com today", "label": "a"},
    {"text": "Call (555) 123-4567 or +44 20 7946 0958", "label": "a"},
    {"text": "Card 4111 1111 1111 1111 was charged", "label": "a"},
    {"text": "Pay to DE89 3704 0044 0532 0130 00 please", "label": "b"},
    {"text": "My SSN is 078-05-1120", "label": "b"},
    {"text": "Order 4111 1111 1111 1112 and ref DE89 3704 0044 0532 0130 01", "label": "b"},
    {"text": "Meeting on 2024-01-15 at 10:30, ticket AB-1234, $4,500", "label": "b"},
]
PII_VALUES = [
    "jane.doe@example.com",
    "(555) 123-4567",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "4111111111111111",
    "DE89 3704 0044 0532 0130 00",
    "DE89370400440532013000",
    "078-05-1120",
]


def test_pii_found_with_row_field_and_kind_and_masked() -> None:
    report = validate_rows(PII_ROWS, "classification")
    found = [(p.row, p.field, p.kind, p.masked) for p in report.pii]
    assert found == [
        (1, "text", "email", "****.com"),
        (2, "text", "phone", "****4567"),
        (2, "text", "phone", "****0958"),
        (3, "text", "credit_card", "****1111"),
        (4, "text", "iban", "****3000"),
        (5, "text", "us_ssn", "****1120"),
    ]
    dumped = json.dumps(report.to_dict())
    for value in PII_VALUES:
        assert value not in dumped


def test_pii_inside_chat_messages_names_the_message() -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Hi, I am bob@corp.example"},
                {"role": "assistant", "content": "Hello Bob"},
            ]
        }
    ]
    report = validate_rows(rows, "chat")
    assert [(p.row, p.field, p.kind) for p in report.pii] == [(1, "messages[0].content", "email")]


def test_checksums_of_cards_and_ibans() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and iban_ok("DE89370400440532013000")
    assert not iban_ok("GB82WEST12345698765433")
    assert [p.kind for p in find_pii("ssn 000-12-3456 and 666-12-3456")] == []


def test_leakage_between_train_and_eval_after_normalization() -> None:
    train = [
        {"instruction": "Route the ticket.", "input": "Printer jammed", "output": "hardware"},
        {"instruction": "Route the ticket.", "input": "VPN down", "output": "network"},
        {"instruction": "Route the ticket.", "input": "VPN down", "output": "network"},
    ]
    held_out = [
        {"instruction": "Route the ticket.", "input": "New laptop", "output": "hardware"},
        {"instruction": "route the  ticket.", "input": "vpn DOWN ", "output": "other answer"},
    ]
    report = validate_rows(train, "alpaca", eval_rows=held_out)
    assert report.leakage is not None
    assert [(leak.train_rows, leak.eval_rows) for leak in report.leakage] == [([2, 3], [2])]
    assert report.tripped(["leakage"]) == ["leakage"]
    assert validate_rows(train, "alpaca").leakage is None


def test_report_is_json_with_stable_keys() -> None:
    data = json.loads(json.dumps(validate_rows(ALPACA, "alpaca").to_dict()))
    assert set(data) == {
        "format",
        "rows",
        "columns",
        "empty_fields",
        "invalid_rows",
        "duplicates",
        "near_duplicates",
        "lengths",
        "labels",
        "pii",
        "eval_rows",
        "leakage",
        "near_duplicate_threshold",
        "findings",
    }
    assert set(data["findings"]) == set(RULES)
    assert set(data["lengths"]) == {
        "unit",
        "tokenizer",
        "stats",
        "chars",
        "max_seq_len",
        "over_max_len",
    }
    assert set(data["lengths"]["stats"]) == {"min", "mean", "p50", "p95", "max"}
    assert data["columns"] == ["instruction", "input", "output"]


def test_rules_are_checked_and_all_expands() -> None:
    assert check_rules(["pii", "pii", "duplicates"]) == ["pii", "duplicates"]
    assert check_rules(["all"]) == list(RULES)
    with pytest.raises(ConfigError) as exc:
        check_rules(["near-duplicate"])
    assert "'near-duplicates'" in exc.value.hint and "imbalance" in exc.value.hint


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        validate_rows(ALPACA, "alpaca", max_seq_len=0)
    with pytest.raises(ConfigError):
        validate_rows(ALPACA, "alpaca", imbalance_ratio=0.5)


def test_fifty_thousand_rows_validate_without_pairwise_comparisons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Near-duplicates are found through an index of prefix shingles: the groups the index
    offers as candidates, and the exact comparisons made, grow with the rows, not with
    their pairs (1.25 billion here). Counted, not timed: a busy machine changes the time
    only. (Templated rows: tests/test_dedup_scale.py.)"""
    from modelyard.data import _dedup

    counted = {"candidates": 0, "compared": 0}
    most_similar, overlaps = _dedup._Shingled._most_similar, _dedup._Shingled._overlaps

    def counting_most_similar(self: Any, start: int, size: int, heads: Any) -> Any:
        counted["candidates"] += len(heads)
        return most_similar(self, start, size, heads)

    def counting_overlaps(self: Any, heads: Any, sizes: Any) -> Any:
        counted["compared"] += len(heads)
        return overlaps(self, heads, sizes)

    monkeypatch.setattr(_dedup._Shingled, "_most_similar", counting_most_similar)
    monkeypatch.setattr(_dedup._Shingled, "_overlaps", counting_overlaps)
    rows = [
        {"text": f"row {i} says {i * 7919 % 10007} and {i % 97} things", "label": str(i % 3)}
        for i in range(50_000)
    ]
    for i in range(999, 50_000, 1000):  # 50 near-duplicates of the row before (6 of 7 shingles)
        rows[i] = {"text": "so " + rows[i - 1]["text"], "label": rows[i - 1]["label"]}
    report = validate_rows(rows, "classification")
    assert report.rows == 50_000 and report.duplicates == []
    assert report.near_duplicates == [[i, i + 1] for i in range(999, 50_000, 1000)]
    assert 0 < counted["candidates"] < 2 * len(rows), counted
    assert counted["compared"] <= counted["candidates"]


# --- splitting ------------------------------------------------------------------------


def _labelled(counts: dict[str, int]) -> list[dict[str, str]]:
    return [
        {"text": f"{label} example {i}", "label": label}
        for label, n in counts.items()
        for i in range(n)
    ]


def test_split_is_deterministic_disjoint_and_complete() -> None:
    rows = [{"text": f"t{i}"} for i in range(100)]
    train, held_out = split_rows(rows, 0.1, seed=42)
    assert len(held_out) == 10 and len(train) == 90
    assert sorted(r["text"] for r in train + held_out) == sorted(r["text"] for r in rows)
    assert split_rows(rows, 0.1, seed=42) == (train, held_out)
    assert split_rows(rows, 0.1, seed=7)[1] != held_out
    # both parts keep the original order
    assert train == [r for r in rows if r in train]


def test_split_keeps_at_least_one_row_on_each_side() -> None:
    rows = [{"text": "a"}, {"text": "b"}]
    assert [len(part) for part in split_rows(rows, 0.01, seed=0)] == [1, 1]
    assert [len(part) for part in split_rows(rows, 0.99, seed=0)] == [1, 1]


def test_stratified_split_keeps_each_class_share() -> None:
    rows = _labelled({"pos": 60, "neg": 30, "few": 3, "one": 1})
    train, held_out = split_rows(rows, 0.2, seed=1, stratify="label")

    def count(part: list[dict[str, str]], label: str) -> int:
        return sum(r["label"] == label for r in part)

    assert [count(held_out, k) for k in ("pos", "neg", "few", "one")] == [12, 6, 1, 0]
    assert count(train, "one") == 1
    assert len(train) + len(held_out) == len(rows)


def test_split_errors() -> None:
    rows = _labelled({"a": 5})
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            split_rows(rows, fraction, seed=0)
    with pytest.raises(ConfigError) as exc:
        split_rows(rows, 0.1, seed=0, stratify="labl")
    assert "'label'" in exc.value.hint
    with pytest.raises(DataError, match="cannot split 1 row"):
        split_rows(rows[:1], 0.5, seed=0)


def test_write_jsonl_is_byte_stable_and_keeps_unicode(tmp_path: Path) -> None:
    rows = [{"text": "café ☕", "label": "b"}, {"text": "x", "label": "a"}]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_jsonl(rows, first) == 2
    write_jsonl(rows, second)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_text(encoding="utf-8").splitlines()[0] == (
        '{"text": "café ☕", "label": "b"}'
    )
    assert load_rows(first, "classification") == rows
