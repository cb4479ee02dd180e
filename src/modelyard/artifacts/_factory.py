"""The one place that picks the artifact store: a directory, or ``s3://bucket/prefix``."""

from __future__ import annotations

from pathlib import Path

from modelyard.artifacts._base import ArtifactStore
from modelyard.artifacts._local import LocalArtifactStore
from modelyard.errors import ArtifactError
from modelyard.settings import Settings


def open_artifact_store(location: str | Path, *, cache_dir: Path | None = None) -> ArtifactStore:
    """The store at ``location``: ``s3://bucket/prefix`` (read through ``cache_dir``) or a
    directory. Nothing is read or created until the store is used."""
    text = str(location)
    if text.startswith("s3://"):
        if cache_dir is None:
            raise ArtifactError(
                f"the artifact store {text} needs a local cache directory",
                hint="Set MODELYARD_ARTIFACTS_CACHE (default <home>/cache/artifacts).",
            )
        from modelyard.artifacts._s3 import S3ArtifactStore  # botocore, for s3:// alone

        return S3ArtifactStore(text, cache_dir=cache_dir)
    if "://" in text:
        raise ArtifactError(
            f"unsupported artifact store {text!r}",
            hint="Set MODELYARD_ARTIFACTS to a directory or to s3://BUCKET/PREFIX.",
        )
    return LocalArtifactStore(Path(text))


def artifacts_from_settings(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name (``MODELYARD_ARTIFACTS``, ``…_ARTIFACTS_CACHE``)."""
    return open_artifact_store(settings.artifacts_location, cache_dir=settings.artifacts_cache_dir)
