"""``modelyard registry lineage|card|export|import|upstream|archive|unalias|tag``: parse and
print.

What these commands do is ``modelyard.registry``'s; archive and unalias are store rows.
lineage, card, archive, unalias and tag go through ``open_plane`` (the store here, or a
server's admin API with MODELYARD_URL); export, import and upstream need the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.tree import Tree

from modelyard.artifacts import ImportLimits
from modelyard.cli._common import (
    console,
    open_artifacts,
    open_store,
    out_file,
    print_json,
    settings,
)
from modelyard.cli._plane import open_plane
from modelyard.errors import ConfigError
from modelyard.registry import (
    LineageNode,
    UpstreamSpec,
    export_loader,
    export_version,
    import_version,
    parse_tags,
    register_upstream,
    version_kind,
)
from modelyard.store import ModelVersion

REF = typer.Argument(..., help="NAME@alias, NAME:VERSION or NAME (latest).")

GATE_KEYS = ("gates", "gate_overrides")
"""Keys of a version's metrics that are gate verdicts and overrides, not measurements."""


def gate_lines(version: ModelVersion) -> list[str]:
    """``registry show``'s gate lines: a sentence, each verdict, each override."""
    status = version.gates
    colour = {"passed": "green", "failed": "red"}.get(status.state, "yellow")
    lines = [f"  gates      [{colour}]{status.summary}[/]"]
    source = _gate_source(version)
    if source is not None and source.get("by") == "evaluate":
        lines.append(
            f"             by `modelyard evaluate` on {escape(str(source.get('data')))} "
            f"({source.get('rows')} rows)"
        )
    lines += [f"             [red]✗[/] {text}" for text in status.failed]
    lines += [f"             [green]✓[/] {text}" for text in status.passed]
    if status.state != "passed" and not status.overrides:
        lines.append("             no protected alias or rollout without --override-gates --reason")
    for o in status.overrides:
        lines.append(
            f"  override   [yellow]gates overridden[/] by {o.get('actor')} at {o.get('at')}"
        )
        lines.append(f"             to {o.get('for')}: {o.get('reason')}")
    return lines


def gate_json(version: ModelVersion) -> dict[str, Any]:
    """The gate status as ``--json`` prints it beside the version."""
    status = version.gates
    return {
        "state": status.state,
        "summary": status.summary,
        "passed": list(status.passed),
        "failed": list(status.failed),
        "overrides": [dict(o) for o in status.overrides],
        "source": _gate_source(version),
    }


def _gate_source(version: ModelVersion) -> dict[str, Any] | None:
    """Where the recorded verdicts came from, when not from the run that trained it."""
    gates = version.metrics.get("gates")
    source = gates.get("source") if isinstance(gates, Mapping) else None
    return dict(source) if isinstance(source, Mapping) else None


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


def _lineage_tree(node: LineageNode) -> Tree:
    version, lineage = node.version, dict(node.version.lineage)
    aliases = f" [cyan]@{', @'.join(version.aliases)}[/]" if version.aliases else ""
    tree = Tree(f"[bold]{version.ref}[/] ({version.kind}, {version.status}){aliases}")
    tree.add(f"artifact sha256:{version.artifact_digest}")
    if node.run is not None:
        tree.add(f"run {node.run.id} ({node.run.status}, seed {node.run.seed})")
    for key in ("dataset", "base_model", "environment"):
        if isinstance(lineage.get(key), Mapping):
            values = dict(lineage[key])
            origin = values.pop("derived_from", None)  # data from-records: ids in --json
            branch = tree.add(f"[bold]{key}[/]")
            _add_mapping(branch, values)
            if isinstance(origin, Mapping):
                branch.add(
                    f"derived from {origin.get('records')} inference records of endpoint "
                    f"{origin.get('endpoint')} (dataset {origin.get('dataset')})"
                )
    for key in ("prompt_template", "seed", "git_commit", "imported_from"):
        if lineage.get(key) is not None:
            tree.add(f"{key}: {lineage[key]}")
    if isinstance(lineage.get("config"), Mapping):
        _add_mapping(tree.add("[bold]config[/]"), lineage["config"])
    if node.parent is not None:
        tree.add("[bold]parent[/]").add(_lineage_tree(node.parent))
    elif node.missing_parent is not None:
        tree.add(f"parent: {node.missing_parent} (not found)")
    return tree


