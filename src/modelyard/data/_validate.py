"""Checking a dataset before training on it: the validation report and its rules.

``validate_rows`` looks at every row once (no pairwise comparisons) and returns
a ``ValidationReport``: row counts, missing or empty fields, malformed rows,
exact and near-duplicates, length statistics and rows over the sequence limit,
label balance, personal data (masked), and train/eval leakage. The report is
plain data (``to_dict()`` is JSON-ready and is stored with a dataset version);
``tripped(rules)`` says which of the ``RULES`` it breaks, for ``--fail-on``.
Row numbers are 1-based positions of rows in the file (see ``load_rows``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.data._dedup import (
    NEAR_DUPLICATE_THRESHOLD,
    collapse,
    exact_groups,
    near_groups,
    normalize,
)
from modelyard.data._formats import (
    DataFormat,
    as_text,
    chat_problem,
    example_text,
    get_format,
    is_blank,
    prompt_text,
    text_problem,
)
from modelyard.data._io import columns_of
from modelyard.data._pii import find_pii
from modelyard.data._templates import template_for, training_text
from modelyard.errors import ConfigError

DEFAULT_MAX_SEQ_LEN = 2048
"""Rows longer than this (in tokens, or words without a tokenizer) are reported."""

DEFAULT_IMBALANCE_RATIO = 3.0
"""The ``imbalance`` rule trips when the majority/minority label count ratio exceeds this."""

MAX_OUTPUT_CLASSES = 20
"""alpaca ``output`` values are counted like labels when there are at most this many distinct."""

RULES: Mapping[str, str] = {
    "empty-fields": "a required field is missing or blank in some row",
    "invalid-rows": "a field has the wrong shape (a malformed chat, a list where text belongs)",
    "duplicates": "two or more rows are exactly the same example",
    "near-duplicates": f"rows are near-duplicates (shingle Jaccard >= {NEAR_DUPLICATE_THRESHOLD})",
    "over-max-len": "a row is longer than --max-seq-len",
    "pii": "a row contains personal data (e-mail, phone, card, IBAN, US SSN, IP address)",
    "leakage": "a training prompt also appears in the eval set",
    "imbalance": "the majority/minority label ratio is above the imbalance threshold",
}
"""Every ``--fail-on`` rule and what trips it; ``all`` stands for all of them."""


def check_rules(rules: Iterable[str]) -> list[str]:
    """The rules named, checked and without repeats (``all`` expands to every rule).

    A name may also be a comma-separated list (``--fail-on pii,duplicates``), as the
    CLI's other lists are (``--metrics``, ``--steps``). An unknown name is a ConfigError
    naming the valid ones and the closest match.
    """
    checked: list[str] = []
    named = [part.strip() for rule in rules for part in rule.split(",")]
    for rule in (part for part in named if part):
        names = list(RULES) if rule == "all" else [rule]
        if rule != "all" and rule not in RULES:
            close = difflib.get_close_matches(rule, [*RULES, "all"], n=1)
            maybe = f"Did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown --fail-on rule {rule!r}",
                hint=f"{maybe}Valid rules: {', '.join(RULES)}, all.",
                rule=rule,
            )
        checked.extend(n for n in names if n not in checked)
    return checked


@dataclass(frozen=True)
class FieldProblem:
    """A field of one row that is missing, blank or malformed."""

    row: int
    field: str
    problem: str


@dataclass(frozen=True)
class PiiFinding:
    """Personal data in one field of one row; ``masked`` never holds the whole value."""

    row: int
    field: str
    kind: str
    masked: str


@dataclass(frozen=True)
class Leak:
    """One prompt found in both sets: the rows that hold it on each side."""

    train_rows: list[int]
    eval_rows: list[int]


@dataclass(frozen=True)
class Stats:
    """Summary of a list of lengths."""

    min: int
    mean: float
    p50: float
    p95: float
    max: int

    @classmethod
    def of(cls, values: Sequence[int]) -> Stats:
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0)
        arr = np.asarray(values, dtype=np.int64)
        p50, p95 = np.percentile(arr, [50, 95])
        return cls(
            int(arr.min()), round(float(arr.mean()), 2), float(p50), float(p95), int(arr.max())
        )


@dataclass(frozen=True)
class Lengths:
    """Lengths of the training sequences: in ``unit`` (tokens or words) and in characters."""

    unit: str
    tokenizer: str | None
    stats: Stats
    chars: Stats
    max_seq_len: int
    over_max_len: list[int]


@dataclass(frozen=True)
class Labels:
    """How often each label (or alpaca output) occurs, and the majority/minority ratio."""

    field: str
    counts: dict[str, int]
    ratio: float
    threshold: float

    @property
    def imbalanced(self) -> bool:
        return self.ratio > self.threshold


@dataclass(frozen=True)
class ValidationReport:
    """Everything ``validate_rows`` found; row numbers are 1-based."""

    format: str
    rows: int
    columns: list[str]
    empty_fields: list[FieldProblem]
    invalid_rows: list[FieldProblem]
    duplicates: list[list[int]]
    near_duplicates: list[list[int]]
    lengths: Lengths
    labels: Labels | None
    pii: list[PiiFinding]
    eval_rows: int | None = None
    leakage: list[Leak] | None = None
    near_duplicate_threshold: float = field(default=NEAR_DUPLICATE_THRESHOLD)

    def findings(self) -> dict[str, int]:
        """How many findings each rule has (for ``imbalance``: 1 when imbalanced, else 0)."""
        return {
            "empty-fields": len(self.empty_fields),
            "invalid-rows": len(self.invalid_rows),
            "duplicates": len(self.duplicates),
            "near-duplicates": len(self.near_duplicates),
            "over-max-len": len(self.lengths.over_max_len),
            "pii": len(self.pii),
            "leakage": len(self.leakage or []),
            "imbalance": int(self.labels is not None and self.labels.imbalanced),
        }

    def tripped(self, rules: Iterable[str]) -> list[str]:
        """The rules among ``rules`` that this report breaks, in the order given."""
        counts = self.findings()
        return [rule for rule in check_rules(rules) if counts[rule]]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with ``findings`` (counts per rule) added."""
        data = dataclasses.asdict(self)
        data["findings"] = self.findings()
        if self.labels is not None:
            data["labels"]["imbalanced"] = self.labels.imbalanced
        return data


