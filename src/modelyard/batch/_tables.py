"""Writing a job's files durably: a table as JSONL, CSV or Parquet, and small JSON files.

Every file is written whole to a temporary name in its directory, flushed to
disk (``fsync``), renamed over its final name (atomic on POSIX) and its
directory flushed too, so after a crash at any instant a file is either its old
self or its complete new self, never a part of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from modelyard.errors import ConfigError, DataError

KINDS: Mapping[str, str] = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
"""File extension -> the kind of table a job reads and writes."""
PARQUET_CHUNK = 8192
"""Rows of a Parquet output written at a time (one row group each)."""


def table_kind(path: Path, what: str) -> str:
    """The kind of table ``path`` is by its extension; ConfigError naming the ones there are."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"{what} {path} has the extension {path.suffix or '(none)'!r}",
            hint=f"Use a file ending in one of: {', '.join(KINDS)}.",
            path=str(path),
        )
    return kind


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename, a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content into: renamed over ``path`` (and flushed to
    disk) when the block ends, removed when it raises."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, durably: all of it or, after a crash, none."""
    with _atomic(path) as handle:
        handle.write(data)


def json_line(row: Mapping[str, Any]) -> bytes:
    """One row as a UTF-8 JSONL line (values JSON cannot hold as text)."""
    return (json.dumps(dict(row), ensure_ascii=False, default=str) + "\n").encode()


def json_lines(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as UTF-8 JSONL, one object a line (values JSON cannot hold as text)."""
    return b"".join(json_line(row) for row in rows)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _csv(handle: BinaryIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    text.flush()
    text.detach()  # the handle stays open: _atomic flushes and closes it


def _chunks(rows: Iterable[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, PARQUET_CHUNK)):
        yield chunk


def _parquet(
    handle: BinaryIO, rows: Callable[[], Iterable[Mapping[str, Any]]], columns: Sequence[str]
) -> None:
    """Two reads of ``rows``: each column's type over all of them first (as one array of
    the whole column would infer it), then the rows written a chunk at a time."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    types = {c: pa.null() for c in columns}
    for chunk in _chunks(rows()):
        for c in columns:
            types[c] = _wider(types[c], pa.array([row.get(c) for row in chunk]).type, c)
    schema = pa.schema([(c, types[c]) for c in columns])
    with pq.ParquetWriter(handle, schema) as writer:
        for chunk in _chunks(rows()):
            arrays = [pa.array([row.get(c) for row in chunk], type=types[c]) for c in columns]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _wider(before: Any, now: Any, column: str) -> Any:
    """The type of a column of values of type ``before`` and values of type ``now``."""
    import pyarrow as pa

    if before == now or pa.types.is_null(now):
        return before
    if pa.types.is_null(before):
        return now
    try:
        both = [pa.schema([(column, t)]) for t in (before, now)]
        return pa.unify_schemas(both, promote_options="permissive").field(column).type
    except (pa.ArrowException, TypeError) as exc:
        raise DataError(
            f"the output's {column!r} column holds values of two types ({before} and {now}); "
            "a Parquet column has one",
            hint=f"Give the input's {column!r} values one type, or write the output as "
            "JSONL or CSV.",
            column=column,
        ) from exc


def write_table(
    path: Path,
    rows: Sequence[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
    columns: Sequence[str],
) -> None:
    """``rows`` (``columns`` in order) as the table ``path``'s extension says, atomically.
    ``rows`` may be a function giving them afresh each call: they are then written as they
    come, never all in memory (a Parquet output calls it twice)."""
    kind = table_kind(path, "the output")
    given = rows if callable(rows) else (lambda: rows)
    with _atomic(path) as handle:
        if kind == "jsonl":
            for row in given():
                handle.write(json_line({c: row.get(c) for c in columns}))
        elif kind == "csv":
            _csv(handle, given(), columns)
        else:
            _parquet(handle, given, columns)


__all__ = [
    "KINDS",
    "fsync_dir",
    "json_line",
    "json_lines",
    "table_kind",
    "write_atomic",
    "write_table",
]
