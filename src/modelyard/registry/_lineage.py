"""What a model version records about where it came from: base weights, data, code, environment.

``lineage_record`` is the one place a version's lineage is written, for trained
(``modelyard finetune``, the quickstart) and imported versions alike.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import modelyard
from modelyard.base import is_local, model_dir, weight_hashes
from modelyard.errors import BaseModelNotFound, Conflict, NotFound
from modelyard.store import BaseModel, Store

_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
)


def git_commit(cwd: Path) -> str | None:
    """The commit checked out in ``cwd`` (the user's working directory), if it is a git repo."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Python, platform, package versions, thread count and device of this process."""
    import torch

    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "modelyard": modelyard.__version__,
        "packages": packages,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def refuse_a_near_base_name(store: Store, ref: str, *, field: str) -> None:
    """``BaseModelNotFound`` (naming ``field``) for a name one typo from a registered base
    (``tinyy`` for ``tiny``) that is no hub id in the local cache: the hub would say only
    that it has no such model, and no command lists the registered names. A local path, a
    hub id with an owner (``org/name``) or one already downloaded goes on as before."""
    if is_local(ref) or "/" in ref:
        return
    names = sorted(b.name for b in store.list_base_models())
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.8)
    if not close or ref in names:
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return
    raise BaseModelNotFound(
        f"{field} {ref!r} is not a registered base",
        hint=f"Did you mean {close[0]!r}? Registered bases: {', '.join(names)}; or give a "
        "local model directory or a hub model id.",
        field=field,
        ref=ref,
    )


def ensure_base_model(store: Store, ref: str, *, name: str | None = None) -> BaseModel:
    """The store's record of a base (registered on first use) with its weight hashes.

    The name defaults to the directory name (or the hub id). A different base
    already registered under that name gets a content-derived suffix instead of
    a conflict, so lineage always points at the exact weights.
    """
    directory = model_dir(ref)
    hashes = weight_hashes(directory)
    source = str(directory.resolve()) if is_local(ref) else ref
    wanted = name or (directory.name if is_local(ref) else ref)
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    for candidate in (wanted, f"{wanted}-{digest[:8]}"):
        try:
            known = store.get_base_model(candidate)
        except NotFound:
            try:
                return store.register_base_model(candidate, source, hashes)
            except Conflict:
                continue
        if dict(known.weight_hashes) == hashes:
            return known
    return store.register_base_model(f"{wanted}-{digest[:8]}", source, hashes)


def lineage_record(
    base: BaseModel,
    prompt_template: str,
    *,
    run_id: str | None = None,
    dataset: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    env: Mapping[str, Any] | None = None,
    parent: str | None = None,
    imported_from: str | None = None,
    safety: Mapping[str, Any] | None = None,
    compute: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage of a new version: its base weights and prompt template, and either how
    it was trained (``run_id`` with its dataset, config, seed, environment, parent and the
    git commit of the working directory) or where it was imported from (``imported_from``
    with the safety report). ``compute`` is where and how it trained (device, resolved
    precision, GPU-hours and cost): the card shows it."""
    record: dict[str, Any] = {
        "base_model": {
            "name": base.name,
            "source": base.source,
            "weights": dict(base.weight_hashes),
        },
        "prompt_template": prompt_template,
    }
    if run_id is not None:
        record.update(
            run_id=run_id,
            dataset=dict(dataset or {}),
            config=dict(config or {}),
            seed=seed,
            environment=dict(env if env is not None else environment()),
            git_commit=git_commit(Path.cwd()),
            parent=parent,
        )
        if compute is not None:
            record["compute"] = dict(compute)
    if imported_from is not None:
        record.update(imported_from=imported_from, safety=dict(safety or {}))
    return record