def validate_rows(
    rows: Sequence[Mapping[str, Any]],
    format: str,
    *,
    tokenizer: Any = None,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
) -> ValidationReport:
    """Check ``rows`` of ``format`` and report every problem with its row numbers.

    With a Hugging Face ``tokenizer`` lengths are counted in its tokens, otherwise
    in whitespace-separated words (which undercount tokens). ``eval_rows``, the
    held-out set, is checked for prompts shared with ``rows`` (leakage).
    """
    fmt = get_format(format)
    if max_seq_len < 1:
        raise ConfigError(f"max_seq_len must be at least 1, got {max_seq_len}")
    if imbalance_ratio < 1:
        raise ConfigError(f"the imbalance ratio must be at least 1, got {imbalance_ratio}")
    empty, invalid = _field_problems(rows, fmt)
    examples = [_example_key(row, fmt) for row in rows]
    exact = exact_groups(examples)
    repeats = {i for group in exact for i in group[1:]}
    near = near_groups([text if i not in repeats else "" for i, text in enumerate(examples)])
    leakage = None if eval_rows is None else _leakage(rows, eval_rows, fmt)
    return ValidationReport(
        format=fmt.name,
        rows=len(rows),
        columns=columns_of(rows),
        empty_fields=empty,
        invalid_rows=invalid,
        duplicates=_numbered(exact),
        near_duplicates=_numbered(near),
        lengths=_lengths(rows, fmt, tokenizer, max_seq_len),
        labels=_labels(rows, fmt, imbalance_ratio),
        pii=_pii(rows),
        eval_rows=None if eval_rows is None else len(eval_rows),
        leakage=leakage,
    )


