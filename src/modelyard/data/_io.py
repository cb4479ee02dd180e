"""Reading datasets from JSONL, JSON, CSV and Parquet files, and writing JSONL.

``load_rows`` is the one loader: finetuning, validation and splitting all read
files through it, so a file that validates is a file that trains. It checks the
file as a whole (it parses, it has rows, every row is an object, the format's
columns exist); row-level problems (an empty field, a malformed conversation)
are left to ``validate_rows``, which reports all of them with row numbers.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from modelyard.data._formats import FORMATS, DataFormat, get_format
from modelyard.errors import ConfigError, DataError, DatasetNotFound

FILE_TYPES: Mapping[str, str] = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
"""File extension -> file type; the type of a dataset file is taken from its extension."""


def file_type(path: Path) -> str:
    """The file type of ``path`` from its extension, or a ConfigError naming the supported ones."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"cannot read {path}: unsupported file extension {path.suffix or '(none)'!r}",
            hint=f"Use a file ending in one of: {', '.join(FILE_TYPES)}.",
            path=str(path),
        )
    return kind


def load_rows(path: Path | str, format: str) -> list[dict[str, Any]]:
    """Read every row of a dataset file and check it fits ``format``.

    The file type comes from the extension (``.jsonl``, ``.json`` holding a list
    of objects, ``.csv`` with a header row, ``.parquet``). Row *n* in reports is
    the *n*-th record (1-based): blank JSONL lines and the CSV header are not rows.
    In CSV files a chat ``messages`` cell holds the conversation as JSON.

    Raises ConfigError for an unknown format or extension, DatasetNotFound for a
    missing file, and DataError (naming the line, or the missing column and the
    columns the file has) for a file that cannot be used.
    """
    fmt = get_format(format)
    path = Path(path)
    rows = read_rows(path, f"Add at least one {fmt.name} row ({', '.join(fmt.required)}).")
    if fmt.name == "chat" and file_type(path) == "csv":
        _decode_messages(rows)
    _check_columns(path, rows, fmt)
    return rows


def read_rows(path: Path | str, hint: str = "Add at least one row.") -> list[dict[str, Any]]:
    """Every row of a JSONL, JSON, CSV or Parquet file (the type from its extension), with
    no format check: DatasetNotFound for a missing file, DataError (naming the line) for a
    file that does not parse as its extension says or has no rows (``hint`` says what to
    add). CSV values are text, as written."""
    return list(iter_rows(path, hint))


def iter_rows(path: Path | str, hint: str = "Add at least one row.") -> Iterator[dict[str, Any]]:
    """``read_rows``' rows one at a time, the file read as they are taken (JSONL and CSV a
    line at a time, Parquet a batch of rows at a time): a file of a million rows is never
    in memory whole. The extension and the file are checked now; a DataError where the
    file stops parsing (or has no rows) comes when that row would."""
    path = Path(path)
    kind = file_type(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DatasetNotFound(
            f"dataset file {path} {what}",
            hint="Check the path.",
            path=str(path),
        )
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    return _some(path, readers[kind](path), hint)


def _some(path: Path, rows: Iterable[dict[str, Any]], hint: str) -> Iterator[dict[str, Any]]:
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise DataError(f"{path} has no rows", hint=hint, path=str(path))


def columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key that occurs in any row, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _check_columns(path: Path, rows: list[dict[str, Any]], fmt: DataFormat) -> None:
    columns = columns_of(rows)
    missing = [f for f in fmt.required if f not in columns]
    if not missing:
        return
    fitting = [
        other.name
        for other in FORMATS.values()
        if other.name != fmt.name and all(f in columns for f in other.required)
    ]
    rename = f"Rename the columns to {', '.join(fmt.required)}"
    hint = (
        f"{rename}, or pass --format {' or '.join(fitting)}, which the columns fit."
        if (fitting)
        else f"{rename}."
    )
    names = ", ".join(repr(m) for m in missing)
    raise DataError(
        f"{path} has no {names} column{'s' if len(missing) > 1 else ''}, which the {fmt.name} "
        f"format requires; its columns are: {', '.join(columns) or '(none)'}",
        hint=hint,
        path=str(path),
        missing=missing,
        columns=columns,
    )


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _utf16(path)
    try:
        # universal newlines, as Path.read_text reads them
        return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _not_utf8(path, line, exc.start) from exc


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``path``'s lines (universal newlines, a UTF-8 BOM dropped) and their numbers, read a
    line at a time: a file of a million rows is never in memory whole, as bytes and as
    text, beside its rows. Only line ends end a line (``str.splitlines`` would also cut a
    JSON string at a U+2028 it holds)."""
    number = at = 0
    with path.open("rb") as fh:
        for raw in fh:
            if at == 0 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise _utf16(path)
            try:
                text = raw.decode("utf-8-sig" if at == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, number + 1, at + exc.start) from exc
            at += len(raw)
            if "\r" not in text:  # one line, its "\n" last if it has one
                number += 1
                yield number, text.removesuffix("\n")
                continue
            pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if pieces[-1] == "":
                pieces.pop()  # the line end's, not a line
            for piece in pieces:
                number += 1
                yield number, piece


def _utf16(path: Path) -> DataError:
    return DataError(
        f"{path} is UTF-16 text, not UTF-8",
        hint="Save the file as UTF-8 (in Excel: CSV UTF-8; in Python: encoding='utf-8').",
        path=str(path),
    )


def _not_utf8(path: Path, line: int, byte: int) -> DataError:
    return DataError(
        f"{path} is not UTF-8 text: line {line} (byte {byte}) cannot be decoded",
        hint="Save the file as UTF-8.",
        path=str(path),
        line=line,
    )


def _not_an_object(path: Path, where: str, value: Any) -> DataError:
    return DataError(
        f"{path} {where}: expected a JSON object, got {type(value).__name__}",
        hint="Every row must be an object of field names to values, e.g. "
        '{"instruction": "...", "output": "..."}.',
        path=str(path),
    )


def _too_deep(path: Path, where: str, **context: Any) -> DataError:
    """Lists or objects nested past the parser's stack: no dataset row is shaped like that."""
    return DataError(
        f"{path}{where} nests lists or objects too deeply to be read",
        hint="A row holds text fields (and a chat's list of messages); check how the file "
        "was written.",
        path=str(path),
        **context,
    )


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {number} is not valid JSON: {exc.msg} (column {exc.colno})",
                hint="Each line of a .jsonl file must be one complete JSON object.",
                path=str(path),
                line=number,
            ) from exc
        except RecursionError:
            raise _too_deep(path, f" line {number}", line=number) from None
        if not isinstance(value, dict):
            raise _not_an_object(path, f"line {number}", value)
        yield value


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = _read_text(path)
    try:
        value = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            hint="A .json dataset is one JSON list of objects; use .jsonl for one object a line.",
            path=str(path),
            line=exc.lineno,
        ) from exc
    except RecursionError:
        raise _too_deep(path, "") from None
    if not isinstance(value, list):
        raise DataError(
            f"{path} holds a JSON {type(value).__name__}, not a list of rows",
            hint="A .json dataset is one JSON list of objects: [{...}, {...}].",
            path=str(path),
        )
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise _not_an_object(path, f"item {number}", item)
    return value


