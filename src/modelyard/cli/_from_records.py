"""``modelyard data from-records``: an endpoint's inference records and feedback → a dataset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli._common import (
    bad_input,
    console,
    err_console,
    open_artifacts,
    open_store,
    print_json,
    progress_bar,
    settings,
)
from modelyard.cli._data import _print_report
from modelyard.curate import (
    FILTERS,
    SKIP_REASONS,
    Harvest,
    RecordFilters,
    check_out,
    harvest,
    save,
)
from modelyard.data import FORMATS, RULES, check_rules
from modelyard.durations import parse_since
from modelyard.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _window(since: str, until: str | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    start = parse_since(since, field="--since", now=now)
    end = now if until is None else parse_since(until, field="--until", now=now, allow_future=True)
    return start, end


def _dataset_name(name: str | None, endpoint: str) -> str:
    chosen = name or f"{endpoint}-records"
    if not _NAME.match(chosen):
        raise ConfigError(
            f"invalid dataset name {chosen!r}: use letters, digits, '.', '_' and '-'",
            field="--name",
        )
    return chosen


def _check_out(out: Path, exclude: list[Path]) -> None:
    try:
        check_out(out, exclude)
    except ConfigError as exc:
        raise ConfigError(f"--out {exc.message}", hint=exc.hint, field="--out") from exc


@contextmanager
def _progress() -> Iterator[Any]:
    """A bar on a terminal (a long window has many records); nothing otherwise."""
    if not err_console.is_terminal:
        yield None
        return
    with progress_bar("turning records into rows", 0, unit="records") as update:
        yield lambda done, total: update(done, total, "")


def from_records(
    endpoint: str = typer.Option(..., "--endpoint", "-e", help="The endpoint whose records."),
    since: str = typer.Option(
        ..., "--since", help="Start of the window: a duration back from now (7d) or a date."
    ),
    until: str | None = typer.Option(
        None, "--until", help="End of the window (exclusive), the same way; default: now."
    ),
    version: int | None = typer.Option(
        None, "--version", help="Only records answered by this version of the endpoint's model."
    ),
    status: str | None = typer.Option(
        None, "--status", help="Only records of this status (ok, error, timeout, ...)."
    ),
    min_score: float | None = typer.Option(
        None, "--min-score", help="Only records with a feedback score at least this (-1 to 1)."
    ),
    labels: list[str] = typer.Option(
        [],
        "--label",
        metavar="LABEL",
        help="Only records whose feedback label is this (repeatable).",
    ),
    format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help=f"Row format ({', '.join(FORMATS)}); default: the endpoint's version's format.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Write the rows here (canonical JSONL)."),
    name: str | None = typer.Option(
        None, "--name", help="Register as this dataset (default: ENDPOINT-records)."
    ),
    exclude: list[Path] = typer.Option(
        [],
        "--exclude",
        metavar="FILE",
        help="Also leave out the rows of this dataset file (repeatable).",
    ),
    fail_on: list[str] = typer.Option(
        [],
        "--fail-on",
        metavar="RULE",
        help=f"Exit 1, writing nothing, if this rule trips (repeatable): {', '.join(RULES)}.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Turn an endpoint's records (and the labels feedback gave) into a training dataset.

    Records in the window that pass the filters become rows: the prompt parsed back
    with the version's template, the answer a person's feedback label when there is
    one, else the model's. Records whose text was not kept (hash or none storage
    policy), redacted ones, errors without a label, prompts that do not parse,
    duplicates and rows already in the training data of the endpoint's versions are
    skipped and counted. The rows are validated like `data validate`, written to
    --out and registered as a dataset version whose lineage lists the record ids.
    Exits 2 for bad input, 1 when a --fail-on rule trips.
    """
    rules = check_rules(fail_on)
    _check_out(out, exclude)
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise ConfigError(f"--min-score {min_score} is out of range: use -1 to 1")
    start, end = _window(since, until)
    filters = RecordFilters(start, end, version, status, min_score, tuple(labels))
    dataset_name = _dataset_name(name, endpoint)
    s = settings()
    with open_store(s) as store:
        artifacts = open_artifacts(s)
        with _progress() as progress, bad_input():
            found = harvest(
                store,
                artifacts,
                endpoint=endpoint,
                filters=filters,
                data_format=format,
                exclude=exclude,
                progress=progress,
            )
        tripped = found.validation.tripped(rules)
        if not json_out:
            _print_counts(found)
            _print_report(out, None, found.validation, rules)
        if tripped:
            if json_out:
                print_json({**_summary(found, None, out), "tripped": tripped})
            counts = found.validation.findings()
            listed = ", ".join(f"{rule} ({counts[rule]})" for rule in tripped)
            err_console.print(f"[bold red]validation failed, nothing written:[/] {listed}")
            raise typer.Exit(1)
        dataset = save(store, artifacts, found, out, dataset_name)
    if json_out:
        print_json({**_summary(found, dataset, out), "tripped": []})
        return
    console.print(
        f"[green]wrote {len(found.rows):,} {found.data_format} rows[/] -> {escape(str(out))}; "
        f"dataset [bold]{escape(dataset.name)}[/] v{dataset.version} "
        f"(sha256 {dataset.digest[:12]}), its lineage the ids of the {len(found.rows):,} "
        f"records of {escape(found.endpoint)}"
    )


def _summary(found: Harvest, dataset: Any, out: Path) -> dict[str, Any]:
    return {
        "endpoint": found.endpoint,
        "format": found.data_format,
        "out": str(out) if dataset is not None else None,
        "dataset": None
        if dataset is None
        else {"name": dataset.name, "version": dataset.version, "digest": dataset.digest},
        **found.selection.to_dict(),
        "reasons": dict(SKIP_REASONS),
        "lineage": found.lineage(),
        "training_data": found.known.sources,
        "training_data_unreadable": found.known.unreadable,
        "validation": found.validation.to_dict(),
    }


def _print_counts(found: Harvest) -> None:
    selection = found.selection
    window = found.filters
    console.print(
        f"[bold]{escape(found.endpoint)}[/]: {selection.read:,} records from "
        f"{window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M} UTC, "
        f"{len(selection.rows):,} {found.data_format} rows"
    )
    table = Table("left out", "records", "why")
    for key, n in selection.filtered.items():
        if n:
            table.add_row(f"filter {key}", str(n), FILTERS[key])
    for key, n in selection.skipped.items():
        if n:
            table.add_row(key, str(n), SKIP_REASONS[key])
    if table.rows:
        console.print(table)
    compared = ", ".join(found.known.sources) or "none found"
    console.print(f"compared with the training data: {escape(compared)}")
    for problem in found.known.unreadable:
        err_console.print(f"[yellow]warning:[/] training data not read: {escape(problem)}")
