"""Writing a job's files durably: a table as JSONL, CSV or Parquet, and small JSON files.

Every file is written whole to a temporary name in its directory, flushed to
disk (``fsync``), renamed over its final name (atomic on POSIX) and its
directory flushed too, so after a crash at any instant a file is either its old
self or its complete new self, never a part of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError

KINDS: Mapping[str, str] = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
"""File extension -> the kind of table a job reads and writes."""


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


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, durably: all of it or, after a crash, none."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def json_lines(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as UTF-8 JSONL, one object a line (values JSON cannot hold as text)."""
    return "".join(
        json.dumps(dict(row), ensure_ascii=False, default=str) + "\n" for row in rows
    ).encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return text.getvalue().encode()


def _parquet(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    table = pa.Table.from_pydict({c: [row.get(c) for row in rows] for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def write_table(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` (``columns`` in order) as the table ``path``'s extension says, atomically."""
    kind = table_kind(path, "the output")
    if kind == "jsonl":
        data = json_lines([{c: row.get(c) for c in columns} for row in rows])
    elif kind == "csv":
        data = _csv(rows, columns)
    else:
        data = _parquet(rows, columns)
    write_atomic(path, data)


__all__ = ["KINDS", "fsync_dir", "json_lines", "table_kind", "write_atomic", "write_table"]