def lineage(
    ref: str = REF, json_out: bool = typer.Option(False, "--json", help="Print the result as JSON.")
) -> None:
    """Show where a version came from as a tree: run, data, base weights, config, parents."""
    with open_plane() as plane:
        version = plane.resolve_model_ref(ref)
        if json_out:
            print_json({"ref": version.ref, "lineage": version.lineage})
            return
        console.print(_lineage_tree(plane.lineage_chain(version)))


def card(
    ref: str = REF,
    out: Path | None = typer.Option(None, "--out", help="Write the card here (else stdout)."),
) -> None:
    """Write the version's model card (Markdown): use, data, training, evaluation, lineage."""
    target = None if out is None else out_file(out)
    with open_plane() as plane:
        version, text = plane.version_card(ref)
    if target is None:
        print(text)
    else:
        target.write_text(text, encoding="utf-8")
        console.print(f"wrote the model card of {version.ref} to {out}")


def export(
    ref: str = REF,
    out: Path = typer.Option(..., "--out", help="A new (or empty) directory."),
) -> None:
    """Export a version as a plain directory that vanilla peft / transformers load."""
    s = settings()
    with open_store(s) as store:
        version = store.resolve_model_ref(ref)
        export_version(store, open_artifacts(s), ref, out)
    console.print(f"exported {version.ref} to {out}; load it with {export_loader(version)}")