_CSV_FIELD_LIMIT = 2**31 - 1
"""The longest CSV value read (the csv module's default, 128 KiB, refuses long documents)."""


def _csv_lines(path: Path) -> Iterator[str]:
    """The lines ``_read_text(path).splitlines(keepends=True)`` gives, read a line at a time
    (a raw line ends at its "\\n": every piece it splits into ends where the whole text's
    would)."""
    at = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if at == 0 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise _utf16(path)
            try:
                text = raw.decode("utf-8-sig" if at == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, number, at + exc.start) from exc
            at += len(raw)
            yield from text.replace("\r\n", "\n").replace("\r", "\n").splitlines(keepends=True)


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    # strict: a quote left open is an error, not the rest of the file swallowed into one value
    reader = csv.DictReader(_csv_lines(path), restval=None, strict=True)
    _check_header(path, reader)
    while True:
        start = reader.line_num + 1  # where the next record begins (a value may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(
                f"{path} line {start} is not valid CSV: {exc}",
                hint='Check the quoting from that line on: a value that starts with " must '
                'end with " (write a quote inside it as "").',
                path=str(path),
                line=start,
            ) from exc
        if None in row:
            raise DataError(
                f"{path} line {start} has more fields than the header "
                f"({len(reader.fieldnames or [])} columns)",
                hint="Quote values that contain commas, or fix the header row.",
                path=str(path),
                line=start,
            )
        yield dict(row)


def _check_header(path: Path, reader: csv.DictReader[str]) -> None:
    """A column named twice is refused: a row would keep only its last value, silently."""
    try:
        names = reader.fieldnames or []
    except csv.Error:
        return  # a header that does not parse: the first row's read says where
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in seen:
            raise DataError(
                f"{path}: the header names column {name!r} twice (columns {seen[name]} and "
                f"{number}); a row would keep only the last one's value",
                hint="Rename one of the two columns.",
                path=str(path),
                line=1,
            )
        seen[name] = number


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


PARQUET_BATCH = 4096
"""Rows of a Parquet file read at a time."""


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
                yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{path} is not a readable Parquet file: {_first_line(exc)}",
            hint="Write it with pyarrow or pandas (DataFrame.to_parquet), or use JSONL.",
            path=str(path),
        ) from exc


def _decode_messages(rows: list[dict[str, Any]]) -> None:
    """Chat rows from CSV carry ``messages`` as JSON text; decode it where it parses."""
    for row in rows:
        value = row.get("messages")
        if isinstance(value, str) and value.strip():
            # Text that is not JSON stays as it is: validation reports the row as malformed.
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                row["messages"] = json.loads(value)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path | str) -> int:
    """Write rows to ``path`` as UTF-8 JSONL, one object a line, keys in their order.

    The bytes depend only on the rows, so the same rows always give the same
    file. Values JSON cannot hold (dates from Parquet, say) are written as text.
    Returns the number of rows written.
    """
    path = Path(path)
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str))
            fh.write("\n")
            count += 1
    return count
