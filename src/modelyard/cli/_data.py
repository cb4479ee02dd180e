"""``modelyard data``: validate a dataset file and split it into train and eval files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelyard.cli._common import bad_input, console, err_console, print_json
from modelyard.data import (
    DEFAULT_IMBALANCE_RATIO,
    DEFAULT_MAX_SEQ_LEN,
    FORMATS,
    RULES,
    Stats,
    ValidationReport,
    as_text,
    check_rules,
    load_rows,
    split_rows,
    validate_rows,
    write_jsonl,
)
from modelyard.errors import ConfigError

app = typer.Typer(help="Datasets: check a file before training on it, split it reproducibly.")

_SHOWN = 20
"""Findings listed per table; --json has all of them."""

_FORMAT_HELP = f"Dataset format: {', '.join(FORMATS)}."


def _registered_base(ref: str) -> str:
    """A base registered by name (as ``finetune`` resolves ``base_model``): its source;
    anything else (a path, a hub id, no store here or one that cannot be read) unchanged.
    No store is made."""
    from modelyard.base import is_local
    from modelyard.cli._common import open_store, settings
    from modelyard.cli._home import store_exists
    from modelyard.errors import ModelyardError

    if is_local(ref):
        return ref
    try:
        s = settings()
        if not store_exists(s):
            return ref
        with open_store(s) as store:
            return store.get_base_model(ref).source
    except ModelyardError:  # not registered (or no usable store): a hub id, as before
        return ref


def _load(path: Path, fmt: str) -> list[dict[str, Any]]:
    with bad_input():
        return load_rows(path, fmt)


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="The dataset: .jsonl, .json, .csv or .parquet."),
    format: str = typer.Option(..., "--format", "-f", help=_FORMAT_HELP),
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        help="Count lengths in this base model's tokens: a local directory, a base "
        "registered by name (`base create-tiny --name`) or a hub id.",
    ),
    eval_file: Path | None = typer.Option(
        None, "--eval", help="The eval set, checked for prompts shared with FILE (leakage)."
    ),
    max_seq_len: int = typer.Option(
        DEFAULT_MAX_SEQ_LEN, "--max-seq-len", min=1, help="Report rows longer than this."
    ),
    imbalance_ratio: float = typer.Option(
        DEFAULT_IMBALANCE_RATIO,
        "--imbalance-ratio",
        min=1.0,
        help="The imbalance rule trips above this majority/minority label ratio.",
    ),
    fail_on: list[str] = typer.Option(
        [],
        "--fail-on",
        metavar="RULE",
        help="Exit 1 if this rule trips (repeatable, or comma-separated): "
        f"{', '.join(RULES)}, or all.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check FILE: missing fields, duplicates, lengths, labels, personal data, leakage.

    Exits 0 when none of the --fail-on rules trips, 1 when one does, 2 for bad input.
    """
    rules = check_rules(fail_on)
    named = {part.strip() for rule in fail_on for part in rule.split(",")}
    if eval_file is None and "leakage" in named:  # a gate asked for that checks nothing
        err_console.print(
            "[yellow]warning:[/] --fail-on leakage checks nothing without --eval FILE (the "
            "held-out set the training rows must not repeat)"
        )
    rows = _load(file, format)
    eval_rows = None if eval_file is None else _load(eval_file, format)
    tokenizer = None
    if base_model is not None:
        from modelyard.base import load_tokenizer

        with bad_input():
            tokenizer = load_tokenizer(_registered_base(base_model))
    report = validate_rows(
        rows,
        format,
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        eval_rows=eval_rows,
        imbalance_ratio=imbalance_ratio,
    )
    tripped = report.tripped(rules)
    if json_out:
        print_json({**report.to_dict(), "fail_on": rules, "tripped": tripped})
    else:
        _print_report(file, eval_file, report, rules)
    if tripped:
        counts = report.findings()
        listed = ", ".join(f"{rule} ({counts[rule]})" for rule in tripped)
        err_console.print(f"[bold red]validation failed:[/] {listed}", markup=True)
        raise typer.Exit(1)


def _status(rule: str, count: int, rules: Sequence[str]) -> str:
    if not count:
        return "[green]ok[/]"
    return "[bold red]FAIL[/]" if rule in rules else "[yellow]warn[/]"