def import_(
    path: Path = typer.Argument(..., help="A model directory, or a .zip / .tar(.gz) of one."),
    name: str = typer.Option(..., "--name", help="Registered model to add a version to."),
    base_model: str = typer.Option(
        ..., "--base-model", help="Base: a registered base name, a directory or a hub id."
    ),
    kind: str = typer.Option("adapter", "--kind", help="adapter or full."),
    tenant: str | None = typer.Option(None, "--tenant", help="Owner, for a new model."),
    description: str = typer.Option(
        "", "--description", help="Intended use, for a new model (the model card shows it)."
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Admit pickle weights whose opcodes scan clean."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Admit configs with auto_map / custom code."
    ),
    max_rank: int = typer.Option(256, "--max-rank", min=1, help="Largest LoRA rank accepted."),
    max_bytes: int = typer.Option(
        ImportLimits.max_bytes, "--max-bytes", min=1, help="Most bytes the import may expand to."
    ),
    max_files: int = typer.Option(
        ImportLimits.max_files, "--max-files", min=1, help="Most files the import may hold."
    ),
    max_ratio: float = typer.Option(
        ImportLimits.max_ratio,
        "--max-ratio",
        min=1,
        help="Most bytes an archive may expand to per byte of archive (archive bombs).",
    ),
    max_json_depth: int = typer.Option(
        ImportLimits.max_json_depth, "--max-json-depth", min=1, help="Deepest JSON nesting."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check an outside model with the artifact safety rules, then register it.

    Refused: pickle weights (unless --allow-pickle and a clean opcode scan),
    unknown file kinds, bad safetensors headers, path tricks, remote code
    (unless --trust-remote-code), an adapter that does not fit its base or
    that the server cannot serve, an import past its limits (--max-bytes,
    --max-files, --max-ratio, --max-json-depth). A refusal registers nothing,
    stores nothing, and is audited.
    """
    limits = ImportLimits(max_bytes, max_files, max_ratio, max_json_depth)
    wanted = version_kind(kind)
    s = settings()
    with open_store(s) as store:
        artifacts = open_artifacts(s)
        result = import_version(
            store,
            artifacts,
            path,
            name=name,
            base_model=base_model,
            kind=wanted,
            tenant=tenant,
            description=description,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            max_rank=max_rank,
            limits=limits,
        )
    if json_out:
        print_json({"version": result.version, "report": result.report.to_dict()})
        return
    console.print(
        f"[green]imported[/] {result.version.ref}: {len(result.report.files)} files passed "
        f"the safety checks (sha256:{result.version.artifact_digest[:12]}…)"
    )


def upstream(
    name: str = typer.Argument(..., help="Registered model to add the version to."),
    base_url: str = typer.Option(
        ...,
        "--base-url",
        help="The upstream's OpenAI-compatible URL, e.g. https://api.openai.com/v1.",
    ),
    upstream_model: str = typer.Option(
        ..., "--upstream-model", help="The model name the upstream knows, e.g. gpt-4o-mini."
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable holding the key, read by `serve`."
    ),
    api_key_file: str | None = typer.Option(
        None, "--api-key-file", help="File holding the key (a mounted secret), read by `serve`."
    ),
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="Longest wait for each chunk."),
    connect_timeout_s: float = typer.Option(
        5.0, "--connect-timeout-s", help="Longest wait to connect to the upstream server."
    ),
    max_retries: int = typer.Option(
        2, "--max-retries", help="Retries on connection errors, 429 and 5xx (with backoff)."
    ),
    max_concurrency: int = typer.Option(
        16, "--max-concurrency", help="Requests sent to the upstream at once, per server."
    ),
    price_input: float | None = typer.Option(
        None, "--price-input", help="Price per 1,000 prompt tokens (for costs)."
    ),
    price_output: float | None = typer.Option(
        None, "--price-output", help="Price per 1,000 completion tokens (for costs)."
    ),
    max_tokens_field: str = typer.Option(
        "max_tokens",
        "--max-tokens-field",
        help="What chat requests call the answer's token cap: max_tokens, or "
        "max_completion_tokens (OpenAI's o-series and gpt-5 refuse max_tokens).",
    ),
    base: str | None = typer.Option(
        None, "--base", help="Base model name to record (default MODEL@HOST)."
    ),
    tenant: str | None = typer.Option(None, "--tenant", help="Owner, for a new model."),
    description: str = typer.Option(
        "", "--description", help="Intended use, for a new model (the model card shows it)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Register a version answered by another OpenAI-compatible server (the gateway).

    The key is never stored: name where `modelyard serve` reads it (--api-key-env or
    --api-key-file). Put the version behind an endpoint like any other; traffic plans
    may mix it with local versions (A/B, canary, shadow, fallback).
    """
    try:
        spec = UpstreamSpec(
            base_url=base_url, model=upstream_model, api_key_env=api_key_env,
            api_key_file=api_key_file, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s,
            max_retries=max_retries, max_concurrency=max_concurrency, input_per_1k=price_input,
            output_per_1k=price_output, max_tokens_field=max_tokens_field,
        )  # fmt: skip
    except ConfigError as exc:  # the spec's field names are the API's: name the option typed
        option = _UPSTREAM_OPTIONS.get(str(exc.context.get("field")))
        if option is None or "allowed" not in exc.context:
            raise
        value, allowed = exc.context.get("value"), exc.context["allowed"]
        raise ConfigError(f"{option} is {value!r}; use {allowed}", field=option) from None
    s = settings()
    with open_store(s) as store:
        version = register_upstream(
            store, open_artifacts(s), spec, name=name, base=base, tenant=tenant,
            description=description,
        )  # fmt: skip
    if json_out:
        print_json({"version": version, "upstream": spec.to_json()})
        return
    console.print(
        f"[green]registered[/] {version.ref}: answers from {spec.model} at {spec.url} "
        f"(key from {spec.credential})"
    )


_UPSTREAM_OPTIONS = {
    "base_url": "--base-url",
    "model": "--upstream-model",
    "api_key_env": "--api-key-env",
    "timeout_s": "--timeout-s",
    "connect_timeout_s": "--connect-timeout-s",
    "max_retries": "--max-retries",
    "max_concurrency": "--max-concurrency",
    "input_per_1k": "--price-input",
    "output_per_1k": "--price-output",
    "max_tokens_field": "--max-tokens-field",
}
"""The ``registry upstream`` option of each ``UpstreamSpec`` field, for its errors."""


def archive(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="Version number to archive."),
) -> None:
    """Archive a version: it stays on record (and in lineage) but takes no alias or traffic."""
    with open_plane() as plane:
        archived = plane.archive_model_version(name, version)
    console.print(f"archived {archived.ref}")


def unalias(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Argument(..., help="The alias to remove."),
) -> None:
    """Remove an alias (endpoints that follow it stop resolving until it is set again)."""
    with open_plane() as plane:
        was = plane.delete_alias(name, alias)
    console.print(f"removed {name}@{alias} (it pointed to {was.ref})")


def tag(
    ref: str = REF,
    tags: list[str] = typer.Argument(None, help="KEY=VALUE pairs to set."),
    remove: list[str] = typer.Option(
        [], "--remove", metavar="KEY", help="A tag key to delete (repeatable)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Set or remove tags on a version (the only mutable part of a version; audited)."""
    parse_tags(tags or [], remove)  # a bad tag fails before the store is opened
    with open_plane() as plane:
        version = plane.tag_version(ref, tags or [], remove)
    if json_out:
        print_json({"ref": version.ref, "tags": version.tags})
        return
    shown = ", ".join(f"{k}={v}" for k, v in sorted(version.tags.items())) or "no tags"
    console.print(f"{version.ref}: {shown}")
