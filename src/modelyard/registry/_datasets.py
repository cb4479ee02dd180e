"""Dataset versions as stored files, and what a dataset was made from.

A dataset version is canonical JSONL (one ``json.dumps(row, sort_keys=True,
ensure_ascii=False)`` per line) in the artifact store, its SHA-256 the dataset's
``digest`` in the store. ``store_dataset`` writes one (``finetune`` for its train
and eval rows, ``data from-records`` for what it collects), ``dataset_rows`` reads
one back with every byte verified, and ``records_origin`` says whether rows with a
given digest were collected from inference records, for the lineage of what is
trained on them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.store import DatasetVersion, Store

RECORDS_SOURCE = "inference_records"
"""``report["lineage"]["source"]`` of a dataset collected from inference records."""


def canonical_jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The rows as canonical JSONL: keys sorted, UTF-8, one row a line."""
    # Values JSON cannot hold (a Parquet date, say) are written as text, as write_jsonl does.
    lines = (json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str) for r in rows)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def rows_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    """The SHA-256 of the rows' canonical JSONL: a dataset version's ``digest``."""
    return hashlib.sha256(canonical_jsonl(rows)).hexdigest()


def store_dataset(
    store: Store,
    artifacts: ArtifactStore,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    data_format: str,
    report: Mapping[str, Any],
) -> DatasetVersion:
    """A content-hashed dataset version: canonical JSONL in artifacts, its report in the store.

    The same rows under the same name return the version registered first.
    """
    data = canonical_jsonl(rows)
    with tempfile.TemporaryDirectory(prefix="modelyard-data-") as tmp:
        path = Path(tmp) / f"{name}.jsonl"
        path.write_bytes(data)
        blob = artifacts.put_file(path, kind="dataset")
    return store.register_dataset(
        name,
        digest=hashlib.sha256(data).hexdigest(),
        artifact_digest=blob.digest,
        format=data_format,
        n_rows=len(rows),
        report=dict(report),
    )


def dataset_rows(artifacts: ArtifactStore, dataset: DatasetVersion) -> list[dict[str, Any]]:
    """The rows of a stored dataset version, read after every byte is verified."""
    root = artifacts.open_verified(dataset.artifact_digest)
    rows: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            rows += [json.loads(line) for line in lines if line.strip()]
    return rows


def records_origin(store: Store, digest: str) -> dict[str, Any] | None:
    """Where rows with ``digest`` came from when a dataset version of exactly those rows was
    collected from inference records (``data from-records``), else None: the dataset
    (``name:version``, the first registered), how many records, their endpoint and ids."""
    for dataset in sorted(store.list_datasets(), key=lambda d: d.id):
        lineage = dataset.report.get("lineage")
        if dataset.digest != digest or not isinstance(lineage, Mapping):
            continue
        if lineage.get("source") != RECORDS_SOURCE:
            continue
        ids = [str(i) for i in lineage.get("record_ids") or []]
        return {
            "dataset": f"{dataset.name}:{dataset.version}",
            "records": len(ids),
            "endpoint": lineage.get("endpoint"),
            "record_ids": ids,
        }
    return None
