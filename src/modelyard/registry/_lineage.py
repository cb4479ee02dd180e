"""What a model version records about where it came from: environment, code, base weights."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import modelyard
from modelyard.base import weight_hashes
from modelyard.base._load import _is_local, _local_dir
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


def model_dir(ref: str) -> Path:
    """The local directory of a base: the path itself, or the hub cache snapshot of an id."""
    if _is_local(ref):
        return _local_dir(ref)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise BaseModelNotFound(
            f"cannot find base model {ref!r} locally or on the hub",
            hint="Give a local model directory, or download it first (HF_HUB_OFFLINE=1 "
            "uses only the local cache).",
            ref=ref,
        ) from exc


def ensure_base_model(store: Store, ref: str, *, name: str | None = None) -> BaseModel:
    """The store's record of a base (registered on first use) with its weight hashes.

    The name defaults to the directory name (or the hub id). A different base
    already registered under that name gets a content-derived suffix instead of
    a conflict, so lineage always points at the exact weights.
    """
    directory = model_dir(ref)
    hashes = weight_hashes(directory)
    source = str(directory.resolve()) if _is_local(ref) else ref
    wanted = name or (directory.name if _is_local(ref) else ref)
    try:
        known = store.get_base_model(wanted)
        if dict(known.weight_hashes) == hashes:
            return known
    except NotFound:
        pass
    try:
        return store.register_base_model(wanted, source, hashes)
    except Conflict:
        digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
        return store.register_base_model(f"{wanted}-{digest[:8]}", source, hashes)
