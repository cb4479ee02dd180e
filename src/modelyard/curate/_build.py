"""An endpoint's records in a window → rows checked like ``data validate`` → a dataset version.

``harvest`` reads the records (oldest first), keeps those the filters pass and that
give their text back (``select_rows``), leaves out what the endpoint's versions were
already trained on (``known_rows``) and validates the rest with ``validate_rows``;
``save`` writes them as canonical JSONL and registers a dataset version whose report
holds the validation, the counts of what was left out and why, and the lineage: the
endpoint, the window, the filters and the id of every record a row came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.curate._known import KnownRows, known_rows
from modelyard.curate._select import FILTERS, SKIP_REASONS, RecordFilters, Selection, select_rows
from modelyard.data import FORMATS, TEMPLATE_FORMATS, ValidationReport, get_format, validate_rows
from modelyard.errors import ConfigError, NotFound
from modelyard.registry import RECORDS_SOURCE, canonical_jsonl, store_dataset, template_name
from modelyard.store import DatasetVersion, Endpoint, ModelVersion, Store

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: records looked at so far, of how many."""


@dataclass
class Harvest:
    """What ``harvest`` found: the rows, their records, and everything left out."""

    endpoint: str
    data_format: str
    filters: RecordFilters
    selection: Selection
    known: KnownRows
    validation: ValidationReport

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.selection.rows

    def lineage(self) -> dict[str, Any]:
        return {
            "source": RECORDS_SOURCE,
            "endpoint": self.endpoint,
            "window": {
                "since": self.filters.since.isoformat(),
                "until": self.filters.until.isoformat(),
            },
            "filters": self.filters.to_dict(),
            "format": self.data_format,
            "record_ids": list(self.selection.record_ids),
        }

    def report(self) -> dict[str, Any]:
        """The dataset version's report: validation, lineage, what was left out and why."""
        return {
            **self.validation.to_dict(),
            **self.selection.to_dict(),
            "lineage": self.lineage(),
            "training_data": list(self.known.sources),
            "training_data_unreadable": list(self.known.unreadable),
        }


def _endpoint(store: Store, name: str) -> Endpoint:
    try:
        return store.get_endpoint(name)
    except NotFound as exc:
        raise ConfigError(
            f"no endpoint named {name!r}",
            hint="`modelyard endpoints list` shows the endpoints.",
            field="--endpoint",
        ) from exc


def _version_id(store: Store, endpoint: Endpoint, version: int | None) -> int | None:
    if version is None:
        return None
    try:
        return store.get_model_version(endpoint.model, version).id
    except NotFound as exc:
        raise ConfigError(
            f"endpoint {endpoint.name!r} serves model {endpoint.model!r}, which has no "
            f"version {version}",
            field="--version",
        ) from exc


def default_format(endpoint: Endpoint, versions: dict[int, ModelVersion]) -> str:
    """The format of the rows the endpoint's main version (most traffic) was trained on."""
    route = max(endpoint.routes, key=lambda r: r.weight, default=None)
    version = versions.get(route.version_id) if route is not None else None
    name = template_name(version.lineage) if version is not None else None
    if name not in TEMPLATE_FORMATS:
        raise ConfigError(
            f"endpoint {endpoint.name!r} serves a version whose prompt template "
            f"({name or 'unknown'}) gives no dataset format",
            hint=f"Name one with --format: {', '.join(FORMATS)}.",
            field="--format",
        )
    return TEMPLATE_FORMATS[str(name)]


def _versions(
    store: Store, endpoint: Endpoint, version_ids: Collection[int | None]
) -> dict[int, ModelVersion]:
    """Every version of the endpoint's model and every other version its records name."""
    versions = {v.id: v for v in store.list_model_versions(endpoint.model)}
    for vid in version_ids:
        if vid is not None and vid not in versions:
            versions[vid] = store.get_model_version_by_id(vid)
    return versions


