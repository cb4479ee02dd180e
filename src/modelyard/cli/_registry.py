"""``modelyard registry lineage|card|export|import|archive|unalias``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.tree import Tree

from modelyard.cli._common import console, open_artifacts, open_store, print_json, settings
from modelyard.errors import NotFound
from modelyard.store import ModelVersion, Store

REF = typer.Argument(..., help="NAME@alias, NAME:VERSION or NAME (latest).")


def _add_mapping(tree: Tree, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping):
            _add_mapping(tree.add(f"[bold]{key}[/]"), value)
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            branch = tree.add(f"[bold]{key}[/]")
            for i, item in enumerate(value):
                _add_mapping(branch.add(str(i)), item)
        else:
            tree.add(f"{key}: {value}")


def _lineage_tree(store: Store, version: ModelVersion, depth: int = 0) -> Tree:
    lineage = dict(version.lineage)
    aliases = f" [cyan]@{', @'.join(version.aliases)}[/]" if version.aliases else ""
    tree = Tree(f"[bold]{version.ref}[/] ({version.kind}, {version.status}){aliases}")
    tree.add(f"artifact sha256:{version.artifact_digest}")
    if version.run_id:
        run = store.get_run(version.run_id)
        tree.add(f"run {run.id} ({run.status}, seed {run.seed})")
    for key in ("dataset", "base_model", "environment"):
        if isinstance(lineage.get(key), Mapping):
            _add_mapping(tree.add(f"[bold]{key}[/]"), lineage[key])
    for key in ("prompt_template", "seed", "git_commit", "imported_from"):
        if lineage.get(key) is not None:
            tree.add(f"{key}: {lineage[key]}")
    if isinstance(lineage.get("config"), Mapping):
        _add_mapping(tree.add("[bold]config[/]"), lineage["config"])
    parent = lineage.get("parent")
    if isinstance(parent, str) and depth < 10:
        try:
            tree.add("[bold]parent[/]").add(
                _lineage_tree(store, store.resolve_model_ref(parent), depth + 1)
            )
        except NotFound:
            tree.add(f"parent: {parent} (not found)")
    return tree


def lineage(ref: str = REF, json_out: bool = typer.Option(False, "--json")) -> None:
    """Show where a version came from as a tree: run, data, base weights, config, parents."""
    with open_store() as store:
        version = store.resolve_model_ref(ref)
        if json_out:
            print_json({"ref": version.ref, "lineage": version.lineage})
            return
        console.print(_lineage_tree(store, version))


def card(
    ref: str = REF,
    out: Path | None = typer.Option(None, "--out", help="Write the card here (else stdout)."),
) -> None:
    """Write the version's model card (Markdown): use, data, training, evaluation, lineage."""
    from modelyard.registry import model_card

    with open_store() as store:
        version = store.resolve_model_ref(ref)
        model = store.get_registered_model(version.model)
        run = store.get_run(version.run_id) if version.run_id else None
    text = model_card(model, version, run)
    if out is None:
        print(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote the model card of {version.ref} to {out}")


def export(
    ref: str = REF,
    out: Path = typer.Option(..., "--out", help="A new (or empty) directory."),
) -> None:
    """Export a version as a plain directory that vanilla peft / transformers load."""
    from modelyard.registry import export_version

    s = settings()
    with open_store(s) as store:
        version = store.resolve_model_ref(ref)
        export_version(store, open_artifacts(s), ref, out)
    loader = (
        "peft.PeftModel.from_pretrained(base, DIR)"
        if version.kind == "adapter"
        else "transformers.AutoModelForCausalLM.from_pretrained(DIR)"
    )
    console.print(f"exported {version.ref} to {out}; load it with {loader}")


def import_(
    path: Path = typer.Argument(..., help="A model directory, or a .zip / .tar(.gz) of one."),
    name: str = typer.Option(..., "--name", help="Registered model to add a version to."),
    base_model: str = typer.Option(
        ..., "--base-model", help="Base: a registered base name, a directory or a hub id."
    ),
    kind: str = typer.Option("adapter", "--kind", help="adapter or full."),
    tenant: str | None = typer.Option(None, "--tenant", help="Owner, for a new model."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Admit pickle weights whose opcodes scan clean."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Admit configs with auto_map / custom code."
    ),
    max_rank: int = typer.Option(256, "--max-rank", min=1, help="Largest LoRA rank accepted."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Check an outside model with the artifact safety rules, then register it.

    Refused: pickle weights (unless --allow-pickle and a clean opcode scan),
    unknown file kinds, bad safetensors headers, path tricks, remote code
    (unless --trust-remote-code), an adapter that does not fit its base. A
    refusal registers nothing, stores nothing, and is audited.
    """
    from modelyard.errors import ConfigError
    from modelyard.registry import import_version

    if kind not in ("adapter", "full"):
        raise ConfigError(f"--kind must be 'adapter' or 'full', not {kind!r}", field="kind")
    s = settings()
    with open_store(s) as store:
        artifacts = open_artifacts(s)
        result = import_version(
            store,
            artifacts,
            path,
            name=name,
            base_model=base_model,
            kind="adapter" if kind == "adapter" else "full",
            tenant=tenant,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            max_rank=max_rank,
            staging_root=artifacts.root / "tmp" if artifacts.root.is_dir() else None,
        )
    if json_out:
        print_json({"version": result.version, "report": result.report.to_dict()})
        return
    console.print(
        f"[green]imported[/] {result.version.ref}: {len(result.report.files)} files passed "
        f"the safety checks (sha256:{result.version.artifact_digest[:12]}…)"
    )


def archive(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="Version number to archive."),
) -> None:
    """Archive a version: it stays on record (and in lineage) but takes no alias or traffic."""
    with open_store() as store:
        archived = store.archive_model_version(name, version)
    console.print(f"archived {archived.ref}")


def unalias(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Argument(..., help="The alias to remove."),
) -> None:
    """Remove an alias (endpoints that follow it stop resolving until it is set again)."""
    with open_store() as store:
        was = store.delete_alias(name, alias)
    console.print(f"removed {name}@{alias} (it pointed to {was.ref})")


def tag(
    ref: str = REF,
    tags: list[str] = typer.Argument(None, help="KEY=VALUE pairs to set."),
    remove: list[str] = typer.Option([], "--remove", help="A tag key to delete (repeatable)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Set or remove tags on a version (the only mutable part of a version; audited)."""
    from modelyard.errors import ConfigError

    pairs: dict[str, str] = {}
    for item in tags or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"tag {item!r} is not KEY=VALUE", hint="e.g. team=claims")
        pairs[key] = value
    if not pairs and not remove:
        raise ConfigError("no tags given", hint="Pass KEY=VALUE pairs and/or --remove KEY.")
    with open_store() as store:
        version = store.set_version_tags(ref, pairs, remove=remove)
    if json_out:
        print_json({"ref": version.ref, "tags": version.tags})
        return
    shown = ", ".join(f"{k}={v}" for k, v in sorted(version.tags.items())) or "no tags"
    console.print(f"{version.ref}: {shown}")
