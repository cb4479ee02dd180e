"""Getting models out of and into the registry: plain-library export, and safe import.

Export writes a directory that vanilla ``peft`` / ``transformers`` load with no
modelyard code. Import runs every safety check of ``modelyard.artifacts`` on a
staged copy before anything is stored; a refusal leaves no registry row and no
blob, and is itself audited.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelyard.artifacts import (
    ArtifactKind,
    ArtifactStore,
    ImportLimits,
    SafetyReport,
    inspect_artifact,
    stage_import,
)
from modelyard.base import model_dir
from modelyard.errors import ConfigError, NotFound, UnsafeArtifact
from modelyard.registry._card import model_card
from modelyard.registry._lineage import ensure_base_model, lineage_record, refuse_a_near_base_name
from modelyard.registry._orphans import (
    check_model_owner,
    discard_unreferenced,
    drop_if_empty,
    ensure_model,
)
from modelyard.registry._versions import imported_template, verified_files
from modelyard.store import BaseModel, ModelVersion, Store


def export_version(store: Store, artifacts: ArtifactStore, ref: str, out_dir: Path) -> Path:
    """Write ``ref`` as a plain model directory (plus ``README.md`` card and ``lineage.json``).

    An adapter's ``adapter_config.json`` points ``base_model_name_or_path`` at
    its base's source, so ``PeftModel.from_pretrained(base, out_dir)`` works as is.
    The stored bytes are verified before they are copied.
    """
    version = store.resolve_model_ref(ref)
    if version.kind == "upstream":
        raise ConfigError(
            f"{ref} is an upstream (another server answers for it): it has no weights to export",
            hint="`modelyard registry show` prints its spec.",
        )
    _check_out_dir(out_dir)
    files = verified_files(store, artifacts, version)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the export directory {out_dir}: {exc.strerror or exc}",
            hint="Choose a directory you can write to.",
            field="--out",
        ) from exc
    for path in sorted(files.rglob("*")):
        target = out_dir / path.relative_to(files)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            shutil.copyfile(path, target)
            target.chmod(0o644)
    if version.kind == "adapter":
        config_path = out_dir / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = version.base_model_source
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
    model = store.get_registered_model(version.model)
    run = store.get_run(version.run_id) if version.run_id else None
    (out_dir / "README.md").write_text(model_card(model, version, run), encoding="utf-8")
    lineage = {"ref": version.ref, "artifact_digest": version.artifact_digest, **version.lineage}
    (out_dir / "lineage.json").write_text(
        json.dumps(lineage, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    return out_dir


def _check_out_dir(out_dir: Path) -> None:
    """``--out`` is a new or empty directory, or a ConfigError (before anything is read)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(
            f"export directory {out_dir} is a file",
            hint="Give --out a new (or empty) directory.",
            field="--out",
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(
            f"export directory {out_dir} is not empty",
            hint="Choose a new directory; export never overwrites files.",
            field="--out",
        )
    parent = next((p for p in out_dir.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(
            f"cannot create the export directory {out_dir}: {parent} is a file",
            hint="Give --out a path under a directory.",
            field="--out",
        )


def export_loader(version: ModelVersion) -> str:
    """How plain libraries load what ``export_version`` wrote (``DIR`` is the directory)."""
    if version.kind == "adapter":
        return "peft.PeftModel.from_pretrained(base, DIR)"
    return "transformers.AutoModelForCausalLM.from_pretrained(DIR)"


def version_kind(text: str) -> ArtifactKind:
    """``adapter`` or ``full``, as ``import_version``'s ``kind`` (from the ``--kind`` flag)."""
    if text == "adapter":
        return "adapter"
    if text == "full":
        return "full"
    raise ConfigError(f"--kind must be 'adapter' or 'full', not {text!r}", field="kind")


@dataclass(frozen=True)
class ImportResult:
    version: ModelVersion
    report: SafetyReport


def import_version(
    store: Store,
    artifacts: ArtifactStore,
    source: Path,
    *,
    name: str,
    base_model: str,
    kind: ArtifactKind = "adapter",
    tenant: str | None = None,
    description: str = "",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    max_rank: int = 256,
    staging_root: Path | None = None,
    limits: ImportLimits | None = None,
) -> ImportResult:
    """Check an outside model (directory or archive) and register it as a new version.

    ``base_model`` is a base registered in the store (by name), or a model
    directory / hub id that is registered on first use. The source is staged
    under ``staging_root`` (created when needed; default: the artifact store's
    work area) within ``limits``. When the version row is refused, the blob and
    a model created for it are removed again.
    """
    limits = limits or ImportLimits()
    check_model_owner(store, name, tenant, description=description)
    base = _base(store, base_model)
    base_dir = model_dir(base.source)
    subject = f"{name} <- {source}"
    artifacts.sweep_tmp()  # what killed imports left behind
    with _staging_dir(artifacts, staging_root) as tmp:
        try:
            root = stage_import(source, Path(tmp) / "staged", limits=limits)
            report = inspect_artifact(
                root,
                kind=kind,
                base_model_dir=base_dir,
                allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
                max_rank=max_rank,
                max_json_depth=limits.max_json_depth,
            )
        except UnsafeArtifact as exc:
            store.record_audit_event(
                "artifact.import_refused",
                subject,
                {
                    "source": str(source),
                    "model": name,
                    "rule": exc.rule,
                    "path": exc.path,
                    "reason": exc.message,
                },
            )
            raise
        # Every refusal happens above, before a single byte reaches the artifact store.
        template = imported_template(root)
        blob = artifacts.put_dir(root, kind=kind)
    created = False
    try:
        created = ensure_model(store, name, tenant=tenant, description=description)
        version = store.create_model_version(
            name,
            kind=kind,
            artifact_digest=blob.digest,
            base_model=base.name,
            run_id=None,
            lineage=lineage_record(
                base, template, imported_from=str(source), safety=report.to_dict()
            ),
            metrics={},
        )
    except BaseException:
        discard_unreferenced(store, artifacts, blob.digest)
        if created:
            drop_if_empty(store, name, reason=f"the import of {source} was not registered")
        raise
    return ImportResult(version, report)


@contextlib.contextmanager
def _staging_dir(artifacts: ArtifactStore, staging_root: Path | None) -> Iterator[Path]:
    if staging_root is None:
        with artifacts.staging("import") as tmp:
            yield tmp
        return
    try:
        staging_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the staging directory {staging_root}: {exc.strerror or exc}",
            hint="Stage imports in a writable directory.",
        ) from exc
    with tempfile.TemporaryDirectory(prefix="modelyard-import-", dir=staging_root) as tmp:
        yield Path(tmp)


def _base(store: Store, ref: str) -> BaseModel:
    try:
        return store.get_base_model(ref)
    except NotFound:
        refuse_a_near_base_name(store, ref, field="--base-model")
        return ensure_base_model(store, ref)
