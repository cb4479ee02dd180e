"""Content-addressed artifact storage.

An artifact is a directory of files (a LoRA adapter, a dataset file) named by
the sha256 of its manifest, which records the sha256 and size of every file.
Loaders get a path only through ``ArtifactStore.open_verified``, which checks
every byte first.
"""

from modelyard.artifacts._local import ArtifactStore
from modelyard.artifacts._manifest import ArtifactRef, FileEntry

__all__ = ["ArtifactRef", "ArtifactStore", "FileEntry"]
