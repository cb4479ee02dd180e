"""The rows an endpoint's versions were already trained on: version → run → dataset.

Every version of the endpoint's model (and any other version its records name)
that was trained here has a run, whose dataset version is canonical JSONL in the
artifact store; those rows, and the rows of files the user names (``--exclude``),
are what a new dataset must not repeat.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.artifacts import ArtifactStore
from modelyard.curate._select import row_key
from modelyard.data import load_rows
from modelyard.errors import ModelyardError
from modelyard.registry import dataset_rows
from modelyard.store import DatasetVersion, ModelVersion, Store


@dataclass
class KnownRows:
    """The ``row_key`` of every row trained on, and where they were read from."""

    keys: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)  # dataset name:version, files
    unreadable: list[str] = field(default_factory=list)  # what could not be read, and why


def _datasets_of(store: Store, versions: Iterable[ModelVersion]) -> list[DatasetVersion]:
    by_id = {d.id: d for d in store.list_datasets()}
    found: dict[int, DatasetVersion] = {}
    for version in versions:
        if version.run_id is None:
            continue
        run = store.get_run(version.run_id)
        if run.dataset_id is not None and run.dataset_id in by_id:
            found[run.dataset_id] = by_id[run.dataset_id]
    return [found[i] for i in sorted(found)]


def known_rows(
    store: Store,
    artifacts: ArtifactStore,
    versions: Iterable[ModelVersion],
    exclude: Sequence[Path],
    data_format: str,
) -> KnownRows:
    """The rows the ``versions`` were trained on, and those of the ``exclude`` files (read
    as ``data_format``; a file that cannot be read is an error)."""
    known = KnownRows()
    for dataset in _datasets_of(store, versions):
        ref = f"{dataset.name}:{dataset.version}"
        try:
            rows = dataset_rows(artifacts, dataset)
        except ModelyardError as exc:  # deleted or altered: say so, compare with the rest
            known.unreadable.append(f"{ref}: {exc.one_line()}")
            continue
        known.keys.update(row_key(r, dataset.format) for r in rows)
        known.sources.append(ref)
    for path in exclude:
        known.keys.update(row_key(r, data_format) for r in load_rows(path, data_format))
        known.sources.append(str(path))
    return known
