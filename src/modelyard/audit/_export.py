"""Export audit events for auditors: JSON lines or CSV, with hashes, verifiable offline."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Literal, TextIO

from modelyard.audit._canonical import canonical_json
from modelyard.audit._event import AuditEvent
from modelyard.errors import ConfigError

ExportFormat = Literal["jsonl", "csv"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "csv")
CSV_COLUMNS = ("seq", "time", "actor", "action", "subject", "payload", "prev_hash", "hash")


def check_format(fmt: str) -> ExportFormat:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"invalid --format {fmt!r}: use jsonl or csv (in lower case)",
            hint="e.g. --format csv for a spreadsheet, jsonl to verify with the key.",
            field="--format",
        )
    return "jsonl" if fmt == "jsonl" else "csv"


def write_events(events: Iterable[AuditEvent], fmt: ExportFormat, out: TextIO) -> int:
    """Write ``events`` to ``out``; returns how many. Payloads are canonical JSON in CSV."""
    count = 0
    if fmt == "jsonl":
        for event in events:
            out.write(canonical_json(event.to_json()) + "\n")
            count += 1
        return count
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        row = event.to_json()
        row["payload"] = canonical_json(row["payload"])
        writer.writerow([csv_cell(row[c]) for c in CSV_COLUMNS])
        count += 1
    return count


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
"""A spreadsheet takes a cell starting with one of the first six for a formula (CSV
injection: an actor named ``=HYPERLINK(…)`` would run in the auditor's spreadsheet);
the apostrophe is escaped too, so that the escape can be undone without doubt."""


def csv_cell(value: object) -> object:
    """A text cell that a spreadsheet would read as a formula gets one leading apostrophe
    (which spreadsheets show as text); ``csv_value`` takes it off again to verify."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The value an exported CSV cell stands for: ``csv_cell`` undone (one leading
    apostrophe dropped)."""
    return cell[1:] if cell.startswith("'") else cell
