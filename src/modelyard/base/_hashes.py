"""Content hashes of model weight files, for lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelyard.errors import BaseModelNotFound

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of one file, read in chunks so multi-GB shards do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_hashes(model_dir: Path) -> dict[str, str]:
    """``{relative file name: sha256}`` of every ``*.safetensors`` file under ``model_dir``.

    Lineage records these so a model version can later prove which exact base
    (or adapter) weights it was built from.
    """
    if not model_dir.is_dir():
        raise BaseModelNotFound(f"model directory {model_dir} does not exist", path=str(model_dir))
    files = sorted(model_dir.rglob("*.safetensors"))
    if not files:
        raise BaseModelNotFound(
            f"{model_dir} has no *.safetensors weight files",
            hint="Save models with safe_serialization=True (the modelyard default).",
            path=str(model_dir),
        )
    return {path.relative_to(model_dir).as_posix(): sha256_file(path) for path in files}
