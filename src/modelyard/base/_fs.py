"""Write model directories atomically: a crash never leaves half a model behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelyard.errors import ConfigError


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Fail early (before any training) if ``out_dir`` cannot be written as asked."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory", path=str(out_dir))
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out_dir} already exists and is not empty",
            hint="Choose another directory or allow overwriting (--overwrite).",
            path=str(out_dir),
        )


def make_shareable(directory: Path) -> None:
    """Give a saved directory the usual umask-based permissions.

    ``tempfile.mkdtemp`` and safetensors create owner-only files; a model
    directory is meant to be read by other users (e.g. a serving process).
    """
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def publish_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory next to ``out_dir``; on success it replaces ``out_dir``.

    Call ``check_out_dir`` first: an existing ``out_dir`` is removed here.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        make_shareable(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
