"""Load a registered model version for evaluation: verified bytes, its base, its template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.data._templates import PromptTemplate, template_for, template_named
from modelyard.errors import ArtifactIntegrityError
from modelyard.store import ModelVersion, Store


def verified_files(store: Store, artifacts: ArtifactStore, version: ModelVersion) -> Path:
    """The directory of a version's files, after every byte is checked against the manifest.

    A version whose stored files no longer match is refused, and the refusal is
    audited, so nothing evaluates, serves or exports altered weights.
    """
    try:
        return artifacts.open_verified(version.artifact_digest)
    except ArtifactIntegrityError as exc:
        store.record_audit_event(
            "artifact.verification_failed",
            version.ref,
            {"digest": version.artifact_digest, "reason": exc.message},
        )
        raise


def load_version_model(
    store: Store, artifacts: ArtifactStore, version: ModelVersion
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a version, from verified files (see ``verified_files``)."""
    from modelyard.base import load_base
    from modelyard.evaluation import load_adapter

    files = verified_files(store, artifacts, version)
    if version.kind == "full":
        return load_base(files)
    model, tokenizer = load_base(version.base_model_source)
    return load_adapter(model, files), tokenizer


def version_template(version: ModelVersion, tokenizer: Any) -> PromptTemplate:
    """The prompt template a version was trained with (alpaca for versions that predate it)."""
    name = version.lineage.get("prompt_template")
    if isinstance(name, str):
        return template_named(name, tokenizer)
    return template_for("alpaca", tokenizer)


def version_format(version: ModelVersion) -> str:
    dataset = version.lineage.get("dataset")
    fmt = dataset.get("format") if isinstance(dataset, dict) else None
    return fmt if isinstance(fmt, str) else "alpaca"
