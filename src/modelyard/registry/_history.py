"""A version's ancestry: the version, its run, and its parents as far as they are recorded."""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.errors import NotFound
from modelyard.store import ModelVersion, Run, Store

MAX_DEPTH = 10
"""Parents followed at most (lineage chains are short; this bounds a corrupt cycle)."""


@dataclass(frozen=True)
class LineageNode:
    """One version in a chain: its run (if trained here) and its parent.

    ``missing_parent`` is the parent ref the lineage names when it no longer
    resolves (deleted, or recorded in another store).
    """

    version: ModelVersion
    run: Run | None
    parent: LineageNode | None = None
    missing_parent: str | None = None


def lineage_chain(store: Store, version: ModelVersion, depth: int = 0) -> LineageNode:
    """``version`` with its run and its recorded parents (up to ``MAX_DEPTH`` deep)."""
    run = store.get_run(version.run_id) if version.run_id else None
    parent_ref = version.lineage.get("parent")
    if not isinstance(parent_ref, str) or depth >= MAX_DEPTH:
        return LineageNode(version, run)
    try:
        parent = store.resolve_model_ref(parent_ref)
    except NotFound:
        return LineageNode(version, run, missing_parent=parent_ref)
    return LineageNode(version, run, parent=lineage_chain(store, parent, depth + 1))
