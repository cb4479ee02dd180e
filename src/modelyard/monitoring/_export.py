"""Export of the inference table (records with features and feedback) to JSONL or Parquet."""

from __future__ import annotations

import json
from datetime import datetime
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
) -> int:
    """Write the matching records, oldest first; returns how many."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}: use jsonl or parquet", field="format")
    if out.is_dir():
        raise ConfigError(
            f"cannot export to --out {out}: it is a directory; give a file name, "
            f"e.g. {out / ('records.' + format)}",
            field="--out",
        )
    rows = [
        _clean(r)
        for r in store.query_records(
            endpoint=endpoint, tenant=tenant, since=since, limit=None, newest_first=False
        )
    ]
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if format == "jsonl":
            with tmp.open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        else:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
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
    return len(rows)
