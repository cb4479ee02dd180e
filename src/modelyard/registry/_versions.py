"""A registered version's files and prompt template, for everyone who loads or renders it.

``verified_files`` is the one way to a version's bytes: every byte is checked
against the manifest, and a refusal is audited. ``template_name`` is the one
decision of which prompt template a version uses: the one its lineage records,
or ``DEFAULT_TEMPLATE`` for versions that predate the record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.data import PROMPT_TEMPLATE_NAME, TEMPLATES, PromptTemplate, template_named
from modelyard.errors import ArtifactIntegrityError, ConfigError, ModelyardError
from modelyard.store import ModelVersion, Store

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = PROMPT_TEMPLATE_NAME
"""The template of versions whose lineage records none (they were all trained with it)."""


def verified_files(
    store: Store | None,
    artifacts: ArtifactStore,
    version: ModelVersion,
    *,
    by: str | None = None,
) -> Path:
    """The directory of a version's files, after every byte is checked against the manifest.

    A version whose stored files no longer match is refused, and the refusal is
    audited (``artifact.verification_failed``, naming ``by`` when given) when
    there is a ``store``, so nothing evaluates, serves or exports altered weights.
    """
    try:
        return artifacts.open_verified(version.artifact_digest)
    except ArtifactIntegrityError as exc:
        if store is not None:
            details = {"digest": version.artifact_digest, "reason": exc.message}
            try:
                store.record_audit_event(
                    "artifact.verification_failed",
                    version.ref,
                    {**details, "by": by} if by else details,
                )
            except ModelyardError as audit_error:  # the refusal stands even if the audit is down
                log.error("could not audit the refused artifact: %s", audit_error.one_line())
        raise


def load_version_model(
    store: Store, artifacts: ArtifactStore, version: ModelVersion
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a version, from verified files (see ``verified_files``)."""
    from modelyard.base import load_adapter, load_base

    if version.kind == "upstream":
        raise ConfigError(
            f"{version.ref} is an upstream (another server answers for it): it has no "
            "weights to load",
            hint="Call it through an endpoint instead.",
        )
    files = verified_files(store, artifacts, version)
    if version.kind == "full":
        return load_base(files)
    model, tokenizer = load_base(version.base_model_source)
    return load_adapter(model, files), tokenizer


def template_name(lineage: Mapping[str, Any]) -> str:
    """The prompt template a version (given its lineage) was trained with.

    An unknown recorded name is returned as is: rendering with it fails clearly
    (``template_named``) instead of silently using another template.
    """
    name = lineage.get("prompt_template")
    return name if isinstance(name, str) else DEFAULT_TEMPLATE


def version_template(version: ModelVersion, tokenizer: Any = None) -> PromptTemplate:
    """The prompt template of ``version``, ready to render rows (``chat`` needs ``tokenizer``)."""
    return template_named(template_name(version.lineage), tokenizer)


def imported_template(root: Path) -> str:
    """The template of a directory being imported: what its ``lineage.json`` records (as
    ``modelyard registry export`` writes it), else ``DEFAULT_TEMPLATE``."""
    try:
        recorded = json.loads((root / "lineage.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return DEFAULT_TEMPLATE
    name = template_name(recorded) if isinstance(recorded, Mapping) else DEFAULT_TEMPLATE
    return name if name in TEMPLATES else DEFAULT_TEMPLATE


def version_format(version: ModelVersion) -> str:
    """The data format a version's evaluation rows come in (recorded with its dataset)."""
    dataset = version.lineage.get("dataset")
    fmt = dataset.get("format") if isinstance(dataset, dict) else None
    return fmt if isinstance(fmt, str) else "alpaca"
