"""Export of the inference table (records with features and feedback) to JSONL or Parquet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from modelyard.errors import ConfigError
from modelyard.store import Store

FORMATS = ("jsonl", "parquet")
_SKIP = ("tenant_id", "version_id", "embedding")


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in _SKIP}
    out["created_at"] = row["created_at"].isoformat()
    return out


def export_records(
    store: Store,
    out: Path,
    *,
    format: str = "jsonl",
    endpoint: str | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    job_id: str | None = None,
) -> int:
    """Write the matching records (``job_id``: of one batch job, a ``batch run``'s or an
    OpenAI batch's), oldest first; returns how many."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}: use jsonl or parquet", field="format")
    if out.is_dir():
        raise ConfigError(
            f"cannot export to --out {out}: it is a directory; give a file name, "
            f"e.g. {out / ('records.' + format)}",
            field="--out",
        )
    if endpoint and not store.query_records(endpoint=endpoint, limit=1, text=False):
        store.get_endpoint(endpoint)  # a misspelt name is NotFound, not an empty file
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pages = _pages(store, endpoint=endpoint, tenant=tenant, since=since, job_id=job_id)
        count = 0
        if format == "jsonl":
            with tmp.open("w", encoding="utf-8") as handle:
                for page in pages:
                    count += len(page)
                    handle.writelines(
                        json.dumps(_clean(r), ensure_ascii=False, sort_keys=True) + "\n"
                        for r in page
                    )
        else:  # columnar pages (compact), their types widened where a page had only nulls
            tables = [pa.Table.from_pylist([_clean(r) for r in page]) for page in pages]
            count = sum(t.num_rows for t in tables)
            table = pa.concat_tables(tables, promote_options="permissive") if tables else None
            pq.write_table(table if table is not None else pa.table({}), tmp)
        tmp.replace(out)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        why = (
            f"{out.parent} is not a directory"
            if isinstance(exc, (FileExistsError, NotADirectoryError))
            else exc.strerror or str(exc)
        )
        raise ConfigError(
            f"cannot export to --out {out}: {why}; choose another file", field="--out"
        ) from None
    return count


PAGE = 5000
"""Records read at a time: an export of millions of records never holds them all as rows."""


def _pages(
    store: Store,
    *,
    endpoint: str | None,
    tenant: str | None,
    since: datetime | None,
    job_id: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The matching records, oldest first, a page at a time. Each page starts at the time
    the last one ended; the records of that time already written are left out by id (not
    by the order of ids, which is the database's collation), so none is repeated or lost."""
    cursor = since
    seen: set[str] = set()  # the ids written of the records made at time ``cursor``
    tick = timedelta(microseconds=1)
    while True:
        page = store.query_records(
            endpoint=endpoint, tenant=tenant, since=cursor, limit=PAGE, newest_first=False,
            job_id=job_id,
        )  # fmt: skip
        full = len(page) == PAGE
        page = [r for r in page if r["id"] not in seen or r["created_at"] != cursor]
        if not page and full and cursor is not None:  # a whole page made at one time
            rest = store.query_records(
                endpoint=endpoint, tenant=tenant, since=cursor, until=cursor + tick,
                limit=None, newest_first=False, job_id=job_id,
            )  # fmt: skip
            if left := [r for r in rest if r["id"] not in seen]:
                yield left
            cursor, seen = cursor + tick, set()
            continue
        if page:
            yield page
            end = page[-1]["created_at"]
            seen = {r["id"] for r in page if r["created_at"] == end} | (
                seen if end == cursor else set()
            )
            cursor = end
        if not full:
            return