def _example_key(row: Mapping[str, Any], fmt: DataFormat) -> str:
    """The example with each field trimmed and its whitespace collapsed; "" when all are empty."""
    parts = [collapse(part) for part in example_text(row, fmt).split("\0")]
    return "\0".join(parts) if any(parts) else ""


def _numbered(groups: list[list[int]]) -> list[list[int]]:
    return [[i + 1 for i in group] for group in groups]


def _field_problems(
    rows: Sequence[Mapping[str, Any]], fmt: DataFormat
) -> tuple[list[FieldProblem], list[FieldProblem]]:
    empty: list[FieldProblem] = []
    invalid: list[FieldProblem] = []
    for number, row in enumerate(rows, start=1):
        for name in fmt.required:
            if name not in row:
                empty.append(FieldProblem(number, name, "missing"))
            elif is_blank(row[name]) or (name == "messages" and row[name] == []):
                empty.append(FieldProblem(number, name, "empty"))
        for name in fmt.fields:
            value = row.get(name)
            if is_blank(value):
                continue
            if name == "messages":
                problem = chat_problem(value)
                if problem is not None and value != []:
                    invalid.append(FieldProblem(number, name, problem))
            elif (problem := text_problem(value)) is not None:
                invalid.append(FieldProblem(number, name, problem))
    return empty, invalid


def _lengths(
    rows: Sequence[Mapping[str, Any]], fmt: DataFormat, tokenizer: Any, max_seq_len: int
) -> Lengths:
    template = template_for(fmt.name, tokenizer)
    texts = [training_text(row, fmt, template) for row in rows]
    if tokenizer is None:
        unit, name = "words", None
        counts = [len(text.split()) for text in texts]
    else:
        unit, name = (
            "tokens",
            str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        )
        counts = []
        for start in range(0, len(texts), 1000):
            batch = tokenizer(texts[start : start + 1000], verbose=False)["input_ids"]
            counts.extend(len(ids) for ids in batch)
    return Lengths(
        unit=unit,
        tokenizer=name,
        stats=Stats.of(counts),
        chars=Stats.of([len(text) for text in texts]),
        max_seq_len=max_seq_len,
        over_max_len=[i + 1 for i, n in enumerate(counts) if n > max_seq_len],
    )


def _labels(rows: Sequence[Mapping[str, Any]], fmt: DataFormat, threshold: float) -> Labels | None:
    if fmt.name == "classification":
        name = "label"
    elif fmt.name == "alpaca":
        name = "output"
    else:
        return None
    values = [
        collapse(as_text(row.get(name)))
        for row in rows
        if not is_blank(row.get(name)) and text_problem(row.get(name)) is None
    ]
    counts = Counter(values)
    if not counts:
        return None
    if name == "output" and (len(counts) > MAX_OUTPUT_CLASSES or len(counts) == len(values)):
        return None  # free-text answers, not classes
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    ratio = max(counts.values()) / min(counts.values())
    return Labels(field=name, counts=ordered, ratio=round(ratio, 3), threshold=threshold)


def _pii(rows: Sequence[Mapping[str, Any]]) -> list[PiiFinding]:
    findings: list[PiiFinding] = []
    for number, row in enumerate(rows, start=1):
        for name, text in _string_fields(row):
            findings.extend(PiiFinding(number, name, p.kind, p.masked) for p in find_pii(text))
    return findings


def _string_fields(row: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """Every text in a row with its field name (``messages[2].content`` inside chats)."""
    for name, value in row.items():
        if isinstance(value, str):
            yield str(name), value
        elif name == "messages" and isinstance(value, list):
            for i, message in enumerate(value):
                if isinstance(message, Mapping) and isinstance(message.get("content"), str):
                    yield f"messages[{i}].content", message["content"]


def _leakage(
    rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]], fmt: DataFormat
) -> list[Leak]:
    def by_prompt(items: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = defaultdict(list)
        for number, row in enumerate(items, start=1):
            key = normalize(prompt_text(row, fmt))
            if key:
                found[key].append(number)
        return found

    train, held_out = by_prompt(rows), by_prompt(eval_rows)
    return [Leak(numbers, held_out[key]) for key, numbers in train.items() if key in held_out]