def _print_report(
    file: Path, eval_file: Path | None, report: ValidationReport, rules: Sequence[str]
) -> None:
    eval_part = (
        f", eval set {escape(str(eval_file))}: {report.eval_rows:,} rows" if eval_file else ""
    )
    console.print(f"[bold]{escape(str(file))}[/]: {report.rows:,} {report.format} rows{eval_part}")
    counts = report.findings()
    checks = Table("check", "findings", "status", "what trips it")
    for rule, what in RULES.items():
        if rule == "leakage" and report.leakage is None:
            checks.add_row(rule, "-", "[dim]skipped[/]", "needs --eval FILE")
            continue
        if rule == "imbalance" and report.labels is None:
            checks.add_row(rule, "-", "[dim]skipped[/]", "no labels (or few distinct outputs)")
            continue
        checks.add_row(rule, str(counts[rule]), _status(rule, counts[rule], rules), what)
    console.print(checks)
    _print_lengths(report)
    if report.labels is not None:
        labels = report.labels
        console.print(
            f"\n[bold]{labels.field} balance[/]: majority/minority {labels.ratio:g} "
            f"(imbalance threshold {labels.threshold:g})"
        )
        table = Table(labels.field, "rows", "share")
        total = sum(labels.counts.values())
        for value, n in labels.counts.items():
            table.add_row(Text(value), str(n), f"{n / total:.1%}")
        console.print(table)
    _print_list(
        "Missing or empty fields",
        ("row", "field", "problem"),
        [(str(p.row), p.field, p.problem) for p in report.empty_fields],
    )
    _print_list(
        "Malformed rows",
        ("row", "field", "problem"),
        [(str(p.row), p.field, p.problem) for p in report.invalid_rows],
    )
    _print_list("Exact duplicates", ("rows",), [(_rows(g),) for g in report.duplicates])
    _print_list(
        f"Near-duplicates (Jaccard >= {report.near_duplicate_threshold:g})",
        ("rows",),
        [(_rows(g),) for g in report.near_duplicates],
    )
    _print_list(
        f"Rows over {report.lengths.max_seq_len} {report.lengths.unit}",
        ("rows",),
        [(_rows(report.lengths.over_max_len),)] if report.lengths.over_max_len else [],
        count=len(report.lengths.over_max_len),
    )
    _print_list(
        "Personal data (masked)",
        ("row", "field", "kind", "value"),
        [(str(p.row), p.field, p.kind, p.masked) for p in report.pii],
    )
    _print_list(
        "Leakage: prompts in both sets",
        ("train rows", "eval rows"),
        [(_rows(leak.train_rows), _rows(leak.eval_rows)) for leak in report.leakage or []],
    )


def _rows(numbers: Sequence[int], limit: int = 30) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f", ... ({len(numbers) - limit} more)" if len(numbers) > limit else "")


def _print_lengths(report: ValidationReport) -> None:
    lengths = report.lengths
    unit = lengths.unit if lengths.tokenizer is None else f"tokens ({lengths.tokenizer})"
    console.print(
        f"\n[bold]Lengths[/] (rows over {lengths.max_seq_len}: {len(lengths.over_max_len)})"
    )
    table = Table("unit", "min", "mean", "p50", "p95", "max")

    def row(name: str, s: Stats) -> None:
        table.add_row(name, str(s.min), f"{s.mean:g}", f"{s.p50:g}", f"{s.p95:g}", str(s.max))

    row(unit, lengths.stats)
    row("characters", lengths.chars)
    console.print(table)


def _print_list(
    title: str, columns: Sequence[str], items: list[tuple[str, ...]], count: int | None = None
) -> None:
    if not items:
        return
    more = len(items) - _SHOWN
    caption = f"... and {more} more (--json lists all)" if more > 0 else None
    console.print(f"\n[bold]{title}: {len(items) if count is None else count}[/]")
    table = Table(*columns, caption=caption, caption_justify="left")
    for item in items[:_SHOWN]:
        table.add_row(*(Text(cell) for cell in item))
    console.print(table)


@app.command("split")
def split(
    file: Path = typer.Argument(..., help="The dataset: .jsonl, .json, .csv or .parquet."),
    format: str = typer.Option(..., "--format", "-f", help=_FORMAT_HELP),
    eval_fraction: float = typer.Option(
        0.1, "--eval-fraction", help="Share of rows for the eval file, between 0 and 1."
    ),
    stratify: str | None = typer.Option(
        None, "--stratify", help="Keep each value of this field in proportion (e.g. label)."
    ),
    seed: int = typer.Option(42, "--seed", help="Same file and seed: byte-identical outputs."),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", help="Where to write the two files (default: next to FILE)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Split FILE into <stem>.train.jsonl and <stem>.eval.jsonl (JSONL whatever FILE is).

    Existing files of those names are replaced.
    """
    if not 0 < eval_fraction < 1:
        raise ConfigError(
            f"--eval-fraction must be between 0 and 1 (exclusive), got {eval_fraction}",
            hint="Pass e.g. --eval-fraction 0.1 for 10% of the rows.",
        )
    rows = _load(file, format)
    with bad_input():
        train, held_out = split_rows(rows, eval_fraction, seed, stratify=stratify)
    target = out_dir if out_dir is not None else file.parent
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"--out-dir {target} is a file, not a directory",
            hint="Give --out-dir a directory (it is created when missing).",
            field="--out-dir",
        )
    train_path = target / f"{file.stem}.train.jsonl"
    eval_path = target / f"{file.stem}.eval.jsonl"
    try:
        target.mkdir(parents=True, exist_ok=True)
        write_jsonl(train, train_path)
        write_jsonl(held_out, eval_path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the split to {target}: {exc.strerror or exc}",
            hint="Choose an --out-dir you can write to.",
            field="--out-dir",
        ) from exc
    classes = None
    if stratify is not None:
        in_train = Counter(as_text(r.get(stratify)) for r in train)
        in_eval = Counter(as_text(r.get(stratify)) for r in held_out)
        classes = {
            key: {"train": in_train[key], "eval": in_eval[key]}
            for key in sorted(in_train.keys() | in_eval.keys())
        }
    if json_out:
        print_json(
            {
                "train": {"path": str(train_path), "rows": len(train)},
                "eval": {"path": str(eval_path), "rows": len(held_out)},
                "eval_fraction": eval_fraction,
                "seed": seed,
                "stratify": stratify,
                "classes": classes,
            }
        )
        return
    console.print(f"[green]train:[/] {len(train):,} rows -> {escape(str(train_path))}")
    console.print(f"[green]eval:[/]  {len(held_out):,} rows -> {escape(str(eval_path))}")
    if stratify is not None and classes is not None:
        table = Table(escape(stratify), "train", "eval")
        for key, n in classes.items():
            table.add_row(Text(key or "(empty)"), str(n["train"]), str(n["eval"]))
        console.print(table)