def harvest(
    store: Store,
    artifacts: ArtifactStore,
    *,
    endpoint: str,
    filters: RecordFilters,
    data_format: str | None = None,
    exclude: Sequence[Path] = (),
    progress: ProgressFn | None = None,
) -> Harvest:
    """The training rows of ``endpoint``'s records that ``filters`` pass, validated.

    ``data_format`` defaults to the format of the endpoint's main version. Bad input (no
    such endpoint or version, an empty window, nothing left) is a ``ConfigError``.
    """
    if filters.until <= filters.since:
        raise ConfigError(
            f"the window is empty: --until {filters.until.isoformat()} is not after "
            f"--since {filters.since.isoformat()}",
            field="--until",
        )
    if data_format is not None:
        get_format(data_format)
    ep = _endpoint(store, endpoint)
    window: dict[str, Any] = {
        "endpoint": ep.name, "version_id": _version_id(store, ep, filters.version),
        "since": filters.since, "until": filters.until, "status": filters.status,
    }  # fmt: skip
    # Counted first, then read a page at a time: only the rows stay in memory, not the
    # window's records (a month of traffic can be millions).
    counts = store.record_counts(**window)
    total = sum(counts.values())
    records = store.iter_records(**window)
    versions = _versions(store, ep, counts)
    fmt = data_format or default_format(ep, versions)
    known = known_rows(store, artifacts, versions.values(), exclude, fmt)
    selection = select_rows(
        records,
        filters=filters,
        data_format=fmt,
        templates={vid: template_name(v.lineage) for vid, v in versions.items()},
        policies={t.name: t.storage_policy for t in store.list_tenants()},
        known=known.keys,
        progress=None if progress is None else (lambda done: progress(done, total)),
    )
    if not selection.rows:
        raise ConfigError(_nothing_left(ep.name, selection), field="--endpoint")
    validation = validate_rows(selection.rows, fmt)
    return Harvest(ep.name, fmt, filters, selection, known, validation)


def _nothing_left(endpoint: str, selection: Selection) -> str:
    if not selection.read:
        return f"endpoint {endpoint!r} has no records in the window (with that version, status)"
    why = [f"{n} {FILTERS[k]}" for k, n in selection.filtered.items() if n]
    why += [f"{n} {SKIP_REASONS[k]}" for k, n in selection.skipped.items() if n]
    return f"no training rows in {selection.read} records of {endpoint!r}: " + "; ".join(why)


def check_out(out: Path, exclude: Sequence[Path]) -> None:
    """The file the rows go to, or a ConfigError: it is written as JSONL, so a name that
    says .csv or .parquet would be read as that (by `data validate` and a fine-tune), and
    it is replaced, so it is never one of the ``exclude`` files (the training data)."""
    if any(out.resolve() == path.resolve() for path in exclude):
        raise ConfigError(
            f"{out} is also an exclude file: writing the rows would replace it",
            hint="Write the rows to a new file; merge them into the training data after.",
        )
    if out.is_dir():
        raise ConfigError(f"{out} is a directory", hint="Name a file, e.g. rows.jsonl.")
    if out.suffix.lower() != ".jsonl":
        raise ConfigError(
            f"{out} is not named .jsonl: the rows are written as JSONL, and a file named "
            f"{out.suffix or 'without .jsonl'} would be read as another kind",
            hint=f"Name it {out.with_suffix('.jsonl').name} (convert it afterwards if another "
            "format is needed).",
        )


def save(
    store: Store, artifacts: ArtifactStore, found: Harvest, out: Path, name: str
) -> DatasetVersion:
    """Register the rows as dataset ``name`` and write them to ``out`` as canonical JSONL
    (the same bytes). The file is written beside ``out`` first and renamed into place once
    the version is registered: a file that cannot be written registers nothing, and the
    file at ``out`` always has its dataset version."""
    staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(canonical_jsonl(found.rows))
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the rows to {out}: {exc.strerror or exc}",
            hint="Pick an --out in a writable directory with room for the rows.",
            field="out",
        ) from exc
    try:
        dataset = store_dataset(
            store, artifacts, name, found.rows, found.data_format, found.report()
        )
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    return dataset
